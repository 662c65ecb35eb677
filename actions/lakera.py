"""Small-classifier tier: Lakera Guard, the hosted screening API, on the conversation and on the answer."""

from railstack.core import Tier, rail
from railstack.lakera import check

rail("lakera", Tier.SMALL_CLASSIFIER, resource=check.client)(check.check)
