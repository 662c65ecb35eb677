"""Backpressure: bounded stages, shedding with 503 + Retry-After, health and metrics.

The stage itself is tested directly; the HTTP behaviour against a real `nemoguardrails server`
process on loopback, with the test main model answering after a fixed service time.
"""

import asyncio
import random
import time

import httpx
import pytest
from nemoguardrails import LLMRails, RailsConfig

from railstack.core.types import Shed
from railstack.overload.stages import Stage, stages
from railstack.settings import SettingsError, parse_settings
from railstack.overload.settings import BackpressureSettings, StageSettings
from support import Server, chat, rail_flow, railstack_config, server_env, streamed_text

SERVICE_S = 1.0  # the main model's fixed service time in these tests


def a_stage(concurrency=1, queue=1, wait=5.0, **thresholds) -> Stage:
    return Stage("t", StageSettings(max_concurrency=concurrency, max_queue=queue, max_wait_s=wait), BackpressureSettings(**thresholds))


async def test_stage_runs_up_to_its_limit_queues_up_to_its_bound_and_sheds_the_rest():
    stage = a_stage(concurrency=2, queue=1)
    await stage.acquire()
    await stage.acquire()
    waiter = asyncio.ensure_future(stage.acquire())
    await asyncio.sleep(0.01)
    assert (stage.in_flight, stage.queued) == (2, 1)
    with pytest.raises(Shed, match="queue_full"):
        await stage.acquire()
    stage.release()
    await waiter  # the queued request takes the freed slot
    assert (stage.in_flight, stage.queued, stage.admitted, stage.shed) == (2, 0, 3, 1)


async def test_a_waiter_is_shed_once_it_has_waited_its_maximum():
    stage = a_stage(queue=5, wait=0.05)
    await stage.acquire()
    start = time.monotonic()
    with pytest.raises(Shed, match="wait_timeout") as shed:
        await stage.acquire()
    assert time.monotonic() - start >= 0.05
    assert shed.value.retry_after_s == 1.0
    assert (stage.in_flight, stage.queued) == (1, 0)


async def test_a_cancelled_waiter_leaves_the_queue_and_never_takes_a_slot():
    stage = a_stage(queue=1)
    await stage.acquire()
    waiter = asyncio.ensure_future(stage.acquire())
    await asyncio.sleep(0.01)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert stage.queued == 0
    stage.release()
    assert stage.in_flight == 0
    await asyncio.wait_for(stage.acquire(), 1)  # the slot was not lost to the cancelled waiter


async def test_a_request_that_would_wait_past_its_maximum_is_shed_at_once():
    stage = a_stage(queue=5, wait=0.1)
    taken = await stage.acquire()
    await asyncio.sleep(0.2)
    stage.release(taken)  # slots are held about 0.2 s
    await stage.acquire()
    start = time.monotonic()
    with pytest.raises(Shed, match=r"wait_estimate: a slot would take about 0\.2\d s, over 0\.1 s"):
        await stage.acquire()
    assert time.monotonic() - start < 0.05
    assert stage.queued == 0


async def held_for(stage: Stage, seconds: float) -> None:
    taken = await stage.acquire()
    await asyncio.sleep(seconds)
    stage.release(taken)


async def test_the_wait_estimate_counts_from_when_the_slots_in_use_were_taken():
    stage = a_stage(concurrency=2, queue=5, wait=0.1)
    await held_for(stage, 0.2)  # slots are held about 0.2 s
    await stage.acquire()
    await stage.acquire()
    # Both slots were just taken: none is back within 0.1 s, however many slots there are.
    with pytest.raises(Shed, match="wait_estimate"):
        await stage.acquire()
    stage.release(), stage.release()
    old = asyncio.ensure_future(held_for(stage, 0.2))
    await asyncio.sleep(0.15)
    await stage.acquire()
    # One slot comes back in about 0.05 s: the request waits for it, and gets it.
    await asyncio.wait_for(stage.acquire(), 0.1)
    await old
    assert stage.shed == 1


