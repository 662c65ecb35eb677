"""The rail core: rail types, the registry, the cost-ordered runner, failure policy, latency
budgets, decision records and the request context. It imports neither NeMo nor torch.

A rail module needs only ``from railstack.core import CheckContext, Tier, Verdict, rail``."""

from railstack.core.registry import rail, registry
from railstack.core.request import collect_decisions
from railstack.core.runtime import Runtime, runtimes
from railstack.core.types import CheckContext, Decision, Misconfigured, ModelRail, Revealed, Tier, UnknownRails, Verdict

__all__ = [
    "CheckContext", "Decision", "Misconfigured", "ModelRail", "Revealed", "Runtime", "Tier", "UnknownRails", "Verdict", "collect_decisions",
    "rail", "registry", "runtimes",
]
