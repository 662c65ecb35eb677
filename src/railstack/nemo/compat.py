"""Every NeMo Guardrails internal railstack relies on, in one place (written against 0.24.1).

Public API is used where NeMo has one (``register_action``, ``register_action_param``,
``update_llm``, ``RailOutcome``); the rest are internals that a NeMo release may change. Each is
named here, and ``railstack.nemo.selfcheck`` proves at start-up that they still behave as
railstack assumes, refusing to start otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Optional

from nemoguardrails.actions import action  # noqa: F401 - the decorator of the one railstack action
from nemoguardrails.actions.rail_outcome import RailOutcome, TransformTarget  # noqa: F401

NEMO_VERSION = importlib.metadata.version("nemoguardrails")


class IncompatibleNeMo(RuntimeError):
    """A NeMo internal railstack hooks into does not behave as railstack needs."""

    def __init__(self, hook: str, problem: str):
        super().__init__(
            f"railstack cannot run on nemoguardrails {NEMO_VERSION}: {hook}: {problem}. railstack supports "
            "nemoguardrails 0.24.x; install that version (pip install 'nemoguardrails[server]>=0.24,<0.25')."
        )
        self.hook = hook
        self.problem = problem


# -- parsed Colang 1.0 flows ---------------------------------------------------------------------
# RailsConfig.flows is a list of dicts: {"id", "elements": [{"_type": ..., ...}]}; an action
# element has "action_name" and "action_params", a call of a flow "_type": "flow" and "flow_name",
# a subflow a "meta" element with {"subflow": True}.


def flows_by_id(config: Any) -> dict[str, dict]:
    return {flow.get("id"): flow for flow in config.flows}


def elements(flow: dict) -> Iterator[dict]:
    for element in flow.get("elements", []):
        if isinstance(element, dict):
            yield element


def is_subflow(flow: dict) -> bool:
    return any(e.get("_type") == "meta" and (e.get("meta") or {}).get("subflow") for e in elements(flow))


def user_intents(config: Any) -> list[tuple[str, list[str], Optional[str]]]:
    """Each ``define user`` intent (RailsConfig.user_messages: name -> examples) with the text of the
    bot message of the first flow that starts with it and goes on with ``bot <message>`` (a
    "UserIntent" element then an "utter" action; RailsConfig.bot_messages: name -> texts)."""
    answers: dict[str, Optional[str]] = {}
    for flow in config.flows:
        first, second = (list(elements(flow)) + [{}, {}])[:2]
        if first.get("_type") != "UserIntent" or first.get("intent_name") in answers:
            continue
        said = second.get("action_params", {}).get("value") if second.get("action_name") == "utter" else None
        texts = config.bot_messages.get(said) if isinstance(said, str) else None
        answers[first.get("intent_name")] = texts[0] if texts else None
    return [(name, list(examples), answers.get(name)) for name, examples in (config.user_messages or {}).items()]


def withdraw_user_intents(config: Any, names: list[str]) -> None:
    """Take ``define user`` intents out of NeMo's dialog. Its generation actions copy
    ``config.user_messages`` when ``LLMRails`` builds them, after a config's ``init``; with none
    left, a passthrough turn goes to the main model without an intent-generation call."""
    for name in names:
        config.user_messages.pop(name, None)


# -- Colang 1.0 events ----------------------------------------------------------------------------


# NeMo's events of a conversation, as the OpenAI messages they came from.
_MESSAGES: dict[str, Callable[[dict], list[dict]]] = {
    "UtteranceUserActionFinished": lambda e: [{"role": "user", "content": e.get("final_transcript")}],
    "SystemMessage": lambda e: [{"role": "system", "content": e.get("content")}],
    "UtteranceBotActionFinished": lambda e: [{"role": "assistant", "content": e.get("final_script")}],
    "BotToolCalls": lambda e: [{"role": "assistant", "tool_calls": e.get("tool_calls")}],
    "UserToolMessages": lambda e: [{"role": "tool", **m} for m in e.get("tool_messages") or []],
}


def messages_in_events(events: Optional[list]) -> list[dict]:
    """The conversation in the events NeMo passes an action, as messages (tool results are held
    only when tool input rails are configured)."""
    return [m for event in events or [] for m in _MESSAGES.get(event.get("type"), lambda e: [])(event)]


def bot_intent(events: Optional[list]) -> Optional[str]:
    """The bot intent NeMo is generating a message for (the last ``BotIntent`` event), if any."""
    for event in reversed(events or []):
        if event.get("type") == "BotIntent":
            return event.get("intent")
    return None


# -- streaming -----------------------------------------------------------------------------------


def streaming_handler_active() -> bool:
    """Whether a streaming handler serves the current generation (NeMo's ``streaming_handler_var``)."""
    from nemoguardrails.context import streaming_handler_var

    return streaming_handler_var.get() is not None


def streamed_answer_in_full(events: Optional[list], config: Any) -> bool:
    """Whether an output-rail call is the one NeMo's flows run on the whole answer after streaming
    it (its verdict is discarded; each chunk was checked already). NeMo calls the chunk checks
    directly, without events; the whole-answer check runs through the flows, with them."""
    streaming = getattr(getattr(getattr(config, "rails", None), "output", None), "streaming", None)
    return events is not None and streaming_handler_active() and bool(getattr(streaming, "enabled", False))


def is_streamed_chunk(events: Optional[list], context: Optional[dict]) -> bool:
    """Whether an output-rail call checks a streamed chunk (with NeMo's look-back before it), not a
    whole answer: ``_run_output_rails_in_streaming`` calls the action directly, without events,
    and names the flow in the context it builds (the flows name it too, but pass events)."""
    return events is None and bool((context or {}).get("triggered_output_rail"))


# The error frames NeMo ends a stream with (its server's ``ChunkError`` types): an output rail's
# block, a failed generation.
_STREAM_ENDING_ERRORS = frozenset({"generation_error", "downstream_error", "guardrails_violation"})


def ends_stream(chunk: Any) -> bool:
    """Whether ``chunk`` is the error frame NeMo ends a stream with. Nothing follows it, but
    NeMo's iterator only stops once the stream's generation task has run to its end."""
    body = chunk
    if isinstance(chunk, str):
        if not chunk.startswith('{"error"'):
            return False
        try:
            body = json.loads(chunk)
        except ValueError:
            return False
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and error.get("type") in _STREAM_ENDING_ERRORS


def check_chunks_before_sending(config: Any) -> None:
    """A chunk NeMo streams before its output rails judge it reaches the client even when they block it."""
    config.rails.output.streaming.stream_first = False


def stream_first_set_by_config(config: Any) -> bool:
    return "stream_first" in config.rails.output.streaming.model_fields_set


# -- an LLMRails instance ------------------------------------------------------------------------


def after_model_setup(app: Any, then: Callable[[], None]) -> None:
    """Call ``then`` whenever ``app`` (an LLMRails) has set its main model: NeMo calls a config's
    ``init`` before it builds the models and offers no hook after (its ``_init_llms``), and
    ``RunnableRails(config) | model`` swaps the model in later through ``update_llm``."""

    def wrapped(step: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(step)
        def run(*args: Any, **kwargs: Any) -> None:
            step(*args, **kwargs)
            then()

        return run

    if not callable(getattr(app, "_init_llms", None)):
        raise IncompatibleNeMo("LLMRails._init_llms", "missing: the main model cannot be gated")
    app._init_llms = wrapped(app._init_llms)
    app.update_llm = wrapped(app.update_llm)


def replace_main_model(app: Any, model: Any) -> None:
    """Make ``model`` the main model everywhere NeMo keeps it: the instance, the ``llm`` action
    parameter and the generation actions (made after the models)."""
    app.llm = model
    app.runtime.register_action_param("llm", model)
    generation = getattr(app, "_llm_generation_actions", None)
    if generation is not None:
        generation.llm = model


def wrap_generate(app: Any, around: Callable[[], Any]) -> None:
    """Run each ``generate_async`` call of ``app`` (``stream_async`` makes one too) inside the
    context manager ``around()``."""
    generate = app.generate_async

    @functools.wraps(generate)
    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        with around():
            return await generate(*args, **kwargs)

    app.generate_async = wrapped


def wrap_stream(app: Any, around: Callable[[Callable[[], Any]], Any]) -> None:
    """Give each ``stream_async`` call of ``app`` to ``around`` as the callable that makes NeMo's
    iterator: NeMo starts the stream's generation task in that call (a plain function), so the
    context ``around`` sets while calling it is the task's."""
    stream = app.stream_async

    @functools.wraps(stream)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        return around(lambda: stream(*args, **kwargs))

    app.stream_async = wrapped


def bound_events_history(app: Any, bounded: Callable[[Any], Any]) -> None:
    """Keep ``app``'s per-conversation events (NeMo's ``events_history_cache``: a dict it reads
    with ``in`` and ``[]`` and writes with ``[]=``, keyed by the conversation so far) in
    ``bounded(the dict NeMo had)``. NeMo's server assigns the instance a new dict after building
    it (its ``_get_rails``), after a config's ``init``: the bound is put back before each
    ``generate_async`` (``stream_async`` makes one too) that finds another in its place."""
    kept = getattr(app, "events_history_cache", None)
    if not isinstance(kept, dict):
        raise IncompatibleNeMo(
            "LLMRails.events_history_cache",
            f"a {type(kept).__name__}, not the dict of conversations railstack bounds: memory would grow with every conversation",
        )
    cache = bounded(kept)
    app.events_history_cache = cache
    generate = app.generate_async

    @functools.wraps(generate)
    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        nonlocal cache
        if app.events_history_cache is not cache:
            cache = bounded(app.events_history_cache)
            app.events_history_cache = cache
        return await generate(*args, **kwargs)

    app.generate_async = wrapped


def config_path(app: Any) -> str:
    return (app.config.config_path or "").split(",")[0].strip()


# -- models --------------------------------------------------------------------------------------


def llm_response(content: str) -> Any:
    from nemoguardrails.types import LLMResponse

    return LLMResponse(content=content, finish_reason="stop")


def llm_response_chunk(content: str) -> Any:
    from nemoguardrails.types import LLMResponseChunk

    return LLMResponseChunk(delta_content=content, finish_reason="stop")


def chat_messages(messages: list[dict]) -> list[Any]:
    from nemoguardrails.types import ChatMessage, Role

    return [ChatMessage(role=Role(m["role"]), content=m["content"]) for m in messages]


def chat_endpoint(llm: Any) -> Optional[tuple[Any, str]]:
    """NeMo's OpenAI-compatible chat client under the main model's wrappers (railstack's gate,
    NeMo's instrumentation: ``_inner``/``_model``), and the model name; None for another model."""
    seen = llm
    for _ in range(4):
        client = getattr(seen, "__dict__", {}).get("_client")
        if client is not None and hasattr(client, "chat_completion"):
            return client, seen.model_name
        inner = getattr(seen, "__dict__", {}).get("_inner") or getattr(seen, "__dict__", {}).get("_model")
        if inner is None or isinstance(inner, str):
            return None
        seen = inner
    return None


async def chat_choices(endpoint: tuple[Any, str], messages: list[dict], **params: Any) -> list[str]:
    """The answers of one call of the chat client ``chat_endpoint`` found (``n=`` asks for several)."""
    client, model = endpoint
    response = await client.chat_completion(model, messages, **params)
    return [(c.get("message") or {}).get("content") or "" for c in response.body.get("choices", [])]


@dataclass(frozen=True)
class MainModelFailure:
    """Why a call of the main model failed, from the error NeMo's OpenAI-compatible client raised."""

    kind: Literal["unreachable", "connection_lost", "timeout", "bad_response", "status"]
    message: str  # the main model's own message, or the transport's cause
    status: Optional[int] = None  # the HTTP status the main model answered (kind "status")
    error_type: Optional[str] = None  # the type, code and param of the main model's error body
    code: Optional[str] = None
    param: Optional[str] = None
    retry_after_s: Optional[float] = None


def _cause(exc: BaseException) -> str:
    """``ConnectError: All connection attempts failed``; httpx's timeouts say nothing but their name."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def main_model_failure(exc: BaseException) -> Optional[MainModelFailure]:
    """What went wrong with the main model, when ``exc`` (as the model's ``generate_async`` or
    ``stream_async`` raised it) is a failure of the main model's endpoint; None for any other."""
    import httpx
    from nemoguardrails.exceptions import (
        LLMClientError, LLMConnectionError, LLMRateLimitError, LLMResponseValidationError, LLMTimeoutError,
    )

    cause = exc.__cause__
    if isinstance(exc, LLMTimeoutError):
        return MainModelFailure("timeout", _cause(cause) if cause is not None else exc.error_message)
    if isinstance(exc, LLMConnectionError):
        return MainModelFailure("unreachable", _cause(cause) if cause is not None else exc.error_message)
    if isinstance(exc, LLMResponseValidationError):
        return MainModelFailure("bad_response", exc.error_message)
    if isinstance(exc, LLMClientError) and 400 <= exc.status_code < 600:
        retry_after = exc.retry_after_seconds if isinstance(exc, LLMRateLimitError) else None
        code = exc.error_code if isinstance(exc.error_code, str) else None
        error_type = exc.error_type if isinstance(exc.error_type, str) else None
        param = exc.param if isinstance(exc.param, str) else None
        return MainModelFailure("status", exc.error_message, exc.status_code, error_type, code, param, retry_after)
    # The client lets a connection that breaks off mid-answer through as httpx raised it.
    if isinstance(exc, httpx.TimeoutException):
        return MainModelFailure("timeout", _cause(exc))
    if isinstance(exc, httpx.TransportError):
        return MainModelFailure("connection_lost", _cause(exc))
    return None


def main_model_of(config: Any) -> tuple[str, Optional[str], Optional[str]]:
    """The config's main model as NeMo's server calls it: its name, base URL (``MAIN_MODEL_BASE_URL``
    overrides the configured one, as the server does; None: the provider's own) and API key."""
    main = next((m for m in config.models if m.type == "main"), None)
    parameters = dict(main.parameters or {}) if main is not None else {}
    base_url = os.environ.get("MAIN_MODEL_BASE_URL") or parameters.get("base_url")
    api_key = parameters.get("api_key")
    return (
        main.model if main is not None and main.model else "main",
        base_url if isinstance(base_url, str) and base_url else None,
        api_key if isinstance(api_key, str) else None,
    )


# -- the server ----------------------------------------------------------------------------------


def request_headers() -> dict[str, str]:
    """The current request's headers as NeMo's server keeps them (its ``api_request_headers``);
    none outside the server."""
    api = sys.modules.get("nemoguardrails.server.api")
    headers = api.api_request_headers.get(None) if api is not None else None
    return {k.lower(): v for k, v in headers.items()} if headers is not None else {}


def wrap_asgi_stack(app: Any, wrap: Callable[[Any], Any], ours: tuple[type, ...]) -> None:
    """Put ``wrap(stack)`` in front of the server app's middleware stack. Starlette has built its
    stack by the time the lifespan runs (``add_middleware`` is refused then); the app lives as
    long as the process, so a second start-up replaces railstack's layers rather than nesting."""
    stack = app.middleware_stack or app.build_middleware_stack()  # None until the app's first call
    while isinstance(stack, ours):
        stack = stack.app
    app.middleware_stack = wrap(stack)


class _WarningsAndRailstack(logging.Filter):
    """What a console handler NeMo quieted still shows: warnings, and railstack's audit records."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name == "railstack" or record.name.startswith("railstack.")


def keep_railstack_log() -> None:
    """NeMo's verbose mode (the server builds every config with it) raises each root console
    handler to WARNING: railstack's INFO decision records, rejections and sheds would stop there.
    Such a handler shows them again, and still nothing else below WARNING."""
    from nemoguardrails.logging import verbose

    if not verbose.verbose_mode_enabled:
        return
    for handler in logging.getLogger().handlers:
        quieted = type(handler) is logging.StreamHandler and handler.level == logging.WARNING
        if quieted and not any(isinstance(f, _WarningsAndRailstack) for f in handler.filters):
            handler.setLevel(logging.NOTSET)
            handler.addFilter(_WarningsAndRailstack())


def quiet_verbose_log() -> None:
    """Remove the console handler NeMo's verbose mode adds to the root logger."""
    from nemoguardrails.logging.verbose import VerboseHandler

    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, VerboseHandler)]:
        root.removeHandler(handler)


