"""A generation ends when its client does, and the main stage bounds what the main model runs.

Counted at the loopback main model: ``active`` is the requests whose answer it is still waiting
on or writing, ``peak_active`` the most at once, ``abandoned`` the answers whose reader (NeMo's
HTTP client) went away before the end. Each answer takes the model about 10 s; every client
below leaves long before, so a generation that ran on for its client would still be counted
seconds after the clients left.
"""

import asyncio
import time

import httpx
import pytest
from nemoguardrails import LLMRails, RailsConfig

from railstack.core import Tier, Verdict, rail
from support import Server, chat, railstack_config, server_env, streamed_text

N = 2  # the main stage's slots in these tests
CLIENTS = 12
LONG_ANSWER = " ".join(f"word{i}" for i in range(200))
TOKEN_DELAY_S = 0.05  # 200 tokens: about 10 s an answer
SETTLE_S = 3.0  # how long the model may take to stop after the last client left: a wide margin on ~1 s

BACKPRESSURE = f"backpressure: {{main: {{max_concurrency: {N}, max_queue: 64, max_wait_s: 60}}}}"
STAGE = f"{{{BACKPRESSURE}}}"
DEADLINE_S = 1.5  # config `dl`'s limits.request_timeout_s


def output_flow(rails: str) -> str:
    """The output flow `check output`: railstack's ``rails`` on the answer (each chunk of a stream)."""
    return f'''
define subflow check output
  $railstack_outcome = execute railstack_rails(rails="{rails}", source="output")
  if $railstack_outcome.is_blocked
    bot railstack refuse
    stop
'''


def long_answers(model) -> None:
    model.reply, model.token_delay_s = LONG_ANSWER, TOKEN_DELAY_S


async def settles(model) -> float:
    """Seconds until the main model has no generation left (fails after ``SETTLE_S``)."""
    start = time.monotonic()
    while model.active:
        if time.monotonic() - start > SETTLE_S:
            raise AssertionError(f"{model.active} generations still running {SETTLE_S} s after their clients left")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


# --- over HTTP, against a real server ------------------------------------------------------


