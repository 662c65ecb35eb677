"""Classifier engines: a model loaded once per process, fed by a micro-batcher.

Every model rail (Prompt Guard, Llama Guard, the NLI hallucination check) scores through a
``Batcher``: the inputs of concurrent requests are collected for at most ``max_delay_ms`` or
until ``max_batch`` are waiting, sorted by length so that a batch pads little, and run as one
forward pass on the model's own worker thread (torch releases the GIL, so the event loop keeps
serving), or awaited on the loop where ``forward`` is a coroutine function (a remote server's
client); each request gets its own results back. In front of it sits the engine's bounded
stage, so a slow model backs up its own queue and sheds its own overload.

An engine is anything with ``async score(items) -> results`` (one result per item): ``Batcher``
over a local model here; a client of a remote server (vLLM) offers the same call.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Generic, Optional, Sequence, TypeVar

from railstack.overload.stages import Stage

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Pending(Generic[Item, Result]):
    item: Item
    future: "asyncio.Future[Result]"


@dataclass
class _Queue:
    """What one event loop has waiting for the model (sync ``generate()`` calls run their own loops)."""

    pending: list = field(default_factory=list)
    full: asyncio.Event = field(default_factory=asyncio.Event)
    dispatcher: Optional[asyncio.Task] = None


class Batcher(Generic[Item, Result]):
    """Cross-request micro-batching in front of ``forward(batch) -> results`` (one per item)."""

    def __init__(
        self,
        name: str,
        forward: Callable[[list[Item]], list[Result]],
        *,
        length: Callable[[Item], int],
        max_batch: int,
        max_delay_s: float,
        stage: Optional[Stage] = None,
    ):
        self.name = name
        self.forward = forward
        self.length = length
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.stage = stage
        self.batches = 0  # forward passes run (for tests and benchmarks)
        # One worker thread: forward passes of every loop run one at a time, each on all cores.
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"railstack-{name}")
        self._queues: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Queue]" = weakref.WeakKeyDictionary()

    async def score(self, items: Sequence[Item]) -> list[Result]:
        if not items:
            return []
        slot = self.stage.slot() if self.stage is not None else contextlib.nullcontext()
        async with slot:
            loop = asyncio.get_running_loop()
            queue = self._queues.setdefault(loop, _Queue())
            if queue.dispatcher is None or queue.dispatcher.done():
                queue.dispatcher = loop.create_task(self._dispatch(queue))
            pending = [_Pending(item, loop.create_future()) for item in items]
            queue.pending += pending
            if len(queue.pending) >= self.max_batch:
                queue.full.set()
            try:
                return list(await asyncio.gather(*(p.future for p in pending)))
            except BaseException:
                for p in pending:  # a cancelled request's items are not run
                    p.future.cancel()
                raise

    async def _dispatch(self, queue: _Queue) -> None:
        loop = asyncio.get_running_loop()
        while queue.pending:
            if len(queue.pending) < self.max_batch:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(queue.full.wait(), self.max_delay_s)
            queue.full.clear()
            taken = [p for p in queue.pending if not p.future.done()]
            queue.pending = []
            taken.sort(key=lambda p: self.length(p.item))
            for start in range(0, len(taken), self.max_batch):
                batch = [p for p in taken[start : start + self.max_batch] if not p.future.done()]
                if not batch:
                    continue
                try:
                    items = [p.item for p in batch]
                    if inspect.iscoroutinefunction(self.forward):  # a remote server's client
                        results = await self.forward(items)
                    else:
                        results = await loop.run_in_executor(self._worker, self.forward, items)
                    self.batches += 1
                except Exception as exc:  # noqa: BLE001 - each waiting check fails under its own policy
                    for p in batch:
                        if not p.future.done():
                            p.future.set_exception(exc)
                    continue
                for p, result in zip(batch, results):
                    if not p.future.done():
                        p.future.set_result(result)
