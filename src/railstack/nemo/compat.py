"""Every NeMo Guardrails internal railstack relies on, in one place (written against 0.24.1).

Public API is used where NeMo has one (``register_action``, ``register_action_param``,
``update_llm``, ``RailOutcome``); the rest are internals that a NeMo release may change. Each is
named here, and ``railstack.nemo.selfcheck`` proves at start-up that they still behave as
railstack assumes, refusing to start otherwise.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import dataclasses
import functools
import importlib.metadata
import inspect
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


def flows_by_id(config: Any) -> dict[str, Any]:
    if is_colang2(config):
        return {flow.name: flow for flow in config.flows}
    return {flow.get("id"): flow for flow in config.flows}


def elements(flow: Any) -> Iterator[dict]:
    """A flow's elements; a Colang 2.x flow's calls of actions and flows in the shapes of 1.0's."""
    if not isinstance(flow, dict):
        yield from _calls_v2(flow)
        return
    for element in flow.get("elements", []):
        if isinstance(element, dict):
            yield element


def is_subflow(flow: Any) -> bool:
    """A flow that runs only when another calls it. Under Colang 2.x NeMo starts ``main`` (and
    the rails flows, below) itself; every other flow is started by one of them."""
    if not isinstance(flow, dict):
        return flow.name != "main"
    return any(e.get("_type") == "meta" and (e.get("meta") or {}).get("subflow") for e in elements(flow))


# -- parsed Colang 2.x flows ---------------------------------------------------------------------
# Under ``colang_version: "2.x"`` RailsConfig.flows holds ``colang_ast.Flow`` objects (``name``,
# ``elements``: statements that nest in if/when/while branches). An action is called by a
# ``Spec`` of type ``action`` named in CamelCase (``RailstackRailsAction`` for
# ``railstack_rails``), its ``arguments`` the Colang expressions (``'"heuristics"'``,
# ``'$input_text'``); another flow by a ``Spec`` of type ``flow``. NeMo's ``guardrails`` library
# runs two flows a config defines: ``input rails $input_text`` and ``output rails $output_text``.

RAIL_FLOWS_V2 = {"input": "input rails", "output": "output rails"}


def is_colang2(config: Any) -> bool:
    return getattr(config, "colang_version", "1.0") == "2.x"


def rail_flows(config: Any, section: str) -> list[str]:
    """The flows NeMo runs as a config's ``section`` rails (input, output, retrieval, tool_input...)."""
    if is_colang2(config):
        return [RAIL_FLOWS_V2[section]] if section in RAIL_FLOWS_V2 else []
    return list(getattr(getattr(config.rails, section, None), "flows", None) or [])


def rails_lists_v2(config: Any) -> list[str]:
    """The ``rails.<section>.flows`` lists a Colang 2.x config sets. NeMo 0.24 (deprecated) makes
    the input and output lists an ``input rails``/``output rails`` flow that calls each flow
    with no argument, and runs none of the others."""
    if not is_colang2(config):
        return []
    return [f"rails.{section}.flows" for section in ("input", "output", "retrieval", "tool_input", "tool_output")
            if getattr(getattr(config.rails, section, None), "flows", None)]


def _specs(node: Any) -> Iterator[Any]:
    from nemoguardrails.colang.v2_x.lang.colang_ast import Spec

    todo = [node]
    while todo:
        item = todo.pop()
        if isinstance(item, Spec):
            yield item
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            todo += [getattr(item, f.name) for f in dataclasses.fields(item)]
        elif isinstance(item, (list, tuple)):
            todo += list(item)
        elif isinstance(item, dict):
            todo += list(item.values())


def _literal(expression: Any) -> Any:
    """A Colang 2.x argument's value when it is a string literal; None for any other expression
    (a variable, a computation: known only when the flow runs)."""
    try:
        value = ast.literal_eval(expression) if isinstance(expression, str) else None
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, str) else None


