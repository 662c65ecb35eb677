"""Bounded stages: a concurrency limit with a bounded, time-limited wait queue.

A stage sits in front of something with a fixed capacity: the main model (one per config) or
a classifier engine (one per loaded model). A request that finds the queue full, or waits in
it past ``max_wait_s``, is shed at once with ``Shed``; nothing piles up until everything times
out. A waiter whose task is cancelled (its client went away) leaves the queue and never takes
a slot. Stages live for the process, so the HTTP layer, the NeMo actions and the health and
metrics endpoints all see the same counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, AsyncIterator, Literal, Optional

import aiologic

from railstack import metrics
from railstack.settings import BackpressureSettings, StageSettings

Health = Literal["healthy", "degraded", "overloaded"]
_ORDER: dict[str, int] = {"healthy": 0, "degraded": 1, "overloaded": 2}


class Shed(Exception):
    """The stage cannot take this request now; ask the client to come back after ``retry_after_s``."""

    def __init__(self, stage: str, reason: str, retry_after_s: float):
        super().__init__(f"{stage} is overloaded: {reason}")
        self.stage = stage
        self.reason = reason
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class StageState:
    name: str
    in_flight: int
    queued: int
    max_concurrency: int
    max_queue: int
    admitted: int
    shed: int
    utilization: float  # share of the slots in use
    queue_fill: float  # share of the wait queue in use
    status: Health


class Stage:
    def __init__(self, name: str, settings: StageSettings, thresholds: BackpressureSettings):
        self.name = name
        self.settings = settings
        self.thresholds = thresholds
        self._slots = aiologic.Semaphore(settings.max_concurrency)
        self._lock = threading.Lock()
        self.in_flight = 0
        self.queued = 0
        self.admitted = 0
        self.shed = 0
        self.hold_s: Optional[float] = None  # moving average of how long a slot is held
        metrics.STAGE_CAPACITY.labels(name).set(settings.max_concurrency)
        self._publish()

    def _publish(self) -> None:
        metrics.STAGE_IN_FLIGHT.labels(self.name).set(self.in_flight)
        metrics.STAGE_QUEUED.labels(self.name).set(self.queued)

    def _shed(self, kind: str, detail: str) -> Shed:
        with self._lock:
            self.shed += 1
        metrics.SHED.labels(self.name, kind).inc()
        return Shed(self.name, f"{kind}: {detail}", self.thresholds.retry_after_s)

    async def acquire(self) -> float:
        """Take a slot, waiting in the queue for at most ``max_wait_s``; raise ``Shed`` otherwise.
        Returns when the slot was taken, for ``release``."""
        # aiologic's semaphore is fair (a newcomer never takes a slot ahead of a waiter) and
        # works from any event loop or thread: sync ``generate()`` calls each run their own loop.
        if not await self._slots.async_acquire(blocking=False):
            with self._lock:
                full = self.queued >= self.settings.max_queue
                # A slot frees about every hold_s / max_concurrency seconds while all are busy.
                expected = None if self.hold_s is None else (self.queued + 1) * self.hold_s / self.settings.max_concurrency
                late = expected is not None and expected > self.settings.max_wait_s
                if not (full or late):
                    self.queued += 1
            if full:
                raise self._shed("queue_full", f"{self.settings.max_queue} requests already waiting")
            if late:
                # Shed now rather than after a wait that would most likely end in a shed anyway.
                raise self._shed("wait_estimate", f"a slot would take about {expected:.2f} s, over {self.settings.max_wait_s:g} s")
            self._publish()
            try:
                got = await self._slots.async_acquire(timeout=self.settings.max_wait_s)
            finally:
                with self._lock:
                    self.queued -= 1
                self._publish()
            if not got:
                raise self._shed("wait_timeout", f"no slot within {self.settings.max_wait_s:g} s")
        with self._lock:
            self.in_flight += 1
            self.admitted += 1
        self._publish()
        return time.monotonic()

    def release(self, taken_at: Optional[float] = None) -> None:
        with self._lock:
            self.in_flight -= 1
            if taken_at is not None:
                held = time.monotonic() - taken_at
                self.hold_s = held if self.hold_s is None else 0.9 * self.hold_s + 0.1 * held
        self._publish()
        self._slots.release()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        taken_at = await self.acquire()
        try:
            yield
        finally:
            self.release(taken_at)

    def state(self) -> StageState:
        s = self.settings
        utilization = self.in_flight / s.max_concurrency
        # Without a queue, every request that finds the slots full is shed.
        queue_fill = self.queued / s.max_queue if s.max_queue else float(utilization >= 1)
        status: Health = "healthy"
        if queue_fill >= self.thresholds.overloaded_at:
            status = "overloaded"
        elif utilization >= self.thresholds.degraded_at:
            status = "degraded"
        return StageState(
            self.name, self.in_flight, self.queued, s.max_concurrency, s.max_queue,
            self.admitted, self.shed, round(utilization, 4), round(queue_fill, 4), status,
        )


_stages: dict[str, Stage] = {}


def stage_for(name: str, settings: StageSettings, thresholds: BackpressureSettings) -> Stage:
    """The process's stage called ``name``, made on first use. A later config that names the
    same stage with other limits gets a fresh one: limits are not merged silently."""
    current = _stages.get(name)
    if current is None or current.settings != settings or current.thresholds != thresholds:
        current = _stages[name] = Stage(name, settings, thresholds)
    return current


def main_stage_name(scope: str) -> str:
    return f"{scope}/main"


def health() -> tuple[Health, dict[str, dict]]:
    """The worst status over every stage of the process, and each stage's numbers."""
    states = [s.state() for s in _stages.values()]
    worst: Health = max((s.status for s in states), key=_ORDER.__getitem__, default="healthy")
    return worst, {s.name: {k: v for k, v in s.__dict__.items() if k != "name"} for s in states}


