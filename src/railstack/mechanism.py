"""The rail mechanism every railstack rail runs under.

A rail is a named async check with a cost tier. ``Runtime.run`` takes the rails a flow
names, groups them by tier, runs the tiers cheapest first and stops at the first block, so
a blocked turn never pays for a later tier or the main model. Inside a tier the rails run
concurrently (cancel on the first block) or one by one, as the settings say. Every rail runs
under its timeout and failure policy and leaves a ``Decision``; the flow gets a
``RailOutcome`` carrying them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import hashlib
import importlib
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable, Iterator, Optional

from nemoguardrails.actions.rail_outcome import RailOutcome, TransformTarget

from railstack import metrics
from railstack.backpressure import Shed, Stage, stage_for
from railstack.settings import RailstackSettings

log = logging.getLogger("railstack.decisions")


class Tier(enum.IntEnum):
    """Cost order: a cheaper tier always runs, and can block, before a dearer one."""

    ADMISSION = 0
    CHEAP = 1
    SMALL_CLASSIFIER = 2
    LARGE_CLASSIFIER = 3


@dataclass(frozen=True)
class Verdict:
    """What a check decides. ``reason`` names the rule that fired, never the user's text."""

    blocked: bool
    reason: Optional[str] = None
    score: Optional[float] = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def allow(cls, *, score: Optional[float] = None, **metadata: Any) -> "Verdict":
        return cls(False, None, score, metadata)

    @classmethod
    def block(cls, reason: str, *, score: Optional[float] = None, **metadata: Any) -> "Verdict":
        return cls(True, reason, score, metadata)


@dataclass(frozen=True)
class CheckContext:
    source: str  # "input" (the user's side of the conversation) or "output" (the bot's answer)
    settings: RailstackSettings
    nemo_context: dict[str, Any]
    runtime: "Runtime"
    resource: Any = None  # what the rail's ``resource`` builder made for this config
    # The user and assistant turns as (role, text), oldest first, before the answer being checked
    # on the output; for rails that judge a conversation rather than one text. Empty when unknown.
    dialogue: tuple[tuple[str, str], ...] = ()
    main_model: Any = None  # the config's main LLM, for rails that sample it (self-consistency)
    deadline: Optional[tuple[float, float]] = None  # (perf_counter time, budget in s) of the latency budget


Check = Callable[[str, CheckContext], Awaitable[Verdict]]
Builder = Callable[["Runtime"], Any]


@dataclass(frozen=True)
class Rail:
    name: str
    tier: Tier
    check: Check
    resource: Optional[Builder] = None


@dataclass(frozen=True)
class Decision:
    rail: str
    tier: str
    source: str
    verdict: str  # allow | block | skipped | cancelled
    reason: Optional[str]
    score: Optional[float]
    latency_ms: float
    failed: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "metadata": dict(self.metadata)}


_registry: dict[str, Rail] = {}


def rail(name: str, tier: Tier, resource: Optional[Builder] = None) -> Callable[[Check], Check]:
    """Register an async check as the rail ``name``.

    ``resource(runtime)`` builds what the check needs per config (compiled patterns, a
    model); it runs when the config loads, and the check finds the result in ``ctx.resource``.
    Registration is by name, so the copy NeMo file-loads from a working directory's
    ``actions/`` replaces the packaged one with identical code and no state is duplicated.
    """

    def register(check: Check) -> Check:
        _registry[name] = Rail(name, tier, check, resource)
        return check

    return register


def get_rail(name: str) -> Optional[Rail]:
    if name not in _registry:
        # Rails ship as ``railstack.actions.<name>``; importing one registers it. Only its
        # absence means "no such rail": a rail module that fails to import says why.
        module = f"railstack.actions.{name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    return _registry.get(name)


_collector: contextvars.ContextVar[Optional[list[Decision]]] = contextvars.ContextVar(
    "railstack_decisions", default=None
)
# Set by the HTTP layer so that a request's decision log lines can be found together.
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("railstack_request_id", default="-")