def _calls_v2(flow: Any) -> Iterator[dict]:
    from nemoguardrails.colang.v2_x.lang.colang_ast import SpecType
    from nemoguardrails.utils import camelcase_to_snakecase

    for spec in _specs(flow.elements):
        if spec.spec_type == SpecType.FLOW:
            yield {"_type": "flow", "flow_name": spec.name}
        elif spec.spec_type == SpecType.ACTION and spec.name.endswith("Action"):
            # As NeMo's dispatcher names it (``_normalize_action_name``).
            name = camelcase_to_snakecase(spec.name[: -len("Action")])
            params = {k: _literal(v) for k, v in (spec.arguments or {}).items()}
            yield {"_type": "run_action", "action_name": name, "action_params": params}


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


def action_calls_main_model(app: Any, name: str) -> bool:
    """Whether ``app``'s action ``name`` is handed the main model: NeMo injects it into an action
    whose signature names ``llm`` or ``llms`` (a self-check, an LLM-served Llama Guard...),
    unless the config has a model of the action's own type, which it gets instead."""
    fn = app.runtime.action_dispatcher.registered_actions.get(name)
    if fn is None or not (inspect.isfunction(fn) or inspect.ismethod(fn)):
        return False
    parameters = inspect.signature(fn).parameters
    own_model = f"{name}_llm" in app.runtime.registered_action_params
    return ("llm" in parameters or "llms" in parameters) and not own_model


_activated: contextvars.ContextVar[Optional[list]] = contextvars.ContextVar("railstack_activated_rails", default=None)


def keep_activated_rails(app: Any) -> None:
    """Let ``check_with_activated_rails`` see the rails NeMo ran: ``check_async`` asks its
    ``generate_async`` for their log, but returns only the verdict."""
    generate = app.generate_async

    @functools.wraps(generate)
    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        response = await generate(*args, **kwargs)
        kept = _activated.get()
        if kept is None:
            return response
        log = getattr(response, "log", None)
        if log is None or log.activated_rails is None:
            # Without it every stage would read as one where no rail ran.
            raise IncompatibleNeMo("GenerationResponse.log.activated_rails", "check_async's answer holds no activated rails")
        kept += [(r.type, r.name, [a.action_name for a in r.executed_actions]) for r in log.activated_rails]
        return response

    app.generate_async = wrapped


async def check_with_activated_rails(app: Any, messages: list[dict], rail_type: Any) -> tuple[Any, list[tuple]]:
    """``app.check_async`` on one rail type, and the rails NeMo ran for it: ``(type, flow name,
    [the actions it executed])`` each. ``keep_activated_rails(app)`` must have been called."""
    token = _activated.set([])
    try:
        result = await app.check_async(messages, rail_types=[rail_type])
        return result, _activated.get()
    finally:
        _activated.reset(token)


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


def _client_pool() -> dict:
    """NeMo's pool of OpenAI-compatible clients (``DefaultFramework._clients``): one per base URL
    and settings for the whole process, each bound to the event loop that first used it."""
    from nemoguardrails.llm.frameworks import get_default_framework, get_framework

    pool = getattr(get_framework(get_default_framework()), "_clients", None)
    if not isinstance(pool, dict):
        raise IncompatibleNeMo("DefaultFramework._clients", "not the pool of model clients railstack check closes")
    return pool


def pooled_model_clients() -> set:
    """The keys of the model clients NeMo has pooled so far (for ``close_model_clients_since``)."""
    return set(_client_pool())


async def close_model_clients_since(before: set) -> None:
    """Close, on the loop they were used on, the clients NeMo pooled since ``pooled_model_clients``
    gave ``before``, and drop them from its pool: a later caller of the same URL on another loop
    (a second ``railstack check`` run in one process) would get one bound to a closed loop."""
    pool = _client_pool()
    for key in [k for k in pool if k not in before]:
        await pool.pop(key).close()


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