# -- the pack's flows ----------------------------------------------------------------------------


def parse_colang(name: str, text: str) -> dict:
    """A Colang 1.0 file as NeMo parses it: ``flows``, ``bot_messages``, ``user_messages``."""
    from nemoguardrails.colang import parse_colang_file

    return parse_colang_file(name, text, version="1.0")


def reload_flows(app: Any) -> None:
    """After flows were added to ``app.config``: NeMo's Colang 1.0 runtime indexed the flows when
    the instance was built, before a config's ``init`` runs."""
    init_flow_configs = getattr(app.runtime, "_init_flow_configs", None)
    if not callable(init_flow_configs):
        raise IncompatibleNeMo("RuntimeV1_0._init_flow_configs", "missing: the pack's flows cannot be added")
    init_flow_configs()


# -- serving -------------------------------------------------------------------------------------


def serving_server() -> Optional[Any]:
    """NeMo's server app when this process runs ``nemoguardrails server`` (its module is loaded
    and it was given a config path), else None."""
    api = sys.modules.get("nemoguardrails.server.api")
    app = getattr(api, "app", None)
    return app if app is not None and getattr(app, "rails_config_path", "") else None


class LLMCallLog:
    """The LLM calls NeMo makes for one request, with the token counts the models reported: NeMo
    records them in the ``ExplainInfo`` of its context (``explain_info_var``), and makes one only
    where there is none, so one set for a request collects that request's calls."""

    def __init__(self) -> None:
        from nemoguardrails.logging.explain import ExplainInfo

        self._info = ExplainInfo()

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        from nemoguardrails.context import explain_info_var

        token = explain_info_var.set(self._info)
        try:
            yield
        finally:
            explain_info_var.reset(token)

    def calls(self) -> list[Any]:
        """Each call's ``llm_model_name``, ``prompt_tokens``, ``completion_tokens``, ``total_tokens``."""
        return list(self._info.llm_calls)


