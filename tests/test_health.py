"""Health that tells the truth: the main model, Redis and each classifier engine are judged on
what they recently did, an unhealthy one answers 503 at /railstack/health and /railstack/ready,
and the same states are Prometheus gauges. Faults are real where they can be: nothing listening
at the main model's URL, a redis-server killed and restarted."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from main_model import MainModelDouble
from railstack.admission.service import Admission
from railstack.http.ops import report
from railstack.nemo.outcome import run
from railstack.overload.health import CallWindow
from railstack.overload.settings import HealthSettings
from railstack.settings import SettingsError, parse_settings
from support import chat, free_port, model_runtime
from test_admission import limited_configs, post, redis_server, redis_settings  # noqa: F401 - a fixture too
from tiny_models import prompt_guard


def gauge(text: str, sample: str, **labels) -> float:
    """The value of one sample of the Prometheus text ``text`` (None when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == sample and found.labels == labels:
                return found.value
    return None


def window(**settings) -> CallWindow:
    return CallWindow("main_model", "t", HealthSettings(**settings))


def test_a_window_is_degraded_by_any_failure_and_unhealthy_when_its_calls_all_fail():
    calls = window(window_calls=4, unhealthy_after=2)
    assert calls.state().status == "healthy" and calls.state().detail["calls"] == 0
    calls.record(None)
    calls.record(ConnectionError("refused"))
    assert calls.state().status == "degraded"
    calls.record(ConnectionError("refused"))
    calls.record(ConnectionError("refused"))
    assert calls.state().status == "degraded"  # the success is still among the last four
    went_bad = time.monotonic()
    calls.record(ConnectionError("refused"))
    state = calls.state()
    assert state.status == "unhealthy"
    assert state.since >= went_bad
    assert state.detail | {"last_error_at": None} == {
        "calls": 4, "failures": 4, "window_s": 60.0, "last_error": "ConnectionError: refused", "last_error_at": None,
    }
    for _ in range(4):
        calls.record(None)
    assert calls.state().status == "healthy"  # the failures left the window of four
    assert calls.state().detail["last_error"] == "ConnectionError: refused"  # still said, for the record


def test_one_failure_is_not_unhealthy_and_old_calls_are_forgotten():
    calls = window(window_s=0.2, unhealthy_after=2)
    calls.record(TimeoutError("slow"))
    assert calls.state().status == "degraded"  # one failed call is not "all of them"
    calls.record(TimeoutError("slow"))
    assert calls.state().status == "unhealthy"
    time.sleep(0.6)
    state = calls.state()
    assert state.status == "healthy" and state.detail["calls"] == 0
    assert state.since < time.monotonic() - 0.2  # healthy since the calls aged out, not since someone looked


async def test_a_cancelled_call_says_nothing_about_the_dependency():
    calls = window()

    async def call():
        with calls.observe():
            await asyncio.sleep(10)

    task = asyncio.ensure_future(call())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ValueError), calls.observe():
        raise ValueError("bad answer")
    assert calls.state().detail | {"last_error_at": None} == {
        "calls": 1, "failures": 1, "window_s": 60.0, "last_error": "ValueError: bad answer", "last_error_at": None,
    }


@pytest.mark.parametrize(
    "bad, named",
    [
        ({"window_calls": 0}, "custom_data.railstack.health.window_calls"),
        ({"windows_s": 10}, "custom_data.railstack.health.windows_s: unknown key"),
        ({"window_calls": 5, "unhealthy_after": 6}, r"custom_data.railstack.health: .*unhealthy_after \(6\) is over window_calls"),
    ],
)
def test_bad_health_settings_name_the_key(bad, named):
    with pytest.raises(SettingsError, match=named):
        parse_settings({"railstack": {"health": bad}})


# --- the main model over HTTP ----------------------------------------------------------------


def ask(client):
    """A chat request to no-models; its answer, or None where the app raised (TestClient re-raises
    NeMo's error of a failed main-model call): what it answers then is not health's business."""
    try:
        return client.post("/v1/chat/completions", json=chat("no-models", "What is the capital of France?"))
    except Exception:  # noqa: BLE001
        return None


def states(client, path="/railstack/health"):
    res = client.get(path)
    return res.status_code, res.json()


