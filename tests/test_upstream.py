"""Faults of the main model, seen from outside (``railstack.http.upstream``): down, hanging,
answering 4xx/5xx, breaking its stream off. Each answer has the gateway's status and an OpenAI
error body that names the main model, comes well before the main model's own 60 s timeout,
shows at /railstack/health as the main model's failure, and leaves no backpressure slot and no
generation at the main model behind."""

import logging
import time

import openai
import pytest

from support import WARM_UP, chat, free_port, rail_flow, railstack_config, serving, sse_events, streamed_text

DEADLINE_S = 1.5  # the test config's limits.request_timeout_s; its main model's timeout is 60 s
CONFIG = "faulty"


def faulty_root(path, base_url):
    root = path / "configs"
    railstack_config(root / CONFIG, base_url, ["railstack heuristics"], railstack=f"{{limits: {{request_timeout_s: {DEADLINE_S}}}}}")
    (root / "config.py").write_text("from railstack.http.install import init  # noqa: F401\n")
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return faulty_root(tmp_path_factory.mktemp("upstream"), "http://127.0.0.1:1/v1")  # MAIN_MODEL_BASE_URL wins


@pytest.fixture
def client(serve, root):
    with serve(root, warm=[CONFIG]) as c:
        yield c


def left_behind(model=None) -> tuple[int, int]:
    """The slots of the served config's main stage in use and the generations still running at
    the loopback ``model`` (None: no model listens), once the request's last layer has unwound
    and the model has seen its connection end. The stage is the one the served app's
    backpressure layer holds: the registry is reset around each test, the app kept up."""
    from nemoguardrails.server import api

    from railstack.http.backpressure import BackpressureMiddleware

    layer = api.app.middleware_stack
    while not isinstance(layer, BackpressureMiddleware):
        layer = layer.app
    stage = layer.stages[CONFIG]
    deadline = time.monotonic() + 5
    while True:
        counts = stage.in_flight, model.active if model is not None else 0
        if counts == (0, 0) or time.monotonic() > deadline:
            return counts
        time.sleep(0.02)


def main_model_health(client) -> str:
    return client.get("/railstack/health").json()["dependencies"]["main_model"][CONFIG]["status"]


def ask(client, stream: bool):
    start = time.monotonic()
    if not stream:
        res = client.post("/v1/chat/completions", json=chat(CONFIG, "What is the capital of France?"))
    else:
        with client.stream("POST", "/v1/chat/completions", json=chat(CONFIG, "What is the capital of France?", stream=True)) as res:
            res.read()
    return res, time.monotonic() - start


