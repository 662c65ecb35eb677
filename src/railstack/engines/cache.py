"""A model's results kept by the exact text it scored."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Generic, Optional, TypeVar

Result = TypeVar("Result")


class ScoreCache(Generic[Result]):
    """A bounded LRU of a model's results, keyed by a digest of the exact text it scored, so a
    threshold change never reuses a stale verdict."""

    def __init__(self, size: int):
        self.size = size
        self._entries: OrderedDict[bytes, Result] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(text: str) -> bytes:
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def get(self, text: str) -> Optional[Result]:
        if not self.size:
            return None
        key = self.key(text)
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            self._entries.move_to_end(key)
            return found

    def put(self, text: str, value: Result) -> None:
        if not self.size:
            return
        key = self.key(text)
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