def parse_colang(name: str, text: str, version: str = "1.0") -> dict:
    """A Colang file as NeMo parses it: ``flows`` (1.0: also ``bot_messages``, ``user_messages``)."""
    from nemoguardrails.colang import parse_colang_file

    return parse_colang_file(name, text, version=version)


def flow_id(flow: Any) -> Optional[str]:
    return flow.get("id") if isinstance(flow, dict) else flow.name


def reload_flows(app: Any) -> None:
    """After flows were added to ``app.config``: NeMo's Colang 1.0 runtime indexed the flows when
    the instance was built, before a config's ``init`` runs."""
    init_flow_configs = getattr(app.runtime, "_init_flow_configs", None)
    if not callable(init_flow_configs):
        raise IncompatibleNeMo("RuntimeV1_0._init_flow_configs", "missing: the pack's flows cannot be added")
    init_flow_configs()


def stream_answers_when_checked(app: Any) -> None:
    """Colang 2.x. NeMo 0.24 hands a stream's handler to the main model's call
    (``PassthroughLLMAction``), so its tokens reach the client as they come, and runs the
    ``output rails`` flow on the whole answer only afterwards: a blocked answer would have been
    sent already, and the refusal never is. Its streaming output rails (``rails.output.streaming``)
    read Colang 1.0 flows only. So a 2.x generation with a handler runs without it, and the
    handler gets the turn's answer, or refusal, once the rails have said it, as one chunk. An
    external ``generator`` (``stream_async(generator=...)``) no rail would read is refused."""
    from nemoguardrails.exceptions import StreamingNotSupportedError
    from nemoguardrails.streaming import END_OF_STREAM

    generate, stream = app.generate_async, app.stream_async

    @functools.wraps(generate)
    async def generate_then_send(*args: Any, streaming_handler: Any = None, **kwargs: Any) -> Any:
        response = await generate(*args, **kwargs)
        if streaming_handler is not None:
            await streaming_handler.push_chunk(answer_text(response))
            await streaming_handler.push_chunk(END_OF_STREAM)
        return response

    @functools.wraps(stream)
    def stream_checked(*args: Any, **kwargs: Any) -> Any:
        if inspect.signature(stream).bind(*args, **kwargs).arguments.get("generator") is not None:
            raise StreamingNotSupportedError(
                "railstack: under colang_version 2.x NeMo Guardrails 0.24 runs no output rail on the chunks of "
                "stream_async(generator=...); stream without a generator (its answer is sent once the output rails "
                "passed it) or use a Colang 1.0 config with rails.output.streaming."
            )
        return stream(*args, **kwargs)

    app.generate_async, app.stream_async = generate_then_send, stream_checked


def answer_text(response: Any) -> str:
    """The bot's text in what ``generate_async`` returned: a message dict, a string (for a
    prompt), or a ``GenerationResponse`` holding either."""
    response = getattr(response, "response", response)
    if isinstance(response, list):
        response = response[-1] if response else {}
    if isinstance(response, dict):
        response = response.get("content")
    return response if isinstance(response, str) else ""


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


# -- tracing -------------------------------------------------------------------------------------
# With ``tracing: {enabled: true, adapters: [{name: OpenTelemetry}]}`` NeMo builds its log
# adapters in ``LLMRails.__init__`` (``app._log_adapters``) and, at the end of each
# ``generate_async`` (streams included), turns the generation log into spans: the
# ``OpenTelemetryAdapter`` calls ``_create_span(span_data, parent_context, spans, base_time_ns)``
# once per span, parents first, the request span first (``parent_id`` None, parented under the
# current OpenTelemetry context), and keeps each ended span in ``spans[span_data.span_id]``.


def traces_with_opentelemetry(config: Any) -> bool:
    tracing = getattr(config, "tracing", None)
    if tracing is None or not tracing.enabled:
        return False
    return any(adapter.name == "OpenTelemetry" for adapter in tracing.adapters or [])


