"""Bounded stages: a concurrency limit with a bounded, time-limited wait queue.

A stage sits in front of something with a fixed capacity: the main model (one per config) or
a classifier engine (one per loaded model). A request that finds the queue full, or waits in
it past ``max_wait_s``, is shed at once with ``Shed``; nothing piles up until everything times
out. A waiter whose task is cancelled (its client went away) leaves the queue and never takes
a slot. Stages live for the process (``stages``), so the HTTP layer, the NeMo actions and the health
and metrics endpoints all see the same counts.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import dataclass
from typing import AsyncIterator, Literal, Optional

import aiologic

from railstack.core import metrics
from railstack.core.types import Shed
from railstack.overload.health import CallWindow
from railstack.overload.settings import BackpressureSettings, StageSettings

Health = Literal["healthy", "degraded", "overloaded"]
_ORDER: dict[str, int] = {"healthy": 0, "degraded": 1, "overloaded": 2}


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
    def __init__(
        self, name: str, settings: StageSettings, thresholds: BackpressureSettings, calls: Optional[CallWindow] = None
    ):
        self.name = name
        self.settings = settings
        self.thresholds = thresholds
        self.calls = calls  # where the calls made in ``slot()`` are judged (an engine's health)
        self._slots = aiologic.Semaphore(settings.max_concurrency)
        self._lock = threading.Lock()
        self.in_flight = 0
        self.queued = 0
        self.admitted = 0
        self.shed = 0
        self.hold_s: Optional[float] = None  # moving average of how long a slot is held
        self.hold_dev_s = 0.0  # moving average of how far a hold is from hold_s
        self._taken: list[float] = []  # when each slot in use was taken
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
                expected = self._expected_wait()
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
        taken_at = time.monotonic()
        with self._lock:
            self.in_flight += 1
            self.admitted += 1
            self._taken.append(taken_at)
        self._publish()
        return taken_at

    def _expected_wait(self) -> Optional[float]:
        """How long a request joining the queue now would wait for a slot, on the long side: a
        wait the estimate lets in that then runs out is a slow shed instead of a fast one.

        The queue is served first come, first served, so the newcomer gets the slot of the
        (queued + 1)-th release. Each slot in use is expected back ``hold`` after it was taken,
        ``hold`` being the mean hold time plus twice its mean deviation (a hold rarely runs
        longer), and each slot then taken is held ``hold`` again. (Spreading the releases evenly,
        mean hold / slots apart, lets in about half the requests whose estimate is near the
        maximum wait, and those time out.) None until a slot has been held once."""
        if self.hold_s is None:
            return None
        hold = self.hold_s + 2 * self.hold_dev_s
        now = time.monotonic()
        slots = self.settings.max_concurrency
        back = sorted(max(0.0, taken + hold - now) for taken in self._taken)
        back = [0.0] * (slots - len(back)) + back  # a slot released but not yet taken again
        rounds, nth = divmod(self.queued, slots)
        return back[nth] + rounds * hold

    def release(self, taken_at: Optional[float] = None) -> None:
        with self._lock:
            self.in_flight -= 1
            if taken_at is None:  # a release that does not say which slot: the longest held
                taken_at = min(self._taken)
            else:
                held = time.monotonic() - taken_at
                if self.hold_s is None:
                    self.hold_s = held
                else:
                    self.hold_dev_s = 0.75 * self.hold_dev_s + 0.25 * abs(held - self.hold_s)
                    self.hold_s = 0.9 * self.hold_s + 0.1 * held
            self._taken.remove(taken_at)
        self._publish()
        self._slots.release()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        taken_at = await self.acquire()
        try:
            with self.calls.observe() if self.calls is not None else contextlib.nullcontext():
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


class Stages:
    """The process's bounded stages by name, as health and metrics report them."""

    def __init__(self) -> None:
        self._stages: dict[str, Stage] = {}

    def get(
        self, name: str, settings: StageSettings, thresholds: BackpressureSettings, calls: Optional[CallWindow] = None
    ) -> Stage:
        """The stage called ``name``, made on first use. A later config that names the same stage
        with other limits gets a fresh one: limits are not merged silently. (An engine's stage is
        shared by every config that shares the engine: ``railstack.engines.pool`` refuses a
        conflict instead.)"""
        current = self._stages.get(name)
        if current is None or current.settings != settings or current.thresholds != thresholds or current.calls is not calls:
            current = self._stages[name] = Stage(name, settings, thresholds, calls)
        return current

    def health(self) -> tuple[Health, dict[str, dict]]:
        """The worst status over every stage of the process, and each stage's numbers."""
        states = [s.state() for s in self._stages.values()]
        worst: Health = max((s.status for s in states), key=_ORDER.__getitem__, default="healthy")
        return worst, {s.name: {k: v for k, v in s.__dict__.items() if k != "name"} for s in states}

    def reset(self) -> None:
        """Forget every stage (tests start from empty queues)."""
        self._stages.clear()


stages = Stages()


def overloaded_message(exc: Shed) -> str:
    return f"Service overloaded ({exc.stage}): {exc.reason}. Retry after {max(1, math.ceil(exc.retry_after_s))} s."