def test_main_model_down_makes_the_replica_unhealthy_until_it_answers_again(configs, serve):
    port = free_port()  # nothing listens there yet
    env = {
        "MAIN_MODEL_BASE_URL": f"http://127.0.0.1:{port}/v1",
        "RAILSTACK__HEALTH__WINDOW_CALLS": "4",
        "RAILSTACK__HEALTH__UNHEALTHY_AFTER": "2",
    }
    with serve(configs, **env) as client:
        code, body = states(client)
        assert code == 200 and body["status"] == "healthy"
        assert body["dependencies"]["main_model"]["no-models"] | {"since": None, "for_s": None} == {
            "status": "healthy", "since": None, "for_s": None, "calls": 0, "failures": 0, "window_s": 60.0,
        }
        assert set(body["stages"]) >= {"no-models/main"}  # the stages are still there

        ask(client)
        assert states(client)[1]["dependencies"]["main_model"]["no-models"]["status"] == "degraded"
        ask(client)
        code, body = states(client)
        assert code == 503 and body["status"] == "unhealthy"
        down = body["dependencies"]["main_model"]["no-models"]
        assert (down["status"], down["calls"], down["failures"]) == ("unhealthy", 2, 2)
        assert down["last_error"] and down["since"].endswith("Z") and down["for_s"] >= 0
        assert [p | {"for_s": None} for p in body["problems"]] == [
            {"dependency": "main_model", "name": "no-models", "status": "unhealthy", "since": down["since"], "for_s": None}
        ]
        assert body["dependencies"]["main_model"]["default"]["status"] == "healthy"  # the other config never called it
        code, ready = states(client, "/railstack/ready")
        assert code == 503 and ready["ready"] is False and ready["problems"][0]["name"] == "no-models"
        assert states(client, "/railstack/live") == (200, {"status": "alive"})
        metrics = client.get("/metrics").text
        assert gauge(metrics, "railstack_dependency_state", dependency="main_model", name="no-models") == 2
        assert gauge(metrics, "railstack_dependency_state", dependency="main_model", name="default") == 0
        assert gauge(metrics, "railstack_ready") == 0

        model = MainModelDouble().start(port)
        try:
            res = ask(client)
            assert res.status_code == 200 and res.json()["choices"][0]["message"]["content"] == model.reply
            code, body = states(client)
            assert code == 200 and body["dependencies"]["main_model"]["no-models"]["status"] == "degraded"
            assert states(client, "/railstack/ready")[0] == 200
            for _ in range(3):  # the failures leave the window of four
                assert ask(client).status_code == 200
            code, body = states(client)
            assert code == 200 and body["status"] == "healthy" and body["problems"] == []
            metrics = client.get("/metrics").text
            assert gauge(metrics, "railstack_dependency_state", dependency="main_model", name="no-models") == 0
            assert gauge(metrics, "railstack_ready") == 1
        finally:
            model.stop()


# --- Redis -----------------------------------------------------------------------------------

REDIS = """    admission:
      enabled: true
      engine: redis
      redis_url: {url}
      redis_outage: {policy}
      default_tier: {{requests_per_minute: 1, request_burst: 2}}
"""

# While Redis is away, what each policy answers (local: each client's local bucket, a burst of
# two) and how the replica's health reads.
OUTAGES = [("closed", {503}, "unhealthy", 503), ("local", {200, 429}, "degraded", 200), ("open", {200}, "degraded", 200)]


def refusal_says(res) -> None:
    """A refusal is railstack's, with its body and when to retry; an answer is the main model's."""
    if res.status_code == 200:
        return
    error = res.json()["error"]
    code = {429: "rate_limit_exceeded", 503: "rate_limiter_unavailable"}[res.status_code]
    assert error["code"] == code and error["message"], error
    assert int(res.headers["retry-after"]) >= 1