def error_of(res, status: int, error_type: str, code: str) -> str:
    assert res.status_code == status, res.text
    assert res.headers["content-type"].startswith("application/json")
    error = res.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert (error["type"], error["code"]) == (error_type, code)
    return error["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_hanging_main_model_gets_504_at_the_request_deadline_and_frees_its_slot(client, main_model, stream):
    main_model.latency_s = 600
    res, took = ask(client, stream)
    message = error_of(res, 504, "gateway_timeout", "request_timeout")
    assert message == (f"The request did not finish within its deadline of {DEADLINE_S:g} s (limits.request_timeout_s); "
                       f"it had reached the main model 'main' at 127.0.0.1:{main_model.port}.")
    assert DEADLINE_S <= took < 15  # NeMo alone: 60 s per try
    # The main-model call was cancelled: its connection closed, which the model saw.
    assert left_behind(main_model) == (0, 0)
    assert main_model.abandoned == 1
    assert main_model_health(client) == "degraded"  # a model that hangs is no healthy one


def test_a_stream_that_outlives_the_deadline_ends_with_an_error_event(client, main_model):
    main_model.reply, main_model.token_delay_s = " ".join(["word"] * 40), 0.1  # about 4 s of tokens
    res, took = ask(client, stream=True)
    assert res.status_code == 200 and took < 15
    events = sse_events(res)
    assert streamed_text(res, errors=True).startswith("word word")  # what came before the deadline
    assert events[-1]["error"]["code"] == "request_timeout" and events[-1]["error"]["type"] == "gateway_timeout"
    assert res.text.rstrip().endswith("data: [DONE]")
    assert left_behind(main_model) == (0, 0)
    assert main_model.abandoned == 1  # the rest of the answer was not generated for nobody
    assert main_model_health(client) == "degraded"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("upstream, status, error_type, code, health", [
    (400, 400, "test_error", "test_fault", "healthy"),  # the request's fault: the model answered it
    (429, 429, "test_error", "test_fault", "degraded"),
    (500, 502, "bad_gateway", "main_model_error", "degraded"),
    (503, 502, "bad_gateway", "main_model_error", "degraded"),
])
def test_a_main_model_error_status_is_passed_on_as_a_gateway_would(client, main_model, stream, upstream, status, error_type,
                                                                    code, health):
    main_model.fail_status = upstream
    res, took = ask(client, stream)
    message = error_of(res, status, error_type, code)
    assert message == (f"The main model 'main' at 127.0.0.1:{main_model.port} answered HTTP {upstream}: "
                       "the model is not feeling well")
    assert took < 15 and left_behind(main_model) == (0, 0)
    assert main_model_health(client) == health


@pytest.mark.parametrize("stream", [False, True])
def test_a_main_models_429_keeps_its_retry_after(client, main_model, stream):
    # A client that retries at once would only add to the load of a model that said when to come back.
    main_model.fail_status, main_model.retry_after = 429, "7"
    res, _ = ask(client, stream)
    error_of(res, 429, "test_error", "test_fault")
    assert res.headers["retry-after"] == "7"
    assert left_behind(main_model) == (0, 0)


def test_a_main_model_404_says_it_is_the_main_models_not_railstacks(client, main_model):
    main_model.fail_status, main_model.fail_message = 404, "Not Found"
    res, _ = ask(client, stream=False)
    message = error_of(res, 404, "test_error", "test_fault")
    assert message.startswith(f"The main model 'main' at 127.0.0.1:{main_model.port} answered HTTP 404: Not Found")
    assert "ends in /v1" in message


def test_a_stream_the_main_model_breaks_off_ends_with_a_502_error_event(client, main_model):
    main_model.drop = True
    res, took = ask(client, stream=True)
    assert res.status_code == 200 and took < 15
    assert streamed_text(res, errors=True) == "Partial"
    error = sse_events(res)[-1]["error"]
    assert (error["type"], error["code"]) == ("bad_gateway", "main_model_connection_lost")
    assert error["message"].startswith(f"The main model 'main' at 127.0.0.1:{main_model.port} broke off its answer: ")
    assert left_behind(main_model) == (0, 0)
    assert main_model_health(client) == "degraded"


# (Streamed, NeMo's client reads no event from a web page and ends the stream empty: no error to say.)
@pytest.mark.parametrize("fault, code, says, health", [
    ("drop", "main_model_connection_lost", "broke off its answer: ", "degraded"),
    ("not_openai", "main_model_bad_response", "sent an answer that is not OpenAI's chat format: ", None),
])
def test_an_answer_that_is_broken_off_or_no_openai_answer_gets_502(client, main_model, fault, code, says, health):
    setattr(main_model, fault, True)
    res, took = ask(client, stream=False)
    message = error_of(res, 502, "bad_gateway", code)
    assert message.startswith(f"The main model 'main' at 127.0.0.1:{main_model.port} {says}")
    assert took < 15 and left_behind(main_model) == (0, 0)
    if health is not None:
        assert main_model_health(client) == health


def test_the_main_models_own_timeout_gets_504(tmp_path, monkeypatch, main_model):
    monkeypatch.setenv("MAIN_MODEL_BASE_URL", main_model.base_url)
    root = faulty_root(tmp_path, "http://unused/v1")
    yml = root / CONFIG / "config.yml"  # its client gives up after 0.5 s, well before the deadline of 30 s
    yml.write_text(yml.read_text().replace("timeout: 60", "timeout: 0.5").replace("request_timeout_s: 1.5", "request_timeout_s: 30"))
    main_model.latency_s = 600
    with serving(root) as client:
        res, took = ask(client, stream=False)
        assert left_behind(main_model) == (0, 0)
        assert main_model_health(client) == "degraded"
    message = error_of(res, 504, "gateway_timeout", "main_model_timeout")
    assert message == f"The main model 'main' at 127.0.0.1:{main_model.port} did not answer in time: ReadTimeout."
    assert took < 15


@pytest.mark.parametrize("stream", [False, True])
def test_a_main_model_that_is_down_gets_502_naming_its_host_and_the_cause(tmp_path, monkeypatch, stream, caplog):
    port = free_port()  # nothing listens there
    monkeypatch.setenv("MAIN_MODEL_BASE_URL", f"http://127.0.0.1:{port}/v1")
    with caplog.at_level(logging.WARNING, logger="railstack"), serving(faulty_root(tmp_path, "http://unused/v1")) as client:
        started = [r.getMessage() for r in caplog.records]
        res, took = ask(client, stream)
        assert left_behind() == (0, 0)
        assert main_model_health(client) == "degraded"
    message = error_of(res, 502, "bad_gateway", "main_model_unreachable")
    assert message == f"The main model 'main' at 127.0.0.1:{port} is unreachable: ConnectError: All connection attempts failed"
    assert took < 15
    # The start-up probe said so once, before any request.
    probe = [m for m in started if m.startswith(f"main model of config(s) {CONFIG} at http://127.0.0.1:{port}/v1: ")]
    assert len(probe) == 1 and "ConnectError" in probe[0]


def test_the_startup_probe_says_to_add_v1_to_a_base_url_without_it(tmp_path, monkeypatch, main_model, caplog):
    without_v1 = main_model.base_url.removesuffix("/v1")
    monkeypatch.setenv("MAIN_MODEL_BASE_URL", without_v1)
    with caplog.at_level(logging.WARNING, logger="railstack"), serving(faulty_root(tmp_path, "http://unused/v1")) as client:
        res, _ = ask(client, stream=False)
    # The main model's 404 (NeMo posts to {base_url}/chat/completions), not one of railstack's routes.
    message = error_of(res, 404, "not_found_error", "main_model_rejected")
    assert message.startswith(f"The main model 'main' at 127.0.0.1:{main_model.port} answered HTTP 404: Not Found (")
    assert main_model.calls == 0
    probe = [r.getMessage() for r in caplog.records if r.getMessage().startswith("main model of config(s)")]
    assert probe == [
        f"main model of config(s) {CONFIG} at {without_v1}: GET {without_v1}/models answered HTTP 404: it does not look "
        "OpenAI-compatible; an OpenAI-compatible base_url ends in /v1: add /v1 to it. "
        "Requests to it will fail (502/504) until it answers."
    ]


def test_a_healthy_main_model_gets_no_startup_warning(tmp_path, monkeypatch, main_model, caplog):
    monkeypatch.setenv("MAIN_MODEL_BASE_URL", main_model.base_url)
    with caplog.at_level(logging.WARNING, logger="railstack"), serving(faulty_root(tmp_path, "http://unused/v1")) as client:
        res, _ = ask(client, stream=False)
    assert res.status_code == 200
    assert not [r for r in caplog.records if r.getMessage().startswith("main model of config(s)")]


# --- what the openai SDK sees ---------------------------------------------------------------


@pytest.mark.parametrize("fault, status, code, says", [
    ("hang", 504, "request_timeout", "did not finish within its deadline of 1.5 s"),
    ("500", 502, "main_model_error", "answered HTTP 500: the model is not feeling well"),
    ("401", 401, "test_fault", "answered HTTP 401: the model is not feeling well"),
])
def test_the_openai_sdk_raises_an_api_status_error_with_the_status_and_message(client, main_model, fault, status, code, says):
    if fault == "hang":
        main_model.latency_s = 600
    else:
        main_model.fail_status = int(fault)
    # The test client is an httpx client: the SDK talks to the in-process server through it.
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="x", max_retries=0, http_client=client)
    start = time.monotonic()
    with pytest.raises(openai.APIStatusError) as err:
        sdk.chat.completions.create(model="main", messages=[{"role": "user", "content": "Hello"}],
                                    extra_body={"guardrails": {"config_id": CONFIG}})
    assert time.monotonic() - start < 15
    assert err.value.status_code == status and err.value.code == code
    assert f"'main' at 127.0.0.1:{main_model.port}" in err.value.message and says in err.value.message
    assert left_behind(main_model) == (0, 0)


