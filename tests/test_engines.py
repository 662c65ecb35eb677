"""The micro-batcher every model rail scores through."""

import asyncio
import threading
import time
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


async def test_a_backlog_is_sorted_whole_with_what_arrives_during_a_forward_and_cut_into_similar_lengths():
    seen, hold = [], threading.Event()
    batcher = Batcher("t", doubling(seen, hold), length=lambda x: x, max_batch=2, max_delay_s=0, max_reorder_s=10)
    first = asyncio.ensure_future(batcher.score([10, 30, 50, 70]))
    await asyncio.sleep(0.05)  # [10, 30] is in the model; 50 and 70 wait
    second = asyncio.ensure_future(batcher.score([72, 12, 52, 32]))
    await asyncio.sleep(0.01)
    hold.set()
    assert await first == [20, 60, 100, 140]
    assert await second == [144, 24, 104, 64]
    assert seen == [[10, 30], [12, 32], [50, 52], [70, 72]]


async def test_an_input_is_passed_over_by_shorter_ones_only_until_it_has_waited_max_reorder():
    def forward(batch):
        time.sleep(0.02)
        return [x * 2 for x in batch]

    batcher = Batcher("t", forward, length=lambda x: x, max_batch=2, max_delay_s=0, max_reorder_s=0.1)
    done: dict[int, float] = {}

    async def one(x):
        await batcher.score([x])
        done[x] = time.monotonic()

    start = time.monotonic()
    tasks = [asyncio.ensure_future(one(1000))]
    for i in range(1, 60):  # shorter inputs arrive faster than they are run, for over half a second
        tasks += [asyncio.ensure_future(one(i + part / 3)) for part in range(3)]
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    waited = done[1000] - start
    assert 0.1 <= waited < 0.6  # passed over at first, then run: not starved
    assert done[1000] < done[59]
    assert any(done[i] < done[1000] for i in range(2, 10))  # shorter ones that came later did go first


async def test_a_cancelled_request_in_a_backlog_is_dropped_from_it():
    seen, hold = [], threading.Event()
    batcher = Batcher("t", doubling(seen, hold), length=lambda x: x, max_batch=2, max_delay_s=0)
    first = asyncio.ensure_future(batcher.score([1, 2]))
    await asyncio.sleep(0.05)
    cancelled = asyncio.ensure_future(batcher.score([3, 4]))
    kept = asyncio.ensure_future(batcher.score([5, 6]))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    hold.set()
    assert (await first, await kept) == ([2, 4], [10, 12])
    assert seen == [[1, 2], [5, 6]]


async def test_a_failing_forward_fails_only_its_own_batch():
    def forward(batch):
        if 50 in batch:
            raise RuntimeError("out of memory")
        return [x * 2 for x in batch]

    batcher = Batcher("t", forward, length=lambda x: x, max_batch=2, max_delay_s=0.01)
    short, long = await asyncio.gather(batcher.score([1, 2]), batcher.score([50, 51]), return_exceptions=True)
    assert short == [2, 4]
    assert isinstance(long, RuntimeError)


async def test_batches_of_a_coroutine_forward_run_at_once():
    running, most = 0, 0

    async def forward(batch):
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.05)
        running -= 1
        return [x * 2 for x in batch]

    batcher = Batcher("t", forward, length=lambda x: x, max_batch=2, max_delay_s=0.01)
    results = await asyncio.gather(*(batcher.score([x]) for x in range(6)))
    assert results == [[2 * x] for x in range(6)]
    assert (batcher.batches, most) == (3, 3)
