"""What is kept of a conversation after its request (NeMo's events cache, the hallucination
rail's samples), bounded by size and age (``memory`` settings)."""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from time import monotonic
from typing import Any, Iterator, Mapping, MutableMapping, Optional


class ConversationCache(MutableMapping[str, Any]):
    """What NeMo's ``events_history_cache`` holds (a conversation's messages as a key, its events
    as the value), or other per-conversation values: at most ``size`` entries, none older than
    ``ttl_s``.

    Age counts from an entry's write: each turn of a conversation writes a new key (the whole
    conversation so far), so a conversation in use stays young and the oldest written is the one
    least likely to be continued. Expired entries go at every read and write and, when no request
    comes, from a timer on the event loop that wrote them."""

    def __init__(self, size: int, ttl_s: float, kept: Optional[Mapping[str, Any]] = None):
        self.size = size
        self.ttl_s = ttl_s
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._sweep: Optional[tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle]] = None
        for key, value in (kept or {}).items():
            self[key] = value

    def __setitem__(self, key: str, value: Any) -> None:
        now = monotonic()
        with self._lock:
            self._entries.pop(key, None)
            if self.size:
                self._entries[key] = (now, value)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
            self._expire(now)
        self._sweep_later()

    def __getitem__(self, key: str) -> Any:
        with self._lock:
            self._expire(monotonic())
            return self._entries[key][1]

    def __contains__(self, key: object) -> bool:
        with self._lock:
            self._expire(monotonic())
            return key in self._entries

    def __delitem__(self, key: str) -> None:
        with self._lock:
            del self._entries[key]

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            self._expire(monotonic())
            return iter(list(self._entries))

    def __len__(self) -> int:
        with self._lock:
            self._expire(monotonic())
            return len(self._entries)

    def _expire(self, now: float) -> None:
        while self._entries:
            key, (written, _) = next(iter(self._entries.items()))
            if now - written < self.ttl_s:
                return
            del self._entries[key]

    def _sweep_later(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # written outside a loop: the next read or write expires it
            return
        # A timer of a loop that has since ended (a Python caller's asyncio.run) never fires.
        if self._sweep is not None and self._sweep[0] is loop:
            return
        with self._lock:
            oldest = next(iter(self._entries.values()), None)
        if oldest is not None:
            due = max(0.0, oldest[0] + self.ttl_s - monotonic()) + 0.01
            self._sweep = (loop, loop.call_later(due, self._swept))

    def _swept(self) -> None:
        self._sweep = None
        with self._lock:
            self._expire(monotonic())
        self._sweep_later()