def test_a_stream_the_main_model_breaks_off_raises_an_api_error_in_the_sdk(client, main_model):
    main_model.drop = True
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="x", max_retries=0, http_client=client)
    got = []
    with pytest.raises(openai.APIError) as err:
        for chunk in sdk.chat.completions.create(model="main", messages=[{"role": "user", "content": "Hello"}], stream=True,
                                                 extra_body={"guardrails": {"config_id": CONFIG}}):
            got.append(chunk.choices[0].delta.content if chunk.choices else None)
    assert got[0] == "Partial"
    assert err.value.message.startswith(f"The main model 'main' at 127.0.0.1:{main_model.port} broke off its answer")


# --- a model rail whose model fails --------------------------------------------------------


@pytest.fixture(scope="module")
def guarded_root(tmp_path_factory, loopback):
    from tiny_models import prompt_guard

    base = tmp_path_factory.mktemp("pg-fails")
    checkpoint = prompt_guard(base / "pg2", version=2)
    root = base / "configs"
    railstack_config(root / "pg", loopback.base_url, ["railstack heuristics", "railstack prompt guard"],
                     f'{{prompt_guard: {{model: "{checkpoint}", device: cpu, precision: fp32}}}}')
    (root / "config.py").write_text("from railstack.http.install import init  # noqa: F401\n")
    return root