@pytest.mark.parametrize("policy, during, status, ready", OUTAGES)
def test_redis_killed_and_restarted_under_load_follows_its_policy_then_limits_from_redis_again(
    configs, serve, main_model, redis_server, policy, during, status, ready
):
    with serve(limited_configs(configs, REDIS.format(url=redis_server.url, policy=policy))) as client:
        assert post(client, "ann").status_code == 200
        code, body = states(client)
        assert code == 200 and body["dependencies"]["redis"][redis_server.url]["status"] == "healthy"

        killed = threading.Event()

        def load(who):
            before, after = [], []
            while len(after) < 3:
                got = after if killed.is_set() else before  # picked before its request goes out
                start = time.monotonic()
                res = post(client, who)
                refusal_says(res)
                got.append((res.status_code, time.monotonic() - start))
            return before, after

        with ThreadPoolExecutor(4) as pool:  # killed under load: no request fails, each answered at once
            running = [pool.submit(load, f"c{i}") for i in range(4)]
            time.sleep(0.1)
            redis_server.stop()
            killed.set()
            results = [r.result(timeout=30) for r in running]
        assert {code for before, _ in results for code, _ in before} <= {200, 429, 503}
        assert {code for _, after in results for code, _ in after} <= during
        assert max(took for _, after in results for _, took in after) < 5  # the store's timeout is 0.25 s
        if policy == "closed":
            assert [[code for code, _ in after] for _, after in results] == [[503] * 3] * 4
        code, body = states(client)
        assert (code, body["status"]) == (503 if status == "unhealthy" else 200, status)
        down = body["dependencies"]["redis"][redis_server.url]
        assert (down["status"], down["outage_policy"]) == (status, policy)
        assert "Error" in down["last_error"]
        assert body["problems"][0]["dependency"] == "redis"
        assert body["stages"]["no-models/main"]["in_flight"] == 0 and main_model.active == 0
        assert states(client, "/railstack/ready")[0] == ready
        metrics = client.get("/metrics").text
        assert gauge(metrics, "railstack_dependency_state", dependency="redis", name=redis_server.url) == (
            2 if status == "unhealthy" else 1)

        redis_server.start()  # empty: every client's buckets start full again
        returned = time.monotonic()
        # Health finds Redis back by itself: a replica out of rotation gets no traffic to find it with.
        while states(client)[1]["dependencies"]["redis"][redis_server.url]["status"] != "healthy":
            assert time.monotonic() - returned < 5, states(client)
            time.sleep(0.05)
        assert time.monotonic() - returned < 3  # about a second: the store's retry interval
        code, body = states(client)
        assert code == 200 and body["status"] == "healthy" and states(client, "/railstack/ready")[0] == 200
        # The limits are Redis's again: a burst of two, then 429, for a client whose local bucket
        # ran dry in the outage too (not 503, not unlimited, not the local bucket's 429).
        assert [post(client, "c0").status_code for _ in range(3)] == [200, 200, 429]
        assert time.monotonic() - returned < 5


@pytest.mark.parametrize("policy", ["local", "open"])
async def test_redis_down_under_local_or_open_is_degraded(redis_server, policy):
    adm = Admission(redis_settings(redis_server.url, redis_outage=policy), "cfg")
    assert (await adm.decide("id:kim", 10)).allowed
    assert (await report())["dependencies"]["redis"][redis_server.url]["status"] == "healthy"
    redis_server.stop()
    assert (await adm.decide("id:kim", 10)).allowed  # served, from local buckets or unlimited
    body = await report()
    assert body["status"] == "degraded"
    assert body["dependencies"]["redis"][redis_server.url] | {"since": None, "for_s": None, "last_error": None} == {
        "status": "degraded", "since": None, "for_s": None, "url": redis_server.url, "outage_policy": policy,
        "outages": 1, "last_error": None,
    }
    await adm.store.close()


async def test_redis_that_went_away_with_no_traffic_shows_at_the_next_health_check(redis_server):
    adm = Admission(redis_settings(redis_server.url, redis_outage="closed"), "cfg")
    assert (await report())["dependencies"]["redis"][redis_server.url]["status"] == "healthy"  # never used: asked
    redis_server.stop()
    await asyncio.sleep(1.2)  # past the store's one-second retry interval
    assert (await report())["dependencies"]["redis"][redis_server.url]["status"] == "unhealthy"
    await adm.store.close()


# --- a classifier engine ---------------------------------------------------------------------


async def test_a_classifier_engine_that_raises_is_degraded_then_unhealthy(tmp_path, monkeypatch):
    path = prompt_guard(tmp_path / "pg")
    runtime = model_runtime("prompt_guard", path, cache_size=0)
    pg = runtime.resources["prompt_guard"]
    name = f"prompt_guard:{path}"
    assert (await run(runtime, ["prompt_guard"], source="input", text="hello")).is_blocked is False
    assert (await report())["dependencies"]["engine"][name]["status"] == "healthy"

    def broken(batch):
        raise RuntimeError("CUDA error: device-side assert")

    monkeypatch.setattr(pg.batcher, "forward", broken)
    await run(runtime, ["prompt_guard"], source="input", text="hello 1")
    engine = (await report())["dependencies"]["engine"][name]
    assert (engine["status"], engine["calls"], engine["failures"]) == ("degraded", 2, 1)
    assert engine["last_error"] == "RuntimeError: CUDA error: device-side assert"
    for i in range(19):  # every call in the window of 20 fails
        await run(runtime, ["prompt_guard"], source="input", text=f"hello {i + 2}")
    body = await report()
    assert body["status"] == "unhealthy"
    assert body["problems"][0] | {"since": None, "for_s": None} == {
        "dependency": "engine", "name": name, "status": "unhealthy", "since": None, "for_s": None,
    }
    monkeypatch.undo()
    await run(runtime, ["prompt_guard"], source="input", text="hello again")
    assert (await report())["dependencies"]["engine"][name]["status"] == "degraded"
