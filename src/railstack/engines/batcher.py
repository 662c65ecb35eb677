"""Classifier engines: a model loaded once per process, fed by a micro-batcher.

Every model rail (Prompt Guard, Llama Guard, the NLI hallucination check) scores through a
``Batcher``: the inputs of concurrent requests wait in one backlog, and a batch is cut from it
once ``max_batch`` are waiting or its oldest input has waited ``max_delay_s``. The whole backlog
is sorted by length before each cut, new arrivals included, so that a batch pads little even
when more is waiting than one batch holds. A batch runs as one forward pass on the model's own
worker thread (torch releases the GIL, so the event loop keeps serving), one batch at a time;
where ``forward`` is a coroutine function (a remote server's client) the batches are awaited on
the loop, all at once. Each request gets its own results back. In front of it sits the engine's
bounded stage, so a slow model backs up its own queue and sheds its own overload.

Shorter inputs go first, but not for long: once the oldest waiting input has waited
``max_reorder_s``, every batch is cut around the oldest input (with the inputs nearest its
length), so an input is passed over by shorter ones for at most ``max_reorder_s``; after that it
waits only for batches cut around inputs that arrived before it. A long input cannot starve.

An engine is anything with ``async score(items) -> results`` (one result per item): ``Batcher``
over a local model here; a client of a remote server (vLLM) offers the same call.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Generic, Optional, Sequence, TypeVar

from railstack.overload.stages import Stage

Item = TypeVar("Item")
Result = TypeVar("Result")

# Long enough for shorter inputs to fill several batches of a fast (GPU) model ahead of a long
# one, short next to the checks' own latency budgets.
MAX_REORDER_S = 0.05


@dataclass(eq=False)  # compared and hashed by identity: the same item may wait twice
class _Pending(Generic[Item, Result]):
    item: Item
    future: "asyncio.Future[Result]"
    length: int
    since: float  # loop time it joined the backlog


@dataclass
class _Queue:
    """What one event loop has waiting for the model (sync ``generate()`` calls run their own loops)."""

    pending: list = field(default_factory=list)  # the backlog, in arrival order
    full: asyncio.Event = field(default_factory=asyncio.Event)
    dispatcher: Optional[asyncio.Task] = None
    running: set = field(default_factory=set)  # batches awaited on the loop (remote forwards)


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
        max_reorder_s: float = MAX_REORDER_S,
        stage: Optional[Stage] = None,
    ):
        self.name = name
        self.forward = forward
        self.length = length
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_reorder_s = max_reorder_s
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
            now = loop.time()
            pending = [_Pending(item, loop.create_future(), self.length(item), now) for item in items]
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
        while True:
            queue.pending = [p for p in queue.pending if not p.future.done()]
            if not queue.pending:
                return
            fill = queue.pending[0].since + self.max_delay_s - loop.time()
            if len(queue.pending) < self.max_batch and fill > 0:
                queue.full.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(queue.full.wait(), fill)
                continue
            batch = self._cut(queue, loop.time())
            if inspect.iscoroutinefunction(self.forward):  # a remote server's client: batches overlap
                task = loop.create_task(self._run(batch, loop))
                queue.running.add(task)
                task.add_done_callback(queue.running.discard)
            else:  # the next batch is cut once this one is done, from all that waits by then
                await self._run(batch, loop)

    def _cut(self, queue: _Queue, now: float) -> list[_Pending]:
        """The next batch, taken out of the backlog: its shortest inputs, or, once the oldest input
        has waited ``max_reorder_s``, the oldest with the inputs nearest its length."""
        backlog, size = queue.pending, self.max_batch
        ordered = sorted(backlog, key=lambda p: p.length)  # stable: arrival order among equals
        start = 0
        if len(ordered) > size and now - backlog[0].since > self.max_reorder_s:
            at = ordered.index(backlog[0])
            sums = [0, *itertools.accumulate(p.length for p in ordered)]

            def padding(s: int) -> int:  # of the batch ordered[s : s + size]
                return size * ordered[s + size - 1].length - (sums[s + size] - sums[s])

            start = min(range(max(0, at - size + 1), min(at, len(ordered) - size) + 1), key=padding)
        batch = ordered[start : start + size]
        taken = set(batch)
        queue.pending = [p for p in backlog if p not in taken]
        return batch

    async def _run(self, batch: list[_Pending], loop: asyncio.AbstractEventLoop) -> None:
        try:
            items = [p.item for p in batch]
            if inspect.iscoroutinefunction(self.forward):
                results = await self.forward(items)
            else:
                results = await loop.run_in_executor(self._worker, self.forward, items)
            self.batches += 1
        except Exception as exc:  # noqa: BLE001 - each waiting check fails under its own policy
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        for p, result in zip(batch, results):
            if not p.future.done():
                p.future.set_result(result)
