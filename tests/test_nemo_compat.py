"""railstack's NeMo self-check: it passes on the installed NeMo, and when NeMo is patched so
that a hook railstack relies on behaves otherwise, loading a railstack config (or starting the
server) refuses with a message that names the hook and the NeMo version."""

import shutil
from contextvars import ContextVar

import pytest
from nemoguardrails import LLMRails, RailsConfig

from railstack.nemo import compat, probe
from railstack.nemo.compat import IncompatibleNeMo
from railstack.nemo.selfcheck import selfcheck
from railstack.paths import config_dir, configs_root
from support import serving


@pytest.fixture(autouse=True)
def fresh_selfcheck():
    selfcheck.reset()
    yield
    selfcheck.reset()


@pytest.fixture
def probes(monkeypatch):
    """How many times the probe LLMRails was built and driven."""
    runs = []
    observe = probe.observe

    async def counted():
        runs.append(1)
        return await observe()

    monkeypatch.setattr(probe, "observe", counted)
    return runs


@pytest.fixture
def server_root(tmp_path):
    """A configs dir for `nemoguardrails server`: the server hook and the no-models config."""
    root = tmp_path / "configs"
    root.mkdir()
    shutil.copy(configs_root() / "config.py", root / "config.py")
    shutil.copytree(config_dir("no-models"), root / "no-models", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def load_railstack_config():
    return LLMRails(RailsConfig.from_path(str(config_dir("no-models"))))


def start_server(root):
    with serving(root):
        pass


def refused(run, hook: str) -> IncompatibleNeMo:
    """The refusal behind what ``run()`` raised (NeMo wraps a config init's error), checked to
    name ``hook`` and the installed NeMo version and to say what to do."""
    with pytest.raises(Exception) as info:
        run()
    exc = info.value
    while exc is not None and not isinstance(exc, IncompatibleNeMo):
        exc = exc.__cause__ or exc.__context__
    assert exc is not None, f"no IncompatibleNeMo behind {info.value!r}"
    message = str(exc)
    assert hook in exc.hook and hook in message, message
    assert f"nemoguardrails {compat.NEMO_VERSION}" in message and "install that version" in message, message
    return exc


def test_the_self_check_passes_on_the_installed_nemo_once_per_process(probes):
    load_railstack_config()
    load_railstack_config()
    assert probes == [1]
    # Its measured cost: one minimal LLMRails (NeMo parses its whole Colang library) and five answers.
    assert 0 < selfcheck.seconds["rails"] < 3


async def test_a_config_loads_inside_a_running_event_loop(probes):
    # As in NeMo's server, which builds a config's LLMRails inside its request handler.
    load_railstack_config()
    assert probes == [1]


def test_chunk_checks_that_look_like_the_whole_answer_recheck_are_refused(monkeypatch, probes):
    """A NeMo that ran each chunk's output rails under the streaming handler and passed them
    events would make railstack pass every streamed chunk unchecked."""
    from nemoguardrails.actions.action_dispatcher import ActionDispatcher
    from nemoguardrails.context import streaming_handler_var
    from nemoguardrails.streaming import StreamingHandler

    execute = ActionDispatcher.execute_action

    async def chunks_with_events(self, action_name, params):
        if "model_name" not in params:  # not a chunk check: those get the flow's model name
            return await execute(self, action_name, params)
        token = streaming_handler_var.set(StreamingHandler())
        try:
            events = [{"type": "BotMessage", "text": params["context"]["bot_message"]}]
            return await execute(self, action_name, {**params, "events": events})
        finally:
            streaming_handler_var.reset(token)

    monkeypatch.setattr(ActionDispatcher, "execute_action", chunks_with_events)
    exc = refused(load_railstack_config, "streaming output rails")
    assert "pass those chunks unchecked" in exc.problem
    assert "events passed: yes, streaming handler active: yes" in exc.problem
    # The refusal is kept: a later config is refused without probing again.
    refused(load_railstack_config, "streaming output rails")
    assert probes == [1]


def test_a_streaming_handler_var_that_nemo_no_longer_sets_is_refused(monkeypatch):
    import nemoguardrails.context

    monkeypatch.setattr(nemoguardrails.context, "streaming_handler_var", ContextVar("moved", default=None))
    exc = refused(load_railstack_config, "streaming output rails")
    assert "re-check of the whole streamed answer is not recognised" in exc.problem
    assert "streaming handler active: no" in exc.problem


def test_models_set_up_around_the_init_llms_railstack_wraps_are_refused(monkeypatch):
    """A NeMo that set its models up without calling the instance's ``_init_llms`` would leave
    the main model ungated: railstack's wrapper never runs."""
    init_llms = LLMRails._init_llms
    monkeypatch.setattr(LLMRails, "_init_llms", property(lambda self: init_llms.__get__(self), lambda self, value: None))
    exc = refused(load_railstack_config, "LLMRails._init_llms")
    assert "ungated" in exc.problem


def test_a_stream_whose_generation_starts_after_the_stream_async_call_is_refused(monkeypatch):
    """A NeMo that started a stream's generation on its first read, not in ``stream_async``,
    would start it outside what railstack sets around that call: a stream dropped by its
    consumer would go on generating."""
    stream_async = LLMRails.stream_async

    def lazy(self, *args, **kwargs):
        async def on_first_read():
            async for chunk in stream_async(self, *args, **kwargs):
                yield chunk

        return on_first_read()

    monkeypatch.setattr(LLMRails, "stream_async", lazy)
    exc = refused(load_railstack_config, "LLMRails.stream_async")
    assert "saw [None, None]" in exc.problem and "keep its main model generating" in exc.problem


def test_a_blocked_stream_that_ends_with_an_error_frame_railstack_does_not_know_is_refused(monkeypatch):
    """A NeMo whose error frame looked otherwise would leave a blocked stream's generation running."""
    monkeypatch.setattr(compat, "_STREAM_ENDING_ERRORS", frozenset({"content_blocked"}))
    exc = refused(load_railstack_config, "the error frame that ends a blocked stream")
    assert "{'stream': False, 'blocked stream': False}" in exc.problem


def test_subflows_marked_otherwise_in_parsed_flows_are_refused(monkeypatch):
    """A NeMo parser that marked a subflow on the flow instead of in a meta element (its
    runtime reads both) would make railstack count the rails of every library subflow that
    no flow calls, and build them all."""
    from nemoguardrails.colang.v1_0.lang import parser

    parse = parser.parse_colang_file

    def subflow_on_the_flow(*args, **kwargs):
        parsed = parse(*args, **kwargs)
        for flow in parsed.get("flows", []):
            for element in flow["elements"]:
                if element.get("_type") == "meta" and element["meta"].pop("subflow", False):
                    flow["is_subflow"] = True
        return parsed

    monkeypatch.setattr(parser, "parse_colang_file", subflow_on_the_flow)
    exc = refused(load_railstack_config, "RailsConfig.flows")
    assert "probe_uncalled" in exc.problem


def test_the_server_starts_after_the_self_check(server_root, probes):
    with serving(server_root) as client:
        assert client.get("/railstack/health").status_code == 200
        assert {"rails", "server"} <= set(selfcheck.seconds)
        # The config's own init, at its first request, does not probe again.
        client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                  "guardrails": {"config_id": "no-models"}})
    assert probes == [1]