BLOCK_RAIL = '''
from railstack.core import Tier, Verdict, rail


@rail("blocks_word7", Tier.CHEAP)
async def blocks_word7(text, ctx):
    return Verdict.block("word7") if "word7" in text else Verdict.allow()
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real `nemoguardrails server`: config `bp` has a main stage of N slots, config `out` the
    same and a streaming output rail that blocks the answer's 8th word, config `dl` the same
    stage and a request deadline of DEADLINE_S."""
    from main_model import MainModelDouble

    model = MainModelDouble().start()
    root = tmp_path_factory.mktemp("disconnects")
    (root / "config.py").write_text("from railstack.http.install import init  # noqa: F401\n")
    railstack_config(root / "bp", model.base_url, ["railstack heuristics"], STAGE)
    railstack_config(root / "dl", model.base_url, ["railstack heuristics"],
                     f"{{limits: {{request_timeout_s: {DEADLINE_S}}}, {BACKPRESSURE}}}")
    out = railstack_config(
        root / "out", model.base_url, ["railstack heuristics"], STAGE,
        output=["check output"], streaming="{enabled: true, chunk_size: 5, context_size: 0}",
    )
    (out / "actions.py").write_text(BLOCK_RAIL)
    (out / "output.co").write_text(output_flow("blocks_word7"))
    running = Server(root, cwd=root, env=server_env(model))
    try:
        for config_id in ("bp", "out", "dl"):  # built through the rails-only endpoint: no main-model call
            assert httpx.post(f"{running.url}/v1/checks", json=chat(config_id, "Hi"), timeout=60).status_code == 200
        yield running, model
    finally:
        running.stop()
        model.stop()


@pytest.fixture
def fresh(server):
    srv, model = server
    model.reply, model.latency_s, model.token_delay_s = type(model)().reply, 0.0, 0.0
    model.requests.clear()
    model.abandoned = 0
    model.peak_active = model.active
    return srv, model


async def in_flight(srv, config_id="bp") -> int:
    async with httpx.AsyncClient(base_url=srv.url) as client:
        return (await client.get("/railstack/health")).json()["stages"][f"{config_id}/main"]["in_flight"]


@pytest.mark.slow
async def test_streaming_clients_that_hang_up_after_the_first_chunk_stop_their_generations(fresh):
    srv, model = fresh
    long_answers(model)
    first_chunks = []

    async def read_first_chunk_and_hang_up():
        # A client of its own: closing its connection is the disconnect the server sees.
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
            async with client.stream("POST", "/v1/chat/completions", json=chat("bp", "Hello", stream=True)) as res:
                assert res.status_code == 200
                async for chunk in res.aiter_text():
                    first_chunks.append(chunk)
                    break

    await asyncio.gather(*(read_first_chunk_and_hang_up() for _ in range(CLIENTS)))
    await settles(model)

    assert len(first_chunks) == CLIENTS and all(c.startswith("data: ") for c in first_chunks)
    assert model.calls == CLIENTS  # every client had its turn at the main model...
    assert model.peak_active <= N  # ...never more than the stage's slots at once
    assert model.abandoned == CLIENTS  # each upstream stream was closed before its end
    assert await in_flight(srv) == 0


@pytest.mark.slow
async def test_non_streaming_clients_that_hang_up_stop_their_generations(fresh):
    srv, model = fresh
    model.latency_s = 10.0

    async def give_up_after(wait):
        async with httpx.AsyncClient(base_url=srv.url) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post("/v1/chat/completions", json=chat("bp", "Hello"), timeout=wait)

    # Waves of N+2: N reach the model, 2 queue; all hang up, and the next wave comes.
    for _ in range(3):
        await asyncio.gather(*(give_up_after(0.5) for _ in range(N + 2)))
    await settles(model)

    assert model.calls >= 3 * N  # each wave reached the model...
    assert model.peak_active <= N  # ...by at most N at once
    assert model.abandoned == model.calls
    assert await in_flight(srv) == 0


@pytest.mark.slow
async def test_a_client_that_reads_its_whole_stream_is_not_cut(fresh):
    srv, model = fresh
    async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
        res = await client.post("/v1/chat/completions", json=chat("bp", "Hello", stream=True))
    assert streamed_text(res) == model.reply
    assert model.abandoned == 0 and model.active == 0


@pytest.mark.slow
async def test_a_stream_its_output_rail_blocked_stops_its_generation(fresh):
    srv, model = fresh
    long_answers(model)
    async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
        res = await client.post("/v1/chat/completions", json=chat("out", "Hello", stream=True))
    await settles(model)
    assert "word4" in res.text and "word7" not in res.text  # the first chunk passed, the second was blocked
    assert "guardrails_violation" in res.text
    assert model.abandoned == 1  # its upstream stream was closed long before the answer's end
    assert await in_flight(srv, "out") == 0


@pytest.mark.slow
async def test_clients_that_leave_about_when_the_deadline_fires_leave_nothing_behind(fresh):
    srv, model = fresh
    model.latency_s = 600  # each request is ended by its client leaving or by its deadline, whichever is first
    logged = len(srv.output())

    async def leave_after(wait, stream):
        async with httpx.AsyncClient(base_url=srv.url) as client:
            try:
                res = await asyncio.wait_for(client.post("/v1/chat/completions", json=chat("dl", "Hello", stream=stream)), wait)
            except asyncio.TimeoutError:
                return "left"
            assert res.json()["error"]["code"] == "request_timeout"
            return res.status_code

    # N reach the model, the rest wait for a slot: both kinds meet the deadline and the clients leaving.
    waits = [DEADLINE_S + d for d in (-0.3, -0.1, -0.02, 0, 0.02, 0.1, 1.5)]
    ended = await asyncio.gather(*(leave_after(wait, stream) for wait in waits for stream in (False, True)))
    await settles(model)

    assert set(ended) == {"left", 504}  # the first to leave left before it, the last were answered by it
    assert await in_flight(srv, "dl") == 0
    assert "Traceback" not in srv.output()[logged:]


# --- through LLMRails.stream_async and generate_async --------------------------------------


@pytest.fixture
def rails(main_model, tmp_path):
    long_answers(main_model)
    railstack_config(tmp_path / "py", main_model.base_url, ["railstack heuristics"], STAGE)
    return LLMRails(RailsConfig.from_path(str(tmp_path / "py")))


ASK = [{"role": "user", "content": "Hello"}]


@rail("blocks_word7", Tier.CHEAP)
async def blocks_word7(text: str, ctx) -> Verdict:
    return Verdict.block("word7") if "word7" in text else Verdict.allow()


async def test_a_stream_its_output_rail_blocked_ends_at_once_and_stops_its_generation(main_model, tmp_path):
    long_answers(main_model)
    path = railstack_config(
        tmp_path / "out", main_model.base_url, ["railstack heuristics"], STAGE,
        output=["check output"], streaming="{enabled: true, chunk_size: 5, context_size: 0}",
    )
    (path / "output.co").write_text(output_flow("blocks_word7"))
    # NeMo's own iterator ends only once its generation has: with the whole answer, ~10 s.
    chunks = await asyncio.wait_for(
        collect(LLMRails(RailsConfig.from_path(str(path))).stream_async(messages=ASK)), SETTLE_S + 1
    )
    await settles(main_model)
    passed = "".join(chunks[:-1])
    assert passed.startswith(" ".join(LONG_ANSWER.split()[:5])) and "word7" not in passed
    assert '"type": "guardrails_violation"' in chunks[-1]
    assert main_model.abandoned == 1


async def collect(stream) -> list:
    return [chunk async for chunk in stream]


async def test_stream_consumers_that_stop_iterating_stop_their_generations(rails, main_model):
    async def first_chunk_then_break():
        async for chunk in rails.stream_async(messages=ASK):
            return chunk

    chunks = await asyncio.gather(*(first_chunk_then_break() for _ in range(CLIENTS)))
    await settles(main_model)

    assert all(chunks)
    assert main_model.calls == CLIENTS
    assert main_model.peak_active <= N
    assert main_model.abandoned == CLIENTS


async def test_a_stream_its_consumer_closes_stops_its_generation(rails, main_model):
    stream = rails.stream_async(messages=ASK)
    assert await anext(stream)
    await stream.aclose()
    await settles(main_model)
    assert main_model.abandoned == 1


async def test_a_stream_closed_or_dropped_unread_stops_its_generation(rails, main_model):
    closed = rails.stream_async(messages=ASK)  # NeMo starts the generation here, not at the first read
    while main_model.active < 1:
        await asyncio.sleep(0.02)
    await closed.aclose()
    await settles(main_model)

    dropped = rails.stream_async(messages=ASK)
    while main_model.active < 1:
        await asyncio.sleep(0.02)
    del dropped
    await settles(main_model)
    assert main_model.calls == main_model.abandoned == 2


async def test_cancelled_stream_consumers_stop_their_generations_and_queued_ones_never_start(rails, main_model):
    reading = asyncio.Event()

    async def read_all():
        async for _ in rails.stream_async(messages=ASK):
            reading.set()

    consumers = [asyncio.ensure_future(read_all()) for _ in range(N + 2)]
    await reading.wait()
    await cancel_once_the_slots_are_busy(consumers, main_model)


async def test_cancelled_generate_async_calls_stop_their_generations(rails, main_model):
    main_model.latency_s = 10.0
    await cancel_once_the_slots_are_busy(
        [asyncio.ensure_future(rails.generate_async(messages=ASK)) for _ in range(N + 2)], main_model
    )


async def cancel_once_the_slots_are_busy(tasks: list, main_model) -> None:
    """Cancel ``tasks`` (N + 2 callers) once N of them are at the main model, the other two
    waiting for a slot: the N generations stop, and the two waiting never start one."""
    while main_model.active < N:
        await asyncio.sleep(0.02)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await settles(main_model)

    assert main_model.calls == N
    assert main_model.peak_active <= N
    assert main_model.abandoned == N


output_checks: list[str] = []  # what each call of the slow output check came to


@rail("slow_output_check", Tier.SMALL_CLASSIFIER)
async def slow_output_check(text: str, ctx) -> Verdict:
    output_checks.append("started")
    try:
        await asyncio.sleep(0.3)
    except asyncio.CancelledError:
        output_checks.append("cancelled")
        raise
    output_checks.append("done")
    return Verdict.allow()


async def test_a_cancelled_stream_consumer_cancels_the_output_rail_checking_its_next_chunk(main_model, tmp_path):
    long_answers(main_model)
    output_checks.clear()
    path = railstack_config(
        tmp_path / "out", main_model.base_url, ["railstack heuristics"], STAGE,
        output=["check output"], streaming="{enabled: true, chunk_size: 5, context_size: 0}",
    )
    (path / "output.co").write_text(output_flow("slow_output_check"))
    stream = LLMRails(RailsConfig.from_path(str(path))).stream_async(messages=ASK)

    # The first chunk (5 tokens, checked before they were sent), token by token.
    first = [await anext(stream) for _ in range(5)]
    assert "".join(first) == " ".join(LONG_ANSWER.split()[:5]) and output_checks == ["started", "done"]
    following = asyncio.ensure_future(anext(stream))  # waits for the next chunk's check
    while output_checks.count("started") < 2:  # the next chunk's check is under way
        await asyncio.sleep(0.01)
    following.cancel()
    await asyncio.gather(following, return_exceptions=True)
    await settles(main_model)

    # The check under way was cut, and the generation with it: NeMo's check of the whole answer
    # (run once the answer is complete) never comes.
    assert output_checks == ["started", "done", "started", "cancelled"]
    assert main_model.abandoned == 1