# -- embedding providers --------------------------------------------------------------------------
# NeMo builds its indexes (user intents, bot messages, flows, the knowledge base) through the
# provider registered under a config's ``models: [{type: embeddings, engine: ...}]``: the class is
# instantiated as ``cls(embedding_model=<model>, **<parameters>)`` and asked for ``encode_async``
# (and ``encode``) of lists of texts.


def embedding_provider_base() -> type:
    from nemoguardrails.embeddings.providers.base import EmbeddingModel

    return EmbeddingModel


def register_embedding_provider(cls: type, engine: str) -> None:
    from nemoguardrails.embeddings.providers import register_embedding_provider as register

    register(cls, engine)


def embeddings_models(config: Any) -> list[tuple[Optional[str], Optional[str], dict]]:
    """The (engine, model, parameters) of each ``type: embeddings`` model of a config."""
    return [(m.engine, m.model, dict(m.parameters or {})) for m in config.models if m.type == "embeddings"]


def embedding_index_users(config: Any) -> str:
    """What makes NeMo embed with a config's embedding model ("" for nothing): documents in its
    ``kb/`` (indexed as the config loads) or, outside passthrough mode, ``define user`` examples
    (indexed for intent matching at the first turn)."""
    users = ["its kb/ documents"] if config.docs else []
    if config.user_messages and not config.passthrough:
        users.append("its `define user` examples, for intent matching")
    return " and ".join(users)