def reset() -> None:
    """Forget every stage (tests start from empty queues)."""
    _stages.clear()


# Set while the current request holds a slot of its config's main stage, taken by the HTTP
# layer at the door; the main-model wrapper then does not queue the same request twice.
held_main: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("railstack_held_main", default=None)


class MainCalls:
    """The tasks running one request's main-model calls, so that a speculative start can stop
    them: NeMo streams from a task of its own, which cancelling the request does not reach."""

    def __init__(self) -> None:
        self._tasks: "weakref.WeakSet[asyncio.Task]" = weakref.WeakSet()

    def add(self, task: Optional["asyncio.Task"]) -> None:
        if task is not None:
            self._tasks.add(task)

    def cancel(self) -> int:
        """Cancel the calls still running; how many there were."""
        running = [t for t in self._tasks if not t.done()]
        for task in running:
            task.cancel()
        return len(running)


main_calls: contextvars.ContextVar[Optional[MainCalls]] = contextvars.ContextVar("railstack_main_calls", default=None)


def overloaded_message(exc: Shed) -> str:
    return f"Service overloaded ({exc.stage}): {exc.reason}. Retry after {max(1, math.ceil(exc.retry_after_s))} s."


class GatedModel:
    """A config's main model behind its main stage, for calls that do not come through
    railstack's HTTP layer (``generate_async``, ``stream_async``, ``RunnableRails``): a shed call
    answers with a refusal that says why, instead of queueing without bound. It also times
    every main-model call for the metrics. Anything else is the wrapped model's."""

    def __init__(self, inner: Any, stage: Optional[Stage], config: str):
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_stage", stage)
        object.__setattr__(self, "_config", config)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # RunnableRails switches the model's ``streaming`` flag: it must reach the real model.
        setattr(self._inner, name, value)

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[Optional[str]]:
        tracked = main_calls.get()
        if tracked is not None:
            tracked.add(asyncio.current_task())
        stage = self._stage
        if stage is None or held_main.get() == stage.name:  # the HTTP layer holds its slot
            yield None
            return
        try:
            taken_at = await stage.acquire()
        except Shed as exc:
            yield overloaded_message(exc)
            return
        try:
            yield None
        finally:
            stage.release(taken_at)

    async def generate_async(self, prompt: Any, *, stop: Optional[list] = None, **kwargs: Any) -> Any:
        from nemoguardrails.types import LLMResponse

        async with self._turn() as refusal:
            if refusal is not None:
                return LLMResponse(content=refusal, finish_reason="stop")
            with metrics.MAIN_MODEL_LATENCY.labels(self._config).time():
                return await self._inner.generate_async(prompt, stop=stop, **kwargs)

    async def stream_async(self, prompt: Any, *, stop: Optional[list] = None, **kwargs: Any) -> AsyncIterator[Any]:
        from nemoguardrails.types import LLMResponseChunk

        async with self._turn() as refusal:
            if refusal is not None:
                yield LLMResponseChunk(delta_content=refusal, finish_reason="stop")
                return
            with metrics.MAIN_MODEL_LATENCY.labels(self._config).time():
                async for chunk in self._inner.stream_async(prompt, stop=stop, **kwargs):
                    yield chunk