def test_a_server_without_the_request_headers_var_refuses_to_start(monkeypatch, server_root):
    from nemoguardrails.server import api

    monkeypatch.delattr(api, "api_request_headers")
    refused(lambda: start_server(server_root), "api_request_headers")


def test_a_server_app_that_skips_its_middleware_stack_refuses_to_start(monkeypatch, server_root):
    from nemoguardrails.server import api

    async def straight_to_the_routes(self, scope, receive, send):
        scope["app"] = self
        await self.router(scope, receive, send)

    monkeypatch.setattr(type(api.app), "__call__", straight_to_the_routes)
    refused(lambda: start_server(server_root), "middleware_stack")


def test_a_conversation_cache_that_is_not_a_dict_is_refused(monkeypatch):
    monkeypatch.setattr(LLMRails, "events_history_cache", property(lambda self: None, lambda self, value: None), raising=False)
    exc = refused(load_railstack_config, "LLMRails.events_history_cache")
    assert "a NoneType, not the dict" in exc.problem


def test_conversations_kept_where_railstack_does_not_bound_them_are_refused(monkeypatch):
    """A NeMo whose instances ignored the cache railstack puts in place (kept their conversations
    in one of their own) would grow with every conversation again."""
    monkeypatch.setattr(LLMRails, "events_history_cache", property(lambda self: {}, lambda self, value: None), raising=False)
    exc = refused(load_railstack_config, "LLMRails.events_history_cache")
    assert "no longer keeps a conversation's events in the cache railstack bounds" in exc.problem


def test_a_cache_nemo_swaps_for_a_dict_of_its_own_is_refused(monkeypatch):
    """A NeMo that copied the cache into a new dict at each turn would leave railstack's bound behind."""
    generate = LLMRails.generate_async

    async def copying(self, *args, **kwargs):
        answer = await generate(self, *args, **kwargs)
        self.events_history_cache = dict(self.events_history_cache)
        return answer

    monkeypatch.setattr(LLMRails, "generate_async", copying)
    exc = refused(load_railstack_config, "LLMRails.events_history_cache")
    assert "(dict), not at most the 1 railstack allows" in exc.problem