async def test_holds_that_vary_make_the_wait_estimate_longer():
    steady, varied = a_stage(wait=0.15), a_stage(wait=0.15)
    for _ in range(8):
        await held_for(steady, 0.1)
    for hold in (0.02, 0.18) * 4:  # the same mean hold
        await held_for(varied, hold)
    await steady.acquire()
    await varied.acquire()
    waiter = asyncio.ensure_future(steady.acquire())  # about 0.1 s: let in
    with pytest.raises(Shed, match="wait_estimate"):  # about 0.07 s and twice its spread: over 0.15 s
        await varied.acquire()
    steady.release()
    await waiter


async def overload(stage: Stage, factor: float, hold: float, seconds: float) -> tuple[int, dict[str, int]]:
    """``factor`` x the stage's capacity of requests holding a slot ``hold`` s on average (from
    half to one and a half times it), arriving evenly for ``seconds`` s: (requests served, sheds
    by kind)."""
    served, sheds = 0, {"queue_full": 0, "wait_estimate": 0, "wait_timeout": 0}
    holds = random.Random(0)

    async def one() -> None:
        nonlocal served
        try:
            async with stage.slot():
                await asyncio.sleep(hold * holds.uniform(0.5, 1.5))
            served += 1
        except Shed as exc:
            sheds[exc.reason.split(":")[0]] += 1

    gap = hold / stage.settings.max_concurrency / factor
    loop = asyncio.get_running_loop()
    start, tasks = loop.time(), []
    while loop.time() - start < seconds:
        due = int((loop.time() - start) / gap) + 1
        tasks += [asyncio.ensure_future(one()) for _ in range(due - len(tasks))]
        await asyncio.sleep(gap / 4)
    await asyncio.gather(*tasks)
    return served, sheds


@pytest.mark.parametrize("factor", [1, 2, 4])
async def test_under_overload_the_slots_stay_busy_and_few_admitted_requests_time_out(factor):
    stage = a_stage(concurrency=4, queue=16, wait=0.1)
    served, sheds = await overload(stage, factor, hold=0.05, seconds=1.5)
    capacity = 1.5 * 4 / 0.05
    assert served >= 0.85 * capacity, sheds  # shed no more than keeps the slots busy
    assert sheds["wait_timeout"] <= 0.02 * max(1, sum(sheds.values())), sheds


async def test_the_first_waiter_is_served_first():
    stage = a_stage(queue=3)
    await stage.acquire()
    order = []

    async def wait(i):
        await stage.acquire()
        order.append(i)
        stage.release()

    waiters = []
    for i in range(3):
        waiters.append(asyncio.ensure_future(wait(i)))
        await asyncio.sleep(0.01)
    stage.release()
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2]


async def test_health_follows_slot_and_queue_use():
    stage = a_stage(concurrency=5, queue=2, degraded_at=0.8, overloaded_at=0.5)
    assert stage.state().status == "healthy"
    for _ in range(4):
        await stage.acquire()
    assert stage.state().status == "degraded"
    await stage.acquire()
    waiter = asyncio.ensure_future(stage.acquire())
    await asyncio.sleep(0.01)
    assert stage.state().status == "overloaded"
    for _ in range(5):
        stage.release()
    await waiter
    stage.release()
    assert stage.state().status == "healthy"


def test_health_is_the_worst_stage_of_the_process():
    stages.get("a/main", StageSettings(), BackpressureSettings())
    busy = stages.get("b/main", StageSettings(max_concurrency=1, max_queue=0), BackpressureSettings())
    busy.in_flight = 1
    status, states = stages.health()
    assert status == "overloaded"
    assert states["a/main"]["status"] == "healthy"
    assert states["b/main"] == {
        "in_flight": 1, "queued": 0, "max_concurrency": 1, "max_queue": 0, "admitted": 0, "shed": 0,
        "utilization": 1.0, "queue_fill": 1.0, "status": "overloaded",
    }