@contextlib.contextmanager
def collect_decisions() -> Iterator[list[Decision]]:
    """Keep every decision made inside the block (and the tasks it starts) for one request."""
    decisions: list[Decision] = []
    token = _collector.set(decisions)
    try:
        yield decisions
    finally:
        _collector.reset(token)


def _outcome(decisions: list[Decision], blocker: Optional[Decision]) -> RailOutcome:
    metadata: dict[str, Any] = {"decisions": [d.as_dict() for d in decisions]}
    if blocker is None:
        # A rail that rewrote the chunks (a retrieval rail dropped some) or the answer (a warning
        # appended) hands the new text back for the flow to use.
        rewrites = []
        for target in (TransformTarget.RELEVANT_CHUNKS, TransformTarget.BOT_MESSAGE):
            text = next((d.metadata[target.value] for d in decisions if target.value in d.metadata), None)
            if text is not None:
                rewrites.append((target, text))
        if rewrites:
            return RailOutcome.transform(rewrites, metadata=metadata)
        return RailOutcome.allow(metadata=metadata)
    metadata["rail"] = blocker.rail
    reason = f"Blocked by the {blocker.rail} rail: {blocker.reason}"
    if blocker.failed:
        return RailOutcome.failure(reason=reason, metadata=metadata)
    return RailOutcome.block(reason=reason, metadata=metadata)


def current_decisions() -> list[Decision]:
    """The decisions made so far for the request being served (empty outside ``collect_decisions``)."""
    return list(_collector.get() or [])


def _keep(decision: Decision) -> None:
    log.info(
        "request=%s rail=%s source=%s verdict=%s score=%s latency_ms=%.2f failed=%s reason=%s",
        request_id.get(),
        decision.rail,
        decision.source,
        decision.verdict,
        "-" if decision.score is None else f"{decision.score:.4f}",
        decision.latency_ms,
        decision.failed,
        decision.reason or "-",
    )
    metrics.RAIL_DECISIONS.labels(decision.rail, decision.source, decision.verdict, str(decision.failed).lower()).inc()
    if decision.verdict in ("allow", "block"):
        metrics.RAIL_LATENCY.labels(decision.rail, decision.source).observe(decision.latency_ms / 1000)
    kept = _collector.get()
    if kept is not None:
        kept.append(decision)


@dataclass
class Budget:
    """When one request's input rails began, and the output rails of each of its answers (each
    streamed chunk is an answer of its own), for the latency budgets."""

    input_started: Optional[float] = None
    output_started: dict[bytes, float] = field(default_factory=dict)


request_budget: contextvars.ContextVar[Optional[Budget]] = contextvars.ContextVar("railstack_budget", default=None)


@contextlib.contextmanager
def one_request() -> Iterator[None]:
    """Count the latency budgets from here, unless an outer layer already does for this request."""
    if request_budget.get() is not None:
        yield
        return
    token = request_budget.set(Budget())
    try:
        yield
    finally:
        request_budget.reset(token)


class UnknownRails(ValueError):
    """A config's flows name rails that no module has registered."""