@pytest.mark.parametrize("stream", [False, True])
def test_a_model_rail_whose_model_raises_blocks_naming_the_rail(guarded_root, main_model, monkeypatch, stream):
    from railstack.core import runtimes

    monkeypatch.setenv("MAIN_MODEL_BASE_URL", main_model.base_url)
    # An app of the test's own: the engine's stage and health window are in this test's registries.
    with serving(guarded_root) as client:
        assert client.post("/v1/checks", json=chat("pg", WARM_UP)).status_code == 200
        (runtime,) = runtimes._runtimes.values()

        def broken(batch):
            raise RuntimeError("CUDA error: out of memory")

        # The engine's own forward pass raises, where its stage judges its calls.
        monkeypatch.setattr(runtime.resources["prompt_guard"].batcher, "forward", broken)
        start = time.monotonic()
        res = client.post("/v1/chat/completions", json=chat("pg", "What is the capital of France?", stream=stream))
        took = time.monotonic() - start
        health = client.get("/railstack/health").json()
    assert res.status_code == 200 and took < 15
    assert "Blocked by the prompt_guard rail: the check raised RuntimeError (fail-closed)" in res.text
    assert res.headers["x-railstack-decisions"] == "heuristics=allow,prompt_guard=block"
    ((name, engine),) = health["dependencies"]["engine"].items()
    assert (engine["status"], engine["failures"], engine["last_error"]) == (
        "degraded", 1, "RuntimeError: CUDA error: out of memory")
    assert {stage: state["in_flight"] for stage, state in health["stages"].items()} == {f"engine/{name}": 0, "pg/main": 0}
    assert main_model.calls == 0


def test_a_model_that_cannot_load_stops_the_server_even_where_the_config_has_rails_of_its_own(tmp_path, main_model):
    # The config's own rail ("mine", of its actions) is unknown when the server starts; the pack's
    # model rail still loads then, instead of failing the config's first request with a bare 500.
    root = tmp_path / "configs"
    config = railstack_config(root / "mixed", main_model.base_url, ["railstack heuristics", "railstack prompt guard"],
                              f'{{prompt_guard: {{model: "{tmp_path / "not-downloaded"}"}}}}', output=["mine output"])
    (config / "flows.co").write_text(rail_flow("mine", "mine output"))
    (root / "config.py").write_text("from railstack.http.install import init  # noqa: F401\n")
    with pytest.raises(RuntimeError, match="prompt_guard: cannot load model '.*not-downloaded'"):
        with serving(root):
            pass


@pytest.mark.parametrize("value", [0, -1, "soon"])
def test_a_bad_request_timeout_is_a_startup_error_naming_the_key(value):
    from railstack.settings import SettingsError, parse_settings

    with pytest.raises(SettingsError, match=r"custom_data\.railstack\.limits\.request_timeout_s: "):
        parse_settings({"railstack": {"limits": {"request_timeout_s": value}}})