@pytest.mark.parametrize(
    "bad, named",
    [
        ({"main": {"max_concurency": 4}}, "custom_data.railstack.backpressure.main.max_concurency: unknown key"),
        ({"main": {"max_concurrency": 0}}, "custom_data.railstack.backpressure.main.max_concurrency"),
        ({"overloaded_at": 1.5}, "custom_data.railstack.backpressure.overloaded_at"),
    ],
)
def test_bad_backpressure_settings_name_the_key(bad, named):
    with pytest.raises(SettingsError, match=named.replace(".", r"\.")):
        parse_settings({"railstack": {"backpressure": bad}})


# --- the Python path: generate_async and RunnableRails -------------------------------------


def rails_for(path, main_model, concurrency=1, queue=0, wait=5, flows=("railstack heuristics",), engines=""):
    stage = f"{{max_concurrency: {concurrency}, max_queue: {queue}, max_wait_s: {wait}}}"
    railstack_config(path, main_model.base_url, list(flows), f"{{backpressure: {{main: {stage}{engines}}}}}")
    return RailsConfig.from_path(str(path))


async def test_generate_async_beyond_capacity_gets_a_refusal_that_says_why(main_model, tmp_path):
    main_model.latency_s = 0.5
    rails = LLMRails(rails_for(tmp_path / "py", main_model))
    ask = [{"role": "user", "content": "What is the capital of France?"}]
    answers = await asyncio.gather(rails.generate_async(messages=ask), rails.generate_async(messages=ask))
    contents = sorted(a["content"] for a in answers)
    assert contents[0] == main_model.reply
    assert contents[1].startswith("Service overloaded (py/main): queue_full")
    assert "Retry after 1 s." in contents[1]
    assert main_model.calls == 1


def test_nemo_verbose_console_log_is_off_unless_asked_for(main_model, tmp_path):
    import logging

    from nemoguardrails.logging.verbose import VerboseHandler

    root = logging.getLogger()
    root.addHandler(VerboseHandler())  # what NeMo's server adds: it builds configs with verbose=True
    try:
        LLMRails(rails_for(tmp_path / "quiet", main_model), verbose=True)
        assert not [h for h in root.handlers if isinstance(h, VerboseHandler)]
    finally:
        for h in [h for h in root.handlers if isinstance(h, VerboseHandler)]:
            root.removeHandler(h)


async def test_runnable_rails_around_a_chat_model_is_gated_too(main_model, tmp_path):
    from langchain_openai import ChatOpenAI
    from nemoguardrails.integrations.langchain.runnable_rails import RunnableRails

    main_model.latency_s = 0.5
    model = ChatOpenAI(model="main", base_url=main_model.base_url, api_key="EMPTY", max_retries=0)
    chain = RunnableRails(rails_for(tmp_path / "lc", main_model)) | model
    results = await asyncio.gather(chain.ainvoke("Hello"), chain.ainvoke("Hello"))
    texts = sorted(r.content if hasattr(r, "content") else r for r in results)
    assert texts[0] == main_model.reply
    assert texts[1].startswith("Service overloaded")
    assert main_model.calls == 1


# --- over HTTP, against a real server ------------------------------------------------------

