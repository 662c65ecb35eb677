"""The micro-batcher every model rail scores through."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from railstack.engines.batcher import Batcher


def doubling(seen=None, hold=None):
    def forward(batch):
        if hold is not None:
            hold.wait(5)
        if seen is not None:
            seen.append(list(batch))
        return [x * 2 for x in batch]

    return forward


async def test_concurrent_requests_share_batches_of_similar_length_and_get_their_own_results():
    seen = []
    batcher = Batcher("t", doubling(seen), length=lambda x: x, max_batch=4, max_delay_s=0.01)
    results = await asyncio.gather(*(batcher.score([x, x + 100]) for x in (7, 3, 5, 1)))
    assert results == [[14, 214], [6, 206], [10, 210], [2, 202]]
    assert seen == [[1, 3, 5, 7], [101, 103, 105, 107]]  # sorted by length: little padding


async def test_a_cancelled_request_is_not_run_and_an_error_reaches_every_waiter():
    seen, hold = [], threading.Event()
    batcher = Batcher("t", doubling(seen, hold), length=lambda x: x, max_batch=1, max_delay_s=0)
    first = asyncio.ensure_future(batcher.score([1]))
    second = asyncio.ensure_future(batcher.score([2]))
    await asyncio.sleep(0.05)  # 1 is in the model, 2 waits
    second.cancel()
    hold.set()
    assert await first == [2]
    await asyncio.sleep(0.05)
    assert seen == [[1]]

    def broken(batch):
        raise RuntimeError("out of memory")

    batcher.forward = broken
    with pytest.raises(RuntimeError, match="out of memory"):
        await asyncio.gather(batcher.score([3]), batcher.score([4]))


def test_event_loops_in_several_threads_share_one_batcher():
    # NeMo's sync generate() runs a loop of its own per call, from whatever thread calls it.
    batcher = Batcher("t", doubling(), length=lambda x: 1, max_batch=4, max_delay_s=0.005)

    async def many(offset):
        return await asyncio.gather(*(batcher.score([offset + i]) for i in range(10)))

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda o: asyncio.run(many(o)), [0, 100, 200]))
    assert results == [[[2 * (o + i)] for i in range(10)] for o in (0, 100, 200)]
