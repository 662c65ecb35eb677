"""Embedding tier: a message close to a refused Colang user intent's examples is refused with that
intent's bot message (``define user`` / ``define flow``), before any main-model call."""

from railstack.core import Tier, rail
from railstack.intents import check

rail("intents", Tier.EMBEDDING, resource=check.Index)(check.check)
