"""A config's runtime: its settings, the resources its rails built, and the runner that decides."""

from __future__ import annotations

from typing import Any, Optional

from railstack.core import request
from railstack.core.budget import BudgetClock
from railstack.core.registry import registry
from railstack.core.runner import Runner
from railstack.core.types import CheckContext, Decision, Intent, Rail, Source, Tier, Turn, UnknownRails


class Runtime:
    """What every railstack action of one config runs with (NeMo injects it as ``railstack_runtime``)."""

    def __init__(self, settings: Any, scope: str = "config", intents: tuple[Intent, ...] = ()):
        self.settings = settings
        self.scope = scope  # the config's id: scopes per-client state such as rate-limit buckets
        self.intents = intents  # the config's Colang user intents, which the topic-intent rail refuses
        self.resources: dict[str, Any] = {}
        self.runner = Runner(settings, self._resource)

    def prepare(self, names: list[str]) -> None:
        """Check that the rails exist and build their resources, before the first request."""
        unknown = self.unknown(names)
        if unknown:
            raise UnknownRails(f"this config's flows name unknown railstack rails: {', '.join(unknown)}")
        for name in names:
            if self.settings.enabled(name):
                self._resource(registry.get(name))

    @staticmethod
    def unknown(names: list[str]) -> list[str]:
        return sorted({n for n in names if registry.get(n) is None})

    def _resource(self, rail: Rail) -> Any:
        if rail.resource is not None and rail.name not in self.resources:
            self.resources[rail.name] = rail.resource(self)
        return self.resources.get(rail.name)

    def tier_of(self, name: str) -> Tier:
        found = registry.get(name)
        if found is None:
            raise UnknownRails(f"unknown railstack rail {name}")
        return found.tier

    async def decide(
        self,
        names: list[str],
        *,
        source: Source,
        text: str,
        nemo_context: Optional[dict] = None,
        dialogue: tuple[Turn, ...] = (),
        main_model: Any = None,
        streamed: bool = False,
    ) -> tuple[list[Decision], Optional[Decision]]:
        """Run the (known) rails ``names`` in cost order: every decision, and the blocking one."""
        req = request.current()
        latency = self.settings.latency
        limit = {"input": latency.input_budget_s, "output": latency.output_budget_s}.get(source)
        clock = req.clock if req is not None and req.clock is not None else None
        if clock is None and limit is not None:
            clock = BudgetClock()  # outside a request: this call's own
        ctx = CheckContext(
            source, self.settings, nemo_context or {}, dialogue=dialogue, main_model=main_model,
            deadline=clock.deadline(source, text, limit) if clock is not None else None,
            messages=req.messages if req is not None else None, streamed=streamed,
            # Each tier may run in a flow (a call) of its own: what an earlier call revealed counts.
            revealed=tuple(r for d in req.decisions if d.source == source for r in d.revealed) if req is not None else (),
        )
        rails = [registry.get(n) for n in names]
        if req is None or req.unmetered is None:
            return await self.runner.run(rails, text, ctx)
        unmetered = self.runner.skipped([r for r in rails if r.tier == Tier.ADMISSION], source, req.unmetered)
        decisions, blocker = await self.runner.run([r for r in rails if r.tier != Tier.ADMISSION], text, ctx)
        return unmetered + decisions, blocker

    def skipped(self, names: list[str], source: Source) -> list[Decision]:
        return self.runner.skipped([registry.get(n) for n in names], source)


class Runtimes:
    """The process's one runtime per config (its id and settings), shared by the HTTP layer and
    every NeMo rails instance of that config, so their resources are built once."""

    def __init__(self) -> None:
        self._runtimes: dict[tuple[str, str, tuple[Intent, ...]], Runtime] = {}

    def get(self, settings: Any, scope: str, intents: tuple[Intent, ...] = ()) -> Runtime:
        key = (scope, settings.model_dump_json(), intents)
        if key not in self._runtimes:
            self._runtimes[key] = Runtime(settings, scope, intents)
        return self._runtimes[key]

    def reset(self) -> None:
        """Forget every config's runtime (tests, and config reloads)."""
        self._runtimes.clear()


runtimes = Runtimes()
