"""Clients of remote services, one per event loop: an HTTP connection pool belongs to the loop
that opened it (sync ``generate()`` calls run loops of their own)."""

from __future__ import annotations

import asyncio
import weakref
from typing import Callable, Generic, TypeVar

Client = TypeVar("Client")


class PerLoop(Generic[Client]):
    """``make()``'s client for the running event loop, made on that loop's first call."""

    def __init__(self, make: Callable[[], Client]):
        self._make = make
        self._clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Client]" = weakref.WeakKeyDictionary()

    def get(self) -> Client:
        loop = asyncio.get_running_loop()
        if loop not in self._clients:
            self._clients[loop] = self._make()
        return self._clients[loop]

    def __len__(self) -> int:
        return len(self._clients)  # the loops that hold a client
