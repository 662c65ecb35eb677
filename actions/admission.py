"""Admission tier: per-client token buckets (requests and tokens per minute)."""

from railstack.admission import check
from railstack.core import Tier, rail

rail("admission", Tier.ADMISSION, resource=check.admission)(check.check)
