"""Admission: token buckets per client, in-process and through a real redis-server, over HTTP."""

import asyncio
import json
import shutil
import socket
import subprocess
import time

import httpx
import pytest
from nemoguardrails import LLMRails
from nemoguardrails.integrations.langchain.runnable_rails import RunnableRails

from railstack.admission.buckets import LocalBuckets, RedisBuckets
from railstack.admission.quota import Limits, Quota
from railstack.admission.service import Admission, client_key
from railstack.admission.settings import AdmissionSettings, RateTier
from support import Server, chat, free_port, packaged_config, server_env

LIMITS = Limits(request_burst=3, requests_per_s=1.0, token_burst=1000, tokens_per_s=100.0)


class ClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock the test moves by hand (aiolimiter reads loop.time())."""

    now = 1000.0

    def time(self):
        return self.now


@pytest.fixture
def clock():
    loop = ClockLoop()
    yield loop
    loop.close()


def take(loop, engine, cost=10, key="k", limits=LIMITS):
    return loop.run_until_complete(engine.acquire(key, limits, cost))


def test_request_bucket_arithmetic_on_a_controlled_clock(clock):
    engine = LocalBuckets(max_clients=10)
    assert [take(clock, engine).allowed for _ in range(3)] == [True, True, True]
    refused = take(clock, engine)
    assert not refused.allowed and refused.status == 429
    assert refused.reason == "requests per minute limit reached"
    assert refused.retry_after_s == pytest.approx(1.0)
    clock.now += 0.5
    assert not take(clock, engine).allowed
    clock.now += 0.5
    allowed = take(clock, engine)
    assert allowed.allowed and allowed.remaining_requests == pytest.approx(0.0)
    clock.now += 10
    assert take(clock, engine).remaining_requests == pytest.approx(2.0)  # refilled to the burst, minus one


def test_token_bucket_counts_cost_and_refuses_without_taking(clock):
    engine = LocalBuckets(max_clients=10)
    assert take(clock, engine, cost=900).remaining_tokens == pytest.approx(100)
    refused = take(clock, engine, cost=300)
    assert not refused.allowed and refused.reason == "tokens per minute limit reached"
    assert refused.retry_after_s == pytest.approx(2.0)  # 200 tokens short at 100 per s
    assert refused.remaining_requests == pytest.approx(2)  # the refused request took nothing
    clock.now += 2
    assert take(clock, engine, cost=300).allowed


def test_a_request_larger_than_the_burst_is_refused_without_a_retry_time(clock):
    refused = take(clock, LocalBuckets(max_clients=10), cost=5000)
    assert not refused.allowed and refused.retry_after_s is None
    assert "over this client's burst of 1000" in refused.reason


def test_clients_are_isolated_and_state_is_bounded(clock):
    engine = LocalBuckets(max_clients=100)
    for _ in range(3):
        take(clock, engine, key="busy")
    assert not take(clock, engine, key="busy").allowed
    assert take(clock, engine, key="quiet").allowed
    for i in range(1000):
        take(clock, engine, key=f"flood-{i}")
    assert engine.clients == 100


def test_idle_full_buckets_are_dropped(clock):
    engine = LocalBuckets(max_clients=100)
    take(clock, engine, key="a")
    clock.now += 60
    take(clock, engine, key="b")
    assert engine.clients == 1


def test_quota_headers_follow_openai():
    quota = Quota(False, LIMITS, remaining_requests=0.4, remaining_tokens=250.0, retry_after_s=0.6, reason="x", status=429)
    assert dict(quota.headers()) == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "3s",  # 2.6 s, rounded up
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "250",
        "x-ratelimit-reset-tokens": "8s",
        "retry-after": "1",
    }


def test_limits_default_burst_is_one_minute_and_named_tiers_apply():
    settings = AdmissionSettings(
        enabled=True,
        default_tier=RateTier(requests_per_minute=30, tokens_per_minute=6000),
        tiers={"gold": RateTier(requests_per_minute=600, request_burst=50)},
        clients={"acme": "gold"},
    )
    adm = Admission(settings, "cfg")
    assert adm.limits_for("id:someone") == Limits(30, 0.5, 6000, 100.0)
    assert adm.limits_for("id:acme") == Limits(50, 10.0, 100_000, 100_000 / 60)


def test_client_key_sources_and_no_raw_credentials():
    adm = Admission(AdmissionSettings(enabled=True), "cfg")
    assert adm.client_key({"x-client-id": "team-a"}, None) == "id:team-a"
    key = adm.client_key({"authorization": "Bearer sk-secret-123"}, None)
    assert key.startswith("auth:") and "sk-secret" not in key
    assert adm.client_key({}, {"client_id": "ctx-user"}) == "ctx:ctx-user"
    assert adm.client_key({}, None) == "anonymous"
    assert adm.client_key({"x-client-id": "x" * 500}, None).startswith("id:h:")


def test_the_credential_outranks_a_self_chosen_id_unless_configured_otherwise():
    # A client picks its own header freely: with a credential present, a new id per request
    # must not buy a new bucket.
    headers = {"authorization": "Bearer sk-1", "x-client-id": "fresh-every-time"}
    assert Admission(AdmissionSettings(enabled=True), "cfg").client_key(headers, None).startswith("auth:")
    behind_proxy = AdmissionSettings(enabled=True, client_key={"sources": ["header", "authorization"]})
    assert Admission(behind_proxy, "cfg").client_key(headers, None) == "id:fresh-every-time"


def test_cost_is_prompt_estimate_plus_max_tokens():
    adm = Admission(AdmissionSettings(enabled=True, default_max_tokens=100), "cfg")
    messages = [{"role": "user", "content": "x" * 400}]
    assert adm.cost(messages, 50) == 100 + 4 + 50
    assert adm.cost(messages, "50") == 100 + 4 + 50
    assert adm.cost(messages, None) == 100 + 4 + 100
    parts = [{"role": "user", "content": [{"type": "text", "text": "x" * 400}, {"type": "image_url", "image_url": {"url": "u" * 9000}}]}]
    assert adm.cost(parts, 50) == 100 + 4 + 50


async def test_concurrent_requests_of_one_client_never_exceed_the_burst():
    adm = Admission(AdmissionSettings(enabled=True, default_tier=RateTier(requests_per_minute=3)), "cfg")
    results = await asyncio.gather(*(adm.decide("id:many", 10) for _ in range(200)))
    assert sum(q.allowed for q in results) == 3


def test_unknown_tier_in_clients_is_a_settings_error():
    with pytest.raises(ValueError, match="undefined tiers: silver"):
        AdmissionSettings(clients={"acme": "silver"})


# --- over HTTP -------------------------------------------------------------------------


def limited_configs(root, railstack_admission: str):
    """The copy ``root`` of the packaged configs with no-models' admission replaced. Each test
    serves a copy of its own: its app starts with full buckets."""
    yml = root / "no-models" / "config.yml"
    text = yml.read_text()
    start = text.index("    admission:\n")
    end = text.index("    heuristics:\n")
    yml.write_text(text[:start] + railstack_admission + text[end:])
    return root


SMALL = """    admission:
      enabled: true
      default_tier: {requests_per_minute: 2, tokens_per_minute: 100000}
