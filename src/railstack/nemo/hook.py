"""The per-config hook: a config's config.py does ``from railstack.nemo import init``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import weakref
from pathlib import Path
from typing import Any, Iterator

from railstack.core import Runtime, request, runtimes, tracing
from railstack.core.request import one_request
from railstack.nemo import compat, embeddings, guardrails_ai
from railstack.nemo.conversations import ConversationCache
from railstack.nemo.flows import add_pack_flows, config_intents, config_settings, rails_named_in_flows
from railstack.nemo.selfcheck import selfcheck
from railstack.overload.gate import stream_until_consumer_leaves


def init(app: Any) -> None:
    """Called by NeMo with the ``LLMRails`` of a config that imports it.

    Validates the config's railstack settings and the rails its flows name (a bad key or an
    unknown rail stops the config from loading), builds each rail's resources, and gives
    every railstack action the config's runtime.
    """
    from railstack.nemo.action import railstack_rails

    # Before anything is built: on a NeMo whose internals moved, refuse rather than run with a rail skipped.
    selfcheck.rails()
    _refuse_unguarded_serving(app)
    guardrails_ai.check(app.config)  # before NeMo's rail could ask the Hub (and exit) for a validator
    embeddings.install(app.config)  # before NeMo builds its knowledge base with it
    if add_pack_flows(app.config):
        compat.reload_flows(app)
    runtime = config_runtime(app)
    runtime.prepare(rails_named_in_flows(app.config))
    if app.config.passthrough and "intents" in rails_named_in_flows(app.config, ("input",)) and runtime.settings.enabled("intents"):
        # The intents rail answers them. Left in, NeMo would ask the main model for the intent of
        # every message that passed (a prompt and a call a turn), even in passthrough mode.
        compat.withdraw_user_intents(app.config, runtime.settings.intents.refuse)
    app.register_action_param("railstack_runtime", runtime)

    # Bound as well as injected: NeMo's streaming output rails call the action directly,
    # without injecting registered parameters. (wraps keeps the signature NeMo inspects.)
    @functools.wraps(railstack_rails)
    async def bound(*args: Any, **kwargs: Any) -> Any:
        kwargs["railstack_runtime"] = runtime
        return await railstack_rails(*args, **kwargs)

    # A system action, as actions/railstack.py declares it (this copy may be all a config has).
    app.register_action(compat.action(is_system_action=True, name="railstack_rails")(bound), name="railstack_rails")
    if compat.is_colang2(app.config):
        compat.stream_answers_when_checked(app)
    _check_before_streaming(app.config, runtime)
    _gate_main_model(app, runtime)
    # For the latency budgets each generate_async call of a Python caller is one request;
    # behind the HTTP layer the HTTP request already is.
    compat.wrap_generate(app, _one_generation)
    compat.wrap_stream(app, stream_until_consumer_leaves)
    memory = runtime.settings.memory
    compat.bound_events_history(
        app, lambda kept: ConversationCache(memory.conversation_cache_size, memory.conversation_cache_ttl_s, kept)
    )
    if compat.on_request_span(app, _decisions_under):
        tracing.enable()
    compat.keep_railstack_log()
    if not runtime.settings.logging.nemo_verbose:
        compat.quiet_verbose_log()


_runtime_of: "weakref.WeakKeyDictionary[Any, Runtime]" = weakref.WeakKeyDictionary()


def config_runtime(app: Any) -> Runtime:
    """The runtime of the config of the ``LLMRails`` ``app``, the one its railstack actions run with
    (read once: ``init`` takes the intents it refuses out of NeMo's dialog)."""
    if app not in _runtime_of:
        # The config's id (its dir's name) scopes per-client state such as rate-limit buckets.
        _runtime_of[app] = runtimes.get(config_settings(app.config), Path(compat.config_path(app)).name or "config",
                                        config_intents(app.config))
    return _runtime_of[app]


def _refuse_unguarded_serving(app: Any) -> None:
    """NeMo's server serving this config without railstack's HTTP layer in front (NeMo's
    single-config mode, or a root of configs without railstack's ``config.py``) would serve it
    without request validation, 429/503 answers, health and decision headers: refuse instead."""
    from railstack.http.install import installed

    server = compat.serving_server()
    if server is None or installed(server):
        return
    here = Path(compat.config_path(app)).resolve()
    root = Path(server.rails_config_path).resolve()
    if here != root and root not in here.parents:
        return  # a config this process builds for itself, not one the server serves
    raise UnguardedServing(
        f"railstack: `nemoguardrails server --config {server.rails_config_path}` serves config '{here.name}' without "
        "railstack's HTTP layer (request validation, 429/503 answers, health, decision headers). Serve it with "
        f"`railstack serve {server.rails_config_path}`, or point --config at a directory of configs whose "
        "config.py says `from railstack.http.install import init`."
    )


@contextlib.contextmanager
def _one_generation() -> Iterator[None]:
    """One generate_async call. The task running it belongs to the request's ``MainCalls``:
    for a stream it is NeMo's generation task, which ending the stream must cancel."""
    req = request.current()
    if req is not None and req.main_calls is not None:
        req.main_calls.add(asyncio.current_task())
    with one_request():
        yield


def _decisions_under(nemo_span: Any) -> None:
    req = request.current()
    tracing.under_nemo_span(req.trace if req is not None else None, nemo_span)


class UnguardedServing(RuntimeError):
    """A server would serve a railstack config without railstack's HTTP layer."""


def _check_before_streaming(config: Any, runtime: Runtime) -> None:
    """With railstack rails on the output, a chunk they would block must not reach the client.
    A config that sets ``stream_first`` itself keeps its choice."""
    streaming = config.rails.output.streaming
    if streaming is None or not streaming.enabled or compat.stream_first_set_by_config(config):
        return
    if any(runtime.settings.enabled(name) for name in rails_named_in_flows(config, ("output",))):
        compat.check_chunks_before_sending(config)


def _gate_main_model(app: Any, runtime: Runtime) -> None:
    """Put the main model behind this config's main stage (``railstack.overload``), whatever
    model NeMo's set-up or ``RunnableRails`` gives the instance."""
    from railstack.overload.gate import GatedModel, main_model_calls, main_stage

    stage = main_stage(runtime)

    def gate() -> None:
        if app.llm is not None and not isinstance(app.llm, GatedModel):
            compat.replace_main_model(app, GatedModel(app.llm, stage, runtime.scope, lambda: main_model_calls(runtime)))

    compat.after_model_setup(app, gate)