def on_request_span(app: Any, then: Callable[[Any], None]) -> bool:
    """Call ``then(span)`` with NeMo's request span each time ``app``'s OpenTelemetry adapter
    exports one (in the task of the ``generate_async`` call it traces). False where the config
    does not trace with OpenTelemetry."""
    if not traces_with_opentelemetry(app.config):
        return False
    init_llms = getattr(app, "_init_llms", None)
    if not callable(init_llms):
        raise IncompatibleNeMo("LLMRails._init_llms", "missing: railstack's decisions cannot join NeMo's spans")

    # NeMo builds its adapters after a config's init and before it sets up the models.
    @functools.wraps(init_llms)
    def run(*args: Any, **kwargs: Any) -> Any:
        _hook_request_span(app, then)
        return init_llms(*args, **kwargs)

    app._init_llms = run
    return True


def _hook_request_span(app: Any, then: Callable[[Any], None]) -> None:
    from nemoguardrails.tracing.adapters.opentelemetry import OpenTelemetryAdapter

    hook = "LLMRails._log_adapters (OpenTelemetryAdapter._create_span)"
    adapters = [a for a in getattr(app, "_log_adapters", None) or [] if isinstance(a, OpenTelemetryAdapter)]
    if not adapters:
        raise IncompatibleNeMo(hook, "a config with the OpenTelemetry tracing adapter has no such adapter on its LLMRails")
    for adapter in adapters:
        create = getattr(adapter, "_create_span", None)
        if create is None:
            raise IncompatibleNeMo(hook, "the OpenTelemetry adapter no longer makes its spans one at a time")

        @functools.wraps(create)
        def creating(span_data: Any, parent_context: Any, spans: dict, base_time_ns: int, _create: Callable = create) -> Any:
            made = _create(span_data, parent_context, spans, base_time_ns)
            if span_data.parent_id is None and span_data.span_id in spans:
                then(spans[span_data.span_id])
            return made

        adapter._create_span = creating


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


# -- Guardrails AI (library/guardrails_ai) -------------------------------------------------------
# NeMo looks a validator name up in its VALIDATOR_REGISTRY (by name or hub path), and any other
# name through the Guardrails Hub, where a failed lookup is sys.exit(1) inside guardrails. Its
# actions build one Guard per (name, parameters) with _get_guard and keep it.


def guardrails_ai_validators(config: Any) -> list[Any]:
    """The validators under ``rails.config.guardrails_ai`` (name, parameters, metadata)."""
    section = getattr(config.rails.config, "guardrails_ai", None)
    return list(section.validators) if section is not None else []


def guardrails_ai_known(name: str) -> Optional[dict]:
    """NeMo's own registry entry for ``name``, without ever asking the Hub."""
    from nemoguardrails.library.guardrails_ai.registry import VALIDATOR_REGISTRY

    return VALIDATOR_REGISTRY.get(name) or next(
        (info for info in VALIDATOR_REGISTRY.values() if info["hub_path"] == f"hub://{name}"), None
    )


def guardrails_ai_register(name: str, module: str, cls: str) -> None:
    """Make NeMo resolve ``name`` to an installed class, so that it never reaches the Hub lookup."""
    from nemoguardrails.library.guardrails_ai.registry import VALIDATOR_REGISTRY

    VALIDATOR_REGISTRY[name] = {"module": module, "class": cls, "hub_path": f"hub://{name}", "default_params": {}}


def guardrails_ai_guard(name: str, parameters: dict, metadata: dict) -> Any:
    """Build (and keep, as NeMo's action will find it) the Guard NeMo runs for this validator."""
    from nemoguardrails.library.guardrails_ai.actions import _get_guard

    # As validate_guardrails_ai does: parameters and metadata together, Nones dropped.
    joined = {**parameters, **metadata}
    joined.pop("metadata", None)
    return _get_guard(name, **{k: v for k, v in joined.items() if v is not None})
