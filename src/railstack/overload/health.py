"""The health of what a replica depends on: the main model, Redis, each classifier engine.

A model is judged on its recent calls (``CallWindow``): the main model's as the gate sees them,
an engine's as its stage sees them. Redis is judged by the admission store itself, which knows
when it last reached it. Each dependency says its status and since when, so that
``/railstack/health`` can name what is wrong and ``/railstack/ready`` can take the replica out of
rotation while it is.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Awaitable, Callable, Literal, Optional

from railstack.overload.settings import HealthSettings

Status = Literal["healthy", "degraded", "unhealthy"]


@dataclass(frozen=True)
class DependencyState:
    kind: str  # main_model | redis | engine
    name: str
    status: Status
    since: float  # time.monotonic() when it entered this status
    detail: dict = field(default_factory=dict)

    def body(self) -> dict:
        for_s = max(0.0, time.monotonic() - self.since)
        return {"status": self.status, "since": wall_clock(self.since), "for_s": round(for_s, 3), **self.detail}


def wall_clock(monotonic: float) -> str:
    """A ``time.monotonic()`` instant as UTC ISO 8601, for people and log correlation."""
    at = time.time() - (time.monotonic() - monotonic)
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Since:
    """A status and the moment it began."""

    def __init__(self, status: Status = "healthy"):
        self.status: Status = status
        self.since = time.monotonic()

    def note(self, status: Status, at: float) -> None:
        if status != self.status:
            self.status, self.since = status, at


class CallWindow:
    """The outcomes of a dependency's latest calls, judged as ``HealthSettings`` says.

    ``with window.observe():`` around one call records it: a clean exit succeeds, an exception
    fails. A cancelled call (its client left, a deadline or a sibling's block stopped it) says
    nothing about the dependency and is not recorded.
    """

    def __init__(self, kind: str, name: str, settings: HealthSettings):
        self.kind, self.name, self.settings = kind, name, settings
        self._calls: deque[tuple[float, bool]] = deque(maxlen=settings.window_calls)
        self._lock = threading.Lock()  # engines' calls finish on their own event loops' threads
        self._status = Since()
        self.last_error: Optional[str] = None
        self.last_error_at: Optional[float] = None

    def observe(self) -> "_Observed":
        return _Observed(self)

    def record(self, error: Optional[BaseException]) -> None:
        now = time.monotonic()
        with self._lock:
            self._settle(now)
            self._calls.append((now, error is None))
            if error is not None:
                self.last_error, self.last_error_at = f"{type(error).__name__}: {error}"[:300], now
            self._settle(now)

    def _settle(self, now: float) -> None:
        # Calls that aged out changed the status when they did, not when someone looked.
        changed_at = now
        while self._calls and self._calls[0][0] <= now - self.settings.window_s:
            changed_at = self._calls.popleft()[0] + self.settings.window_s
        failures = sum(not ok for _, ok in self._calls)
        status: Status = "healthy"
        if failures == len(self._calls) >= self.settings.unhealthy_after:
            status = "unhealthy"
        elif failures:
            status = "degraded"
        self._status.note(status, changed_at)

    def state(self) -> DependencyState:
        with self._lock:
            self._settle(time.monotonic())
            calls = len(self._calls)
            failures = sum(not ok for _, ok in self._calls)
            status, since = self._status.status, self._status.since
        detail: dict = {"calls": calls, "failures": failures, "window_s": self.settings.window_s}
        if self.last_error_at is not None:
            detail |= {"last_error": self.last_error, "last_error_at": wall_clock(self.last_error_at)}
        return DependencyState(self.kind, self.name, status, since, detail)


class _Observed:
    def __init__(self, window: CallWindow):
        self.window = window

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Optional[type], error: Optional[BaseException], tb: object) -> bool:
        if kind is None:
            self.window.record(None)
        elif issubclass(kind, Exception):
            self.window.record(error)
        return False


class Dependencies:
    """The process's dependencies by kind and name: call windows, and probes that answer for
    themselves (Redis)."""

    def __init__(self) -> None:
        self._windows: dict[tuple[str, str], CallWindow] = {}
        self._probes: dict[tuple[str, str], Callable[[], Awaitable[DependencyState]]] = {}

    def calls(self, kind: str, name: str, settings: HealthSettings) -> CallWindow:
        """The call window of ``kind``/``name``, made on first use; other settings make a fresh one,
        as ``Stages.get`` does for limits."""
        current = self._windows.get((kind, name))
        if current is None or current.settings != settings:
            current = self._windows[(kind, name)] = CallWindow(kind, name, settings)
        return current

    def watch(self, kind: str, name: str, probe: Callable[[], Awaitable[DependencyState]]) -> str:
        """Report ``probe()``'s state too; the name it is reported under (two stores of one Redis
        with other policies are two entries)."""
        unique, n = name, 1
        while (kind, unique) in self._probes:
            n += 1
            unique = f"{name}#{n}"
        self._probes[(kind, unique)] = probe
        return unique

    async def states(self) -> list[DependencyState]:
        found = [w.state() for w in self._windows.values()]
        return found + [replace(await probe(), name=name) for (_, name), probe in self._probes.items()]

    def reset(self) -> None:
        """Forget every dependency (tests start from none)."""
        self._windows.clear()
        self._probes.clear()


dependencies = Dependencies()