"""


@pytest.fixture
def limited(configs, serve):
    """No-models with a burst of 2 requests per client."""
    with serve(limited_configs(configs, SMALL)) as client:
        yield client


def post(client, client_id, stream=False, **extra):
    return client.post(
        "/v1/chat/completions",
        json=chat("no-models", "What is the capital of France?", stream=stream, **extra),
        headers={"X-Client-Id": client_id},
    )


@pytest.mark.parametrize("stream", [False, True])
def test_http_429_with_retry_after_and_headers(limited, main_model, stream):
    first = post(limited, "alice", stream)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert int(first.headers["x-ratelimit-remaining-tokens"]) < 100000
    assert post(limited, "alice", stream).status_code == 200
    refused = post(limited, "alice", stream)
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/json"
    assert int(refused.headers["retry-after"]) in range(1, 31)
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"].endswith("s")
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
    assert "Retry after" in error["message"]
    assert main_model.calls == 2


def test_http_clients_are_isolated(limited, main_model):
    for _ in range(2):
        assert post(limited, "alice").status_code == 200
    assert post(limited, "alice").status_code == 429
    assert post(limited, "bob").status_code == 200
    assert main_model.calls == 3


def test_http_max_tokens_counts_at_admission(configs, serve, main_model):
    tokens = "    admission:\n      enabled: true\n      default_tier: {requests_per_minute: 100, tokens_per_minute: 1000}\n"
    with serve(limited_configs(configs, tokens)) as client:
        assert post(client, "carol", max_tokens=600).status_code == 200
        refused = post(client, "carol", max_tokens=600)
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "tokens"
        assert post(client, "erin", max_completion_tokens=900).status_code == 200
        assert post(client, "erin", max_completion_tokens=900).status_code == 429
        too_big = post(client, "dave", max_tokens=5000)
        assert too_big.status_code == 429 and "retry-after" not in too_big.headers
        assert "Request too large" in too_big.json()["error"]["message"]
    assert main_model.calls == 2


def test_http_uses_the_default_config_id_from_the_environment(configs, serve):
    with serve(limited_configs(configs, SMALL), DEFAULT_CONFIG_ID="no-models") as client:
        body = {"model": "main", "messages": [{"role": "user", "content": "Hi"}]}
        codes = [client.post("/v1/chat/completions", json=body, headers={"X-Client-Id": "fay"}).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


async def test_generate_async_refusal_says_when_to_retry(make_config, main_model):
    cfg = make_config(
        "models:\n  - {type: main, engine: openai, model: main, parameters: {base_url: '"
        + main_model.base_url
        + "', api_key: EMPTY}}\nrails:\n  input:\n    flows: [railstack admission]\n"
        "custom_data:\n  railstack:\n    admission: {enabled: true, default_tier: {requests_per_minute: 1}}\n"
    )
    from nemoguardrails import RailsConfig

    app = LLMRails(RailsConfig.from_path(str(cfg)))
    ask = [{"role": "context", "content": {"client_id": "erin"}}, {"role": "user", "content": "hi"}]
    assert (await app.generate_async(messages=ask))["content"] == main_model.reply
    refusal = (await app.generate_async(messages=ask))["content"]
    assert refusal.startswith("Blocked by the admission rail: requests per minute limit reached; retry after ")
    assert main_model.calls == 1


def test_runnable_rails_refuses_over_the_limit(main_model, monkeypatch):
    monkeypatch.setenv("RAILSTACK__ADMISSION__DEFAULT_TIER__REQUESTS_PER_MINUTE", "1")
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(model="main", base_url=main_model.base_url, api_key="EMPTY", max_retries=0)
    guarded = RunnableRails(packaged_config("no-models", "http://127.0.0.1:9/v1")) | model
    first = guarded.invoke("What is the capital of France?")
    assert getattr(first, "content", first) == main_model.reply
    second = guarded.invoke("What is the capital of France?")
    assert "Blocked by the admission rail" in getattr(second, "content", second)
    assert main_model.calls == 1


# --- Redis ---------------------------------------------------------------------------------


class RedisServer:
    def __init__(self):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def stop(self):
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def redis_server():
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (Debian package redis-server; scripts/test.sh installs it)")
    server = RedisServer().start()
    yield server
    if server.proc.poll() is None:
        server.stop()


def redis_settings(url, **extra):
    return AdmissionSettings(
        enabled=True, engine="redis", redis_url=url, default_tier=RateTier(requests_per_minute=3, tokens_per_minute=600), **extra
    )


async def test_redis_engine_enforces_one_limit_for_every_replica(redis_server):
    # Two engines with their own connections stand for two server processes.
    a = Admission(redis_settings(redis_server.url), "cfg")
    b = Admission(a.settings, "cfg")
    b.store = RedisBuckets(redis_server.url, 0.25, "local", "railstack:rl", 100)
    assert b.store is not a.store
    decisions = [await (a if i % 2 else b).decide("id:zoe", 10) for i in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert decisions[2].remaining_requests == pytest.approx(0, abs=0.01)
    assert decisions[3].retry_after_s == pytest.approx(20, abs=0.5)  # 3 per minute
    assert (await a.decide("id:yan", 10)).allowed
    import redis.asyncio as redis

    r = redis.Redis.from_url(redis_server.url)
    keys = sorted(k.decode() for k in await r.keys("railstack:rl:*"))
    assert keys == ["railstack:rl:cfg:id:yan", "railstack:rl:cfg:id:zoe"]
    assert 0 < await r.pttl("railstack:rl:cfg:id:zoe") <= 61_000
    await r.aclose()
    await a.store.close()
    await b.store.close()


async def test_redis_refills_over_time_and_refuses_a_request_over_the_burst(redis_server):
    fast = AdmissionSettings(enabled=True, engine="redis", redis_url=redis_server.url,
                             default_tier=RateTier(requests_per_minute=120, request_burst=2, tokens_per_minute=600))
    adm = Admission(fast, "cfg")
    assert [(await adm.decide("id:ray", 10)).allowed for _ in range(3)] == [True, True, False]
    await asyncio.sleep(0.6)  # two requests per second
    assert (await adm.decide("id:ray", 10)).allowed
    too_big = await adm.decide("id:sam", 601)
    assert not too_big.allowed and too_big.retry_after_s is None
    await adm.store.close()


async def test_redis_many_concurrent_decisions_wait_for_connections_and_keep_the_limit(redis_server):
    adm = Admission(redis_settings(redis_server.url), "cfg")  # burst 3, then one per 20 s
    results = await asyncio.gather(*(adm.decide("id:crowd", 1) for _ in range(150)))
    assert sum(q.allowed for q in results) == 3
    assert adm.store.outages == 0  # more decisions than pooled connections is no outage
    await adm.store.close()


# Under "local" the fallback buckets start full (burst 3), so the fourth decision is refused.
@pytest.mark.parametrize(
    "policy, allowed, status",
    [("local", [True, True, True, False], 200), ("open", [True] * 4, 200), ("closed", [False] * 4, 503)],
)
async def test_redis_outage_follows_the_policy_and_recovers(redis_server, policy, allowed, status, caplog):
    adm = Admission(redis_settings(redis_server.url, redis_outage=policy), "cfg")
    assert (await adm.decide("id:kim", 10)).allowed
    redis_server.stop()
    start = time.perf_counter()
    during = [await adm.decide("id:kim", 10) for _ in range(4)]
    assert time.perf_counter() - start < 2
    assert [d.allowed for d in during] == allowed
    assert during[0].status == status
    assert adm.store.outages == 1 and adm.store.decisions_during_outage == 4
    assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1
    redis_server.start()
    adm.store._down_until = 0  # the next retry is due now rather than in a second
    back = await adm.decide("id:kim", 10)
    assert back.allowed and back.limits is not None
    assert adm.store.outages == 1
    await adm.store.close()


def test_http_redis_killed_mid_test_never_500(configs, serve, main_model, redis_server):
    settings = (
        "    admission:\n      enabled: true\n      engine: redis\n"
        f"      redis_url: {redis_server.url}\n      redis_outage: closed\n"
        "      default_tier: {requests_per_minute: 100}\n"
    )
    with serve(limited_configs(configs, settings)) as client:
        assert post(client, "lee").status_code == 200
        redis_server.stop()
        for stream in (False, True):
            down = post(client, "lee", stream)
            assert down.status_code == 503
            assert down.headers["retry-after"] == "1"
            assert down.json()["error"]["code"] == "rate_limiter_unavailable"
        assert client.get("/v1/rails/configs").status_code == 200
    assert main_model.calls == 1


@pytest.mark.slow
def test_several_server_processes_share_one_redis_limit(configs, tmp_path, main_model, redis_server):
    settings = (
        "    admission:\n      enabled: true\n      engine: redis\n"
        f"      redis_url: {redis_server.url}\n"
        "      default_tier: {requests_per_minute: 1, request_burst: 5}\n"
    )
    root = limited_configs(configs, settings)
    servers = []
    try:
        for _ in range(2):  # side by side: their start-ups, seconds each, overlap
            servers.append(Server(root, cwd=tmp_path, env=server_env(main_model), wait=False))
        for server in servers:
            server.ready()
        codes = []
        for i in range(8):
            res = httpx.post(
                f"{servers[i % 2].url}/v1/chat/completions",
                json=chat("no-models", "What is the capital of France?"),
                headers={"X-Client-Id": "shared"},
                timeout=30,
            )
            codes.append(res.status_code)
        assert codes.count(200) == 5 and codes.count(429) == 3
        assert main_model.calls == 5
        assert json.loads(res.text)["error"]["code"] == "rate_limit_exceeded"
    finally:
        for server in servers:
            server.stop()


def test_redis_url_comes_from_the_environment(monkeypatch):
    from railstack.settings import parse_settings

    monkeypatch.setenv("RAILSTACK__ADMISSION__REDIS_URL", "redis://cache.internal:6380/2")
    settings = parse_settings({"railstack": {"admission": {"enabled": True, "engine": "redis"}}})
    assert settings.admission.redis_url == "redis://cache.internal:6380/2"


async def test_redis_error_replies_follow_the_outage_policy(redis_server):
    import redis.asyncio as redis

    r = redis.Redis.from_url(redis_server.url)
    await r.config_set("maxmemory", 1)  # every write is now refused with an OOM error reply
    adm = Admission(redis_settings(redis_server.url, redis_outage="closed"), "cfg")
    refused = await adm.decide("id:oom", 10)
    assert not refused.allowed and refused.status == 503
    assert adm.store.outages == 1
    await r.aclose()
    await adm.store.close()


@pytest.mark.parametrize("variant", ["Bearer sk-Secret", "bearer sk-Secret", "  BEARER   sk-Secret ", "Bearer\tsk-Secret"])
def test_trivial_variants_of_one_authorization_share_a_client(variant):
    how = AdmissionSettings(enabled=True).client_key
    canonical = client_key(how, {"authorization": "Bearer sk-Secret"}, None)
    assert client_key(how, {"authorization": variant}, None) == canonical
    # The key itself is case-sensitive: another case is another client.
    assert client_key(how, {"authorization": "Bearer SK-SECRET"}, None) != canonical
    assert client_key(how, {"authorization": "   "}, None) == "anonymous"