SLOW_RAIL = '''
import asyncio

from railstack.core import Tier, Verdict, rail
from railstack.engines.pool import pool


@rail("slow_engine", Tier.SMALL_CLASSIFIER, resource=lambda runtime: pool.stage(runtime, "slow"))
async def slow_engine(text, ctx):
    # Stands for a classifier: its own stage in front of a slow engine.
    async with ctx.resource.slot():
        await asyncio.sleep(1.0)
    return Verdict.allow()
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the HTTP tests: config `bp` (main stage 2 + 2 queued, 1.5 s wait) and
    config `engine` (a rail whose engine stage takes 1 + 0 queued)."""
    from main_model import MainModelDouble

    model = MainModelDouble(latency_s=SERVICE_S).start()
    root = tmp_path_factory.mktemp("bp")
    (root / "config.py").write_text("from railstack.http.install import init  # noqa: F401\n")
    rails_for(root / "bp", model, concurrency=2, queue=2, wait=1.5)
    engine = root / "engine"
    rails_for(engine, model, 8, 8, flows=["slow engine"], engines=", engines: {max_concurrency: 1, max_queue: 0}")
    (engine / "actions.py").write_text(SLOW_RAIL)
    (engine / "flows.co").write_text(rail_flow("slow_engine", "slow engine"))
    running = Server(root, cwd=root, env=server_env(model))
    try:
        for config_id in ("bp", "engine"):
            # NeMo builds a config's rails on its first request: here through the rails-only
            # endpoint, outside the main stage. In a chat request the build would count as that
            # request's slot time, whose moving average then sheds (wait_estimate) the waiters
            # the tests expect to queue when the machine is slow.
            res = httpx.post(f"{running.url}/v1/checks", json=chat(config_id, "Hi"), timeout=60)
            assert res.status_code == 200, res.text
        yield running, model
    finally:
        running.stop()
        model.stop()


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample of the Prometheus text ``text`` (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


async def until_queued(client, n):
    """The health answer once ``n`` requests wait for the main stage of `bp` (10 s at most)."""
    for _ in range(200):
        res = await client.get("/railstack/health")
        if res.json()["stages"].get("bp/main", {}).get("queued") == n:
            return res
        await asyncio.sleep(0.05)
    raise AssertionError(f"never {n} queued: {res.json()}")


async def timed_post(client, body):
    start = time.monotonic()
    res = await client.post("/v1/chat/completions", json=body)
    return res, time.monotonic() - start


@pytest.mark.slow
async def test_beyond_capacity_requests_are_shed_fast_and_admitted_ones_complete(server):
    srv, model = server
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        before = (await client.get("/metrics")).text
        assert (await client.get("/railstack/health")).json()["status"] == "healthy"
        calls = model.calls
        bodies = [chat("bp", "What is the capital of France?", stream=i % 2 == 1) for i in range(10)]
        flood = [asyncio.ensure_future(timed_post(client, b)) for b in bodies]
        during = await until_queued(client, 2)
        results = await asyncio.gather(*flood)
        after = await client.get("/railstack/health")
        metrics = (await client.get("/metrics")).text

    ok = [(r, t) for r, t in results if r.status_code == 200]
    shed = [(r, t) for r, t in results if r.status_code == 503]
    assert len(ok) == 4 and len(shed) == 6, [r.status_code for r, _ in results]
    assert model.calls - calls == 4
    for res, elapsed in shed:  # answered at the door, before any admitted request could finish
        assert elapsed < SERVICE_S
        assert res.headers["retry-after"] == "1"
        assert res.headers["content-type"] == "application/json"
        assert res.json()["error"]["code"] == "overloaded"
        assert res.json()["error"]["message"].startswith("Service overloaded (bp/main): queue_full")
    for res, elapsed in ok:
        assert elapsed >= SERVICE_S
        assert main_text(res) == model.reply

    assert during.status_code == 503
    assert during.json()["status"] == "overloaded"
    assert during.json()["stages"]["bp/main"] | {"admitted": 0, "shed": 0} == during.json()["stages"]["bp/main"] | {
        "in_flight": 2, "queued": 2, "admitted": 0, "shed": 0,
    }
    assert after.status_code == 200 and after.json()["status"] == "healthy"

    def grew(name, **labels):
        return metric(metrics, name, **labels) - metric(before, name, **labels)

    assert grew("railstack_shed_total", stage="bp/main", reason="queue_full") == 6
    assert grew("railstack_rail_decisions_total", rail="heuristics", source="input", verdict="allow", failed="false") == 4
    assert grew("railstack_main_model_latency_seconds_count", config="bp") == 4
    assert grew("railstack_rail_latency_seconds_count", rail="heuristics", source="input") == 4
    assert metric(metrics, "railstack_stage_in_flight", stage="bp/main") == 0
    assert metric(metrics, "railstack_stage_queued", stage="bp/main") == 0
    assert metric(metrics, "railstack_stage_capacity", stage="bp/main") == 2


def main_text(res) -> str:
    if res.headers["content-type"].startswith("text/event-stream"):
        return streamed_text(res)
    return res.json()["choices"][0]["message"]["content"]


@pytest.mark.slow
async def test_a_request_that_waited_past_its_maximum_is_shed(server):
    srv, model = server
    model.latency_s = 3 * SERVICE_S  # longer than the 1.5 s a request may wait
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            flood = [asyncio.ensure_future(timed_post(client, chat("bp", "Hello"))) for _ in range(4)]
            results = await asyncio.gather(*flood)
    finally:
        model.latency_s = SERVICE_S
    assert sorted(r.status_code for r, _ in results) == [200, 200, 503, 503]
    for res, elapsed in [(r, t) for r, t in results if r.status_code == 503]:
        assert "wait_timeout" in res.json()["error"]["message"]
        # Shed for its wait, not at once (queue full) nor once a slot freed (the answer's 3 x service time).
        assert 1.5 <= elapsed < 3 * SERVICE_S


@pytest.mark.slow
async def test_a_client_that_disconnects_frees_its_slot_and_its_queue_place(server):
    srv, model = server
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            # Short, steady holds: the wait estimate lets a request queue whatever holds the tests
            # before left in the stage's history (the 3 s ones would make it shed at the door).
            model.latency_s = 0.1
            for _ in range(6):
                await asyncio.gather(*(client.post("/v1/chat/completions", json=chat("bp", "Hello")) for _ in range(2)))
            model.latency_s = 10.0  # the model is still busy with every request below when it is checked

            async def give_up_after(wait):
                with pytest.raises(httpx.ReadTimeout):
                    await client.post("/v1/chat/completions", json=chat("bp", "Hello"), timeout=wait)

            holders = [asyncio.ensure_future(give_up_after(3.0)) for _ in range(2)]
            await asyncio.sleep(0.5)
            queued = asyncio.ensure_future(give_up_after(0.5))  # queued behind the two, then gone
            await until_queued(client, 1)
            await queued
            await asyncio.sleep(0.3)
            queued_left = (await client.get("/railstack/health")).json()["stages"]["bp/main"]
            await asyncio.gather(*holders)
            await asyncio.sleep(0.3)
            slots_left = (await client.get("/railstack/health")).json()["stages"]["bp/main"]
            model.latency_s = 0.0
            res = await client.post("/v1/chat/completions", json=chat("bp", "Hello"))
    finally:
        model.latency_s = SERVICE_S
    assert (queued_left["in_flight"], queued_left["queued"]) == (2, 0)
    assert (slots_left["in_flight"], slots_left["queued"]) == (0, 0)
    assert res.status_code == 200


@pytest.mark.slow
async def test_a_classifier_engine_that_is_full_sheds_its_own_requests_with_503(server):
    srv, model = server
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        calls = model.calls
        results = await asyncio.gather(*(timed_post(client, chat("engine", "Hello")) for _ in range(3)))
        metrics = (await client.get("/metrics")).text
    assert sorted(r.status_code for r, _ in results) == [200, 503, 503]
    for res in [r for r, _ in results if r.status_code == 503]:
        assert res.headers["retry-after"] == "1"
        assert res.json()["error"]["message"].startswith("Service overloaded (engine/slow): queue_full")
        assert res.headers["x-railstack-decisions"] == "slow_engine=block"
    assert model.calls - calls == 1
    assert metric(metrics, "railstack_shed_total", stage="engine/slow", reason="queue_full") == 2