class Runtime:
    """The per-config runtime NeMo injects into railstack actions as ``railstack_runtime``."""

    def __init__(self, settings: RailstackSettings, scope: str = "config"):
        self.settings = settings
        self.scope = scope
        self.resources: dict[str, Any] = {}

    def prepare(self, names: list[str]) -> None:
        """Check that the rails exist and build their resources, before the first request."""
        unknown = sorted({n for n in names if get_rail(n) is None})
        if unknown:
            raise UnknownRails(f"this config's flows name unknown railstack rails: {', '.join(unknown)}")
        for name in names:
            if self.settings.enabled(name):
                self._resource(get_rail(name))

    def model(self, section: str, build: Callable[[Any, Optional[Stage]], Any]) -> Any:
        """The engine of the model the settings ``section`` names (``build(settings, stage)``, shared
        by every config that names the same checkpoint), behind its own bounded stage."""
        settings = getattr(self.settings, section)
        return build(settings, self.engine_stage(f"{section}:{settings.model}"))

    def engine_stage(self, engine: str) -> Optional[Stage]:
        """The bounded stage in front of a classifier engine (None when backpressure is off):
        a slow engine backs up its own queue, not the whole process."""
        bp = self.settings.backpressure
        return stage_for(f"engine/{engine}", bp.engines, bp) if bp.enabled else None

    def _resource(self, r: Rail) -> Any:
        if r.resource is not None and r.name not in self.resources:
            self.resources[r.name] = r.resource(self)
        return self.resources.get(r.name)

    async def run(self, names: list[str], **request: Any) -> RailOutcome:
        """The outcome of the rails ``names`` for a flow; ``request`` is as for ``decide``."""
        unknown = [n for n in names if get_rail(n) is None]
        if unknown:  # a rail named by a flow that prepare() never saw
            return RailOutcome.failure(
                reason=f"Blocked: unknown railstack rail(s) {', '.join(unknown)} in this config.",
                metadata={"rail": unknown[0], "decisions": []},
            )
        return _outcome(*await self.decide(names, **request))

    async def decide(
        self,
        names: list[str],
        *,
        source: str,
        text: str,
        nemo_context: Optional[dict] = None,
        dialogue: tuple[tuple[str, str], ...] = (),
        main_model: Any = None,
    ) -> tuple[list[Decision], Optional[Decision]]:
        """Run the (known) rails ``names`` in cost order: every decision, and the blocking one."""
        ctx = CheckContext(
            source, self.settings, nemo_context or {}, self, dialogue=dialogue, main_model=main_model,
            deadline=self._deadline(source, text),
        )
        decisions: list[Decision] = []
        rails = [get_rail(n) for n in names if self.settings.enabled(n)]
        tiers = sorted({r.tier for r in rails})
        blocker: Optional[Decision] = None
        for tier in tiers:
            members = [r for r in rails if r.tier == tier]
            if blocker is not None:
                decisions += [self._not_run(r, source, "skipped") for r in members]
                continue
            blocker = await self._run_tier(members, text, ctx, decisions)
        for decision in decisions:
            _keep(decision)
        return decisions, blocker

    def _deadline(self, source: str, text: str) -> Optional[tuple[float, float]]:
        latency = self.settings.latency
        limit = {"input": latency.input_budget_s, "output": latency.output_budget_s}.get(source)
        if limit is None:
            return None
        budget = request_budget.get() or Budget()  # outside a request: this call's own
        now = time.perf_counter()
        if source == "input":
            budget.input_started = budget.input_started or now
            return budget.input_started + limit, limit
        # Every output flow of one answer checks the same text: they share its clock.
        key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        return budget.output_started.setdefault(key, now) + limit, limit

    def skipped(self, names: list[str], source: str) -> list[Decision]:
        """The decisions of rails ``names`` that a cheaper tier's block left unrun."""
        decisions = [self._not_run(get_rail(n), source, "skipped") for n in names if self.settings.enabled(n)]
        for decision in decisions:
            _keep(decision)
        return decisions

    def tier_of(self, name: str) -> Tier:
        found = get_rail(name)
        if found is None:
            raise UnknownRails(f"unknown railstack rail {name}")
        return found.tier

    def replay(self, names: list[str], decisions: list[Decision]) -> Optional[RailOutcome]:
        """The outcome the rails ``names`` already reached in ``decisions`` (made for this request
        before NeMo ran, by the HTTP layer), or None when some of them did not decide there."""
        mine = [d for d in decisions if d.rail in names]
        if {d.rail for d in mine} != {n for n in names if self.settings.enabled(n)}:
            return None
        return _outcome(mine, next((d for d in mine if d.verdict == "block"), None))

    async def _run_tier(
        self, members: list[Rail], text: str, ctx: CheckContext, decisions: list[Decision]
    ) -> Optional[Decision]:
        if not self.settings.concurrent_tiers or len(members) == 1:
            for i, r in enumerate(members):
                decision = await self._run_one(r, text, ctx)
                decisions.append(decision)
                if decision.verdict == "block":
                    decisions += [self._not_run(rest, ctx.source, "skipped") for rest in members[i + 1 :]]
                    return decision
            return None

        tasks = {asyncio.ensure_future(self._run_one(r, text, ctx)): r for r in members}
        blocker: Optional[Decision] = None
        try:
            for next_done in asyncio.as_completed(tasks):
                decision = await next_done
                if decision.verdict == "block":
                    blocker = decision
                    break
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        # Checks that finished in the same loop turn as the blocker keep their own verdict.
        for task, r in tasks.items():
            decisions.append(self._not_run(r, ctx.source, "cancelled") if task.cancelled() else task.result())
        return blocker

    async def _run_one(self, r: Rail, text: str, ctx: CheckContext) -> Decision:
        timeout, on_failure = self.settings.policy(r.name)
        metadata: dict[str, Any] = {}
        start = time.perf_counter()
        cut_by_budget = False
        if ctx.deadline is not None:
            left = ctx.deadline[0] - start
            if left <= 0:
                return self._failed(r, ctx, f"was not run: the {ctx.source} latency budget ({ctx.deadline[1]:g} s) "
                                    "was spent", on_failure, start, {"budget_s": ctx.deadline[1]})
            cut_by_budget, timeout = left < timeout, min(left, timeout)
        try:
            ctx = replace(ctx, resource=self._resource(r))
            async with asyncio.timeout(timeout):  # unlike wait_for, no task per check
                verdict = await r.check(text, ctx)
            if time.perf_counter() - start > timeout:
                # Work that never yields to the loop cannot be interrupted; it still must not
                # count as a verdict given in time.
                raise asyncio.TimeoutError
            if not isinstance(verdict, Verdict):
                raise TypeError(f"rail {r.name} returned {type(verdict).__name__}, not a Verdict")
        except asyncio.TimeoutError:
            if cut_by_budget:
                failure = f"did not finish within the {ctx.source} latency budget ({ctx.deadline[1]:g} s)"
                metadata = {"budget_s": ctx.deadline[1]}
            else:
                failure = f"did not finish within {timeout:g} s"
        except Shed as exc:
            # Its engine's queue is full: over HTTP this becomes a 503 with Retry-After.
            failure = f"was shed ({exc})"
            metadata = {"shed": exc.stage, "shed_reason": exc.reason, "retry_after_s": exc.retry_after_s}
        except Exception as exc:  # noqa: BLE001 - any failure of a check is a policy decision
            log.debug("rail %s raised", r.name, exc_info=True)
            failure = f"raised {type(exc).__name__}"
        else:
            return Decision(
                rail=r.name,
                tier=r.tier.name.lower(),
                source=ctx.source,
                verdict="block" if verdict.blocked else "allow",
                reason=verdict.reason,
                score=verdict.score,
                latency_ms=(time.perf_counter() - start) * 1000,
                metadata=verdict.metadata,
            )
        return self._failed(r, ctx, failure, on_failure, start, metadata)

    @staticmethod
    def _failed(r: Rail, ctx: CheckContext, failure: str, on_failure: str, start: float, metadata: dict) -> Decision:
        return Decision(
            rail=r.name,
            tier=r.tier.name.lower(),
            source=ctx.source,
            verdict="block" if on_failure == "closed" else "allow",
            reason=f"the check {failure} (fail-{on_failure})",
            score=None,
            latency_ms=(time.perf_counter() - start) * 1000,
            failed=True,
            metadata=metadata,
        )

    @staticmethod
    def _not_run(r: Rail, source: str, verdict: str) -> Decision:
        return Decision(r.name, r.tier.name.lower(), source, verdict, None, None, 0.0)


_runtimes: dict[tuple[str, str], Runtime] = {}


def runtime_for(settings: RailstackSettings, scope: str) -> Runtime:
    """The process's one runtime for a config (``scope``: its id), shared by the HTTP layer and
    every NeMo rails instance of that config, so their resources are built once."""
    key = (scope, settings.model_dump_json())
    if key not in _runtimes:
        _runtimes[key] = Runtime(settings, scope)
    return _runtimes[key]


def reset_runtimes() -> None:
    """Forget every config's runtime (tests, and config reloads)."""
    _runtimes.clear()
