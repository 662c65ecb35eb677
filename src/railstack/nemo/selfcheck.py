"""The start-up self-check: before railstack hooks into a config (``railstack.nemo.init``) or
the server (``railstack.http.install.init``), it proves by behaviour that the NeMo internals it
relies on (``railstack.nemo.compat``) still do what railstack assumes, and otherwise refuses to
start with ``IncompatibleNeMo``. A NeMo release that changed one of them would otherwise run
with a rail silently skipped: a streamed chunk passed unchecked, a main model left ungated.

Once per process (``selfcheck``); ``SelfCheck.reset`` lets tests run it again."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import importlib
import logging
import threading
import time
from typing import Any, Awaitable, Callable, Optional, TypeVar, Union

from railstack.nemo import compat, probe
from railstack.nemo.compat import IncompatibleNeMo
from railstack.nemo.flows import input_rails_of, rails_named_in_flows

log = logging.getLogger("railstack.nemo")
T = TypeVar("T")

_RAILS_TIMEOUT_S = 60.0
_STREAMING = "streaming output rails (events, streaming_handler_var)"


def in_own_loop(make: Callable[[], Awaitable[T]], timeout_s: float) -> T:
    """Await ``make()`` from synchronous code, even inside a running event loop: NeMo calls a
    config's init from ``LLMRails()``, which its server builds inside a request handler."""
    done: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        try:
            done.set_result(asyncio.run(make()))
        except BaseException as exc:  # handed to the caller, whatever it is
            done.set_exception(exc)

    # A fresh thread has a fresh context: nothing of the caller's request leaks into the probe.
    threading.Thread(target=run, name="railstack-nemo-selfcheck", daemon=True).start()
    return done.result(timeout_s)


# -- parsed config -------------------------------------------------------------------------------

_FLOWS_YML = """\
rails:
  input: {flows: [railstack probe input]}
  output: {flows: [railstack probe output], streaming: {enabled: true}}
"""
_FLOWS_CO = """\
define bot railstack probe refusal
  "refused"

define subflow railstack probe input
  $r = execute railstack_rails(rails="probe_a, probe_b")
  if $r.is_blocked
    bot railstack probe refusal
    stop

define subflow railstack probe output
  $r = execute railstack_rails(rails="probe_out", source="output")

define flow railstack probe dialog
  user express greeting
  do railstack probe called

define subflow railstack probe called
  execute railstack_rails(rails="probe_called")

define subflow railstack probe uncalled
  execute railstack_rails(rails="probe_uncalled")
"""

_FLOWS_V2_CO = """\
flow main
  activate railstack probe dialog

flow railstack probe dialog
  await railstack probe called

flow railstack probe called
  await RailstackRailsAction(rails="probe_called", text="x")

flow railstack probe uncalled
  await RailstackRailsAction(rails="probe_uncalled", text="x")

flow input rails $input_text
  $r = await RailstackRailsAction(rails="probe_a, probe_b", text=$input_text)
  if $r.is_blocked
    abort

flow output rails $output_text
  when RailstackRailsAction(rails="probe_out", source="output", text=$output_text)
    abort
"""


def _prove_parsed_config() -> None:
    """railstack reads which rails a config runs from NeMo's parsed flows (``nemo.flows``), and
    decides ``stream_first`` from the config's own choice."""
    from nemoguardrails import RailsConfig

    config = RailsConfig.from_content(colang_content=_FLOWS_CO, yaml_content=_FLOWS_YML)
    hook = "RailsConfig.flows (parsed Colang 1.0 elements: _type, action_name, action_params, flow_name, meta)"
    found = {
        "all": sorted(rails_named_in_flows(config)),
        "output": rails_named_in_flows(config, ("output",)),
        "input": input_rails_of(config),
    }
    expected = {
        "all": ["probe_a", "probe_b", "probe_called", "probe_out"],
        "output": ["probe_out"],
        "input": ["probe_a", "probe_b"],
    }
    if found != expected:
        raise IncompatibleNeMo(hook, f"railstack reads the rails of a parsed snippet as {found}, not {expected}")

    hook = "RailsConfig.flows under Colang 2.x (colang_ast.Flow: Spec of type action / flow, argument expressions)"
    config_v2 = RailsConfig.from_content(colang_content=_FLOWS_V2_CO, yaml_content='colang_version: "2.x"')
    found = {"all": sorted(rails_named_in_flows(config_v2)), "output": rails_named_in_flows(config_v2, ("output",))}
    expected = {"all": ["probe_a", "probe_b", "probe_called", "probe_out"], "output": ["probe_out"]}
    if found != expected:
        raise IncompatibleNeMo(hook, f"railstack reads the rails of a parsed 2.x snippet as {found}, not {expected}")

    hook = "OutputRailsStreamingConfig.stream_first (model_fields_set)"
    chosen = RailsConfig.from_content(yaml_content="rails: {output: {streaming: {enabled: true, stream_first: true}}}")
    if compat.stream_first_set_by_config(config) or not compat.stream_first_set_by_config(chosen):
        raise IncompatibleNeMo(hook, "a config's own stream_first choice is no longer told apart from the default")
    compat.check_chunks_before_sending(config)
    if config.rails.output.streaming.stream_first is not False:
        raise IncompatibleNeMo(hook, "setting it to false did not take")


# -- the probe LLMRails --------------------------------------------------------------------------


def _how(calls: list[probe.RailCall]) -> str:
    def said(values: set[bool]) -> str:
        return "mixed" if len(values) > 1 else ("yes" if True in values else "no")

    return (f"events passed: {said({c.events_passed for c in calls})}, "
            f"streaming handler active: {said({c.handler_active for c in calls})}")


def _judge_stream(seen: probe.Observed) -> None:
    received = seen.received["stream"]
    if received != probe.ANSWER:
        raise IncompatibleNeMo("LLMRails.stream_async", f"a streamed answer arrived as {received!r}, not {probe.ANSWER!r}")
    calls = seen.rail_calls("stream", "output")
    # The probe streams in chunks of two words: only the re-check reads the whole answer.
    chunks = [c for c in calls if c.text != probe.ANSWER]
    whole = [c for c in calls if c.text == probe.ANSWER]
    if len(chunks) < 2:
        raise IncompatibleNeMo(_STREAMING, (
            f"the output rails ran on {len(chunks)} chunk(s) of a {len(probe.ANSWER.split())}-word answer "
            "streamed in chunks of two words, not on each chunk"))
    texts = [c.text for c in chunks]
    covered = set(" ".join(t or "" for t in texts).split()) == set(probe.ANSWER.split())
    if not covered or not all(t and t in probe.ANSWER for t in texts):
        raise IncompatibleNeMo(
            "streaming output rails (the chunk as bot_message)",
            f"the chunk checks read {texts!r}, which are not the chunks of the answer {probe.ANSWER!r}",
        )
    leaky = [c for c in chunks if c.in_full]
    if leaky:
        raise IncompatibleNeMo(_STREAMING, (
            f"{len(leaky)} of {len(chunks)} chunk checks read as the re-check of the whole streamed answer "
            f"({_how(leaky)}); railstack would pass those chunks unchecked"))
    if not whole:
        raise IncompatibleNeMo(_STREAMING, "NeMo no longer re-checks the whole streamed answer through the flows")
    missed = [c for c in whole if not c.in_full]
    if missed:
        raise IncompatibleNeMo(_STREAMING, (
            f"the re-check of the whole streamed answer is not recognised ({_how(missed)}); railstack would run "
            "every output rail on each streamed answer twice"))


def _judge_blocked_stream(seen: probe.Observed) -> None:
    hook = "rails.output.streaming.stream_first"
    if not any(probe.LEAK in (c.text or "") for c in seen.rail_calls("blocked stream", "output")):
        raise IncompatibleNeMo(hook, "the output rails never saw the text they were to block")
    if probe.LEAK in seen.received["blocked stream"]:
        raise IncompatibleNeMo(
            hook, "a chunk the output rails blocked reached the client although railstack set stream_first to false"
        )
    if seen.ended_by_error != {"stream": False, "blocked stream": True}:
        raise IncompatibleNeMo("streaming output rails (the error frame that ends a blocked stream)", (
            f"whether each stream's last chunk was the error frame NeMo ends a stream with: {seen.ended_by_error}, not "
            "False for the allowed stream and True for the blocked one: a blocked stream's generation would run on"))


def _judge_plain(seen: probe.Observed) -> None:
    if seen.received["generate"] != probe.PLAIN_ANSWER:
        raise IncompatibleNeMo(
            "LLMRails.generate_async", f"an answer arrived as {seen.received['generate']!r}, not {probe.PLAIN_ANSWER!r}"
        )
    calls = seen.rail_calls("generate", "output")
    if not calls or any(c.text != probe.PLAIN_ANSWER for c in calls):
        raise IncompatibleNeMo(
            "output rails (bot_message)", f"the output rails of a plain answer read {[c.text for c in calls]!r}"
        )
    if any(c.in_full for c in calls):
        raise IncompatibleNeMo(_STREAMING, (
            f"the output-rail check of an answer that was not streamed reads as the re-check of a streamed one "
            f"({_how(calls)}); railstack would pass every such answer unchecked"))
    expected = tuple((m["role"], m["content"]) for m in probe.HISTORY)
    inputs = seen.rail_calls("generate", "input")
    if not inputs or inputs[0].turns != expected:
        raise IncompatibleNeMo(
            "Colang 1.0 events (the conversation an input rail reads)",
            f"railstack reads {inputs[0].turns if inputs else None!r} from the events, not {expected!r}",
        )


def _judge_conversation_cache(seen: probe.Observed) -> None:
    hook = "LLMRails.events_history_cache"
    if seen.received["continued"] != probe.CONTINUED_ANSWER:
        raise IncompatibleNeMo(
            "LLMRails.generate_async", f"a conversation's next turn was answered {seen.received['continued']!r}"
        )
    if "generate" not in seen.cache_writes:
        raise IncompatibleNeMo(hook, (
            "NeMo no longer keeps a conversation's events in the cache railstack bounds (put back after the "
            "instance's cache was replaced, as NeMo's server does): railstack cannot bound what it keeps instead"))
    if "continued" not in seen.cache_reads:
        raise IncompatibleNeMo(hook, "the next turn of a conversation did not find its events in the cache railstack bounds")
    cache = seen.cache_at_end
    if not isinstance(cache, probe.ConversationCache) or len(cache) > probe.CACHE_SIZE:
        held = len(cache) if hasattr(cache, "__len__") else "?"
        raise IncompatibleNeMo(hook, (
            f"after {len(seen.cache_writes)} conversations' writes it holds {held} entries ({type(cache).__name__}), "
            f"not at most the {probe.CACHE_SIZE} railstack allows: memory would grow with every conversation"))


def _judge_main_model(seen: probe.Observed) -> None:
    first, swapped = seen.models
    built = seen.models_set("build")
    if not built:
        raise IncompatibleNeMo("LLMRails._init_llms", (
            "the wrapper a config's init puts on it never ran while LLMRails was built: NeMo set the models up "
            "some other way, and railstack would leave the main model ungated"))
    if built != [first]:
        raise IncompatibleNeMo("LLMRails._init_llms", f"once it ran, the main model was {built!r}, not the one given")
    if seen.models_set("updated") != [swapped] or seen.received["updated"] != probe.UPDATED_ANSWER:
        raise IncompatibleNeMo(
            "LLMRails.update_llm", "a model swapped in (as RunnableRails does) did not reach railstack's gate"
        )
    if seen.main_calls_wrapped != seen.main_calls_made:
        raise IncompatibleNeMo("LLMRails main model (llm, the llm action parameter, _llm_generation_actions.llm)", (
            f"{seen.main_calls_made - seen.main_calls_wrapped} of {seen.main_calls_made} main-model calls went "
            "around the model railstack put in place; the main model would not be gated"))
    if seen.generations_wrapped != len(probe.PHASES):
        raise IncompatibleNeMo("LLMRails.generate_async", (
            f"{seen.generations_wrapped} of {len(probe.PHASES)} answers ran through the generate_async railstack "
            "wraps; their requests would escape railstack's latency budgets"))
    streams = [phase for phase in probe.PHASES if "stream" in phase]
    if seen.streams_wrapped != len(streams) or seen.stream_marks != list(range(1, len(streams) + 1)):
        raise IncompatibleNeMo("LLMRails.stream_async", (
            f"of {len(streams)} streams, {seen.streams_wrapped} ran through the stream_async railstack wraps, and "
            f"their main-model calls saw {seen.stream_marks} of the context set while stream_async was called, not "
            f"{list(range(1, len(streams) + 1))}: a stream whose consumer left would keep its main model generating"))


def _incompatible_in(exc: Optional[BaseException]) -> Optional[IncompatibleNeMo]:
    """The refusal behind ``exc``: NeMo wraps what a config's init raises in a RuntimeError."""
    while exc is not None and not isinstance(exc, IncompatibleNeMo):
        exc = exc.__cause__ or exc.__context__
    return exc


def _prove_rails() -> None:
    _prove_parsed_config()
    try:
        seen = in_own_loop(probe.observe, _RAILS_TIMEOUT_S)
    except concurrent.futures.TimeoutError:
        raise IncompatibleNeMo(
            "LLMRails", f"the self-check's minimal LLMRails did not finish within {_RAILS_TIMEOUT_S:.0f} s"
        ) from None
    except Exception as exc:
        refusal = _incompatible_in(exc)
        if refusal is not None:
            raise refusal from exc
        raise IncompatibleNeMo(
            "LLMRails", f"building and driving a minimal LLMRails failed: {type(exc).__name__}: {exc}"
        ) from exc
    for judge in (_judge_stream, _judge_blocked_stream, _judge_plain, _judge_conversation_cache, _judge_main_model):
        judge(seen)


# -- the server ----------------------------------------------------------------------------------

_PROBE_PATH = "/railstack/selfcheck"


def _prove_server(app: Any) -> None:
    hook = "nemoguardrails.server.api.api_request_headers"
    api = importlib.import_module("nemoguardrails.server.api")
    headers = getattr(api, "api_request_headers", None)
    if not isinstance(headers, contextvars.ContextVar):
        raise IncompatibleNeMo(hook, "missing: rails cannot see the request's headers")

    def read_back() -> dict[str, str]:
        from starlette.datastructures import Headers

        headers.set(Headers({"X-Railstack-Probe": "1"}))  # what the server's chat endpoint sets
        return compat.request_headers()

    if contextvars.copy_context().run(read_back) != {"x-railstack-probe": "1"}:
        raise IncompatibleNeMo(hook, "the headers set there do not read back")

    missing = [name for name in ("rails_config_path", "default_config_id") if not hasattr(app, name)]
    if missing:
        raise IncompatibleNeMo(
            f"GuardrailsApp.{missing[0]}", "missing: railstack's server hook reads the configs dir and the default config there"
        )

    hook = "GuardrailsApp.middleware_stack"
    if not hasattr(app, "middleware_stack") or not callable(getattr(app, "build_middleware_stack", None)):
        raise IncompatibleNeMo(hook, "missing: railstack's HTTP layer cannot be put in front of the server")
    reached: list[str] = []

    async def recorder(scope: dict, receive: Any, send: Any) -> None:
        reached.append(scope["path"])

    async def nothing(*_: Any) -> dict:
        return {"type": "http.disconnect"}

    async def request() -> None:
        await app({"type": "http", "method": "GET", "path": _PROBE_PATH, "root_path": "", "query_string": b"",
                   "headers": []}, nothing, nothing)

    # Swapped for one probe request: the server hook runs in the lifespan, before any request is served.
    kept, app.middleware_stack = app.middleware_stack, recorder
    try:
        in_own_loop(request, 5.0)
    except Exception:  # whatever the app did instead, the stack was not what it called
        pass
    finally:
        app.middleware_stack = kept
    if reached != [_PROBE_PATH]:
        raise IncompatibleNeMo(
            hook, "the server app no longer sends requests through it; railstack's HTTP layer would be skipped"
        )


# -- once per process ----------------------------------------------------------------------------


class SelfCheck:
    """The self-check's outcome for this process: each part runs once, whichever hook asks
    first; a refusal is kept, and raised again to every later asker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outcomes: dict[str, Union[bool, IncompatibleNeMo]] = {}
        self.seconds: dict[str, float] = {}  # what each part cost, measured

    def rails(self) -> None:
        """Prove the hooks of a config's ``init`` (parsed flows, streaming rails, the main model)."""
        self._once("rails", _prove_rails)

    def server(self, app: Any) -> None:
        """Prove the config hooks and those of the server hook on NeMo's server ``app``."""
        self.rails()
        self._once("server", lambda: _prove_server(app))

    def reset(self) -> None:
        with self._lock:
            self._outcomes.clear()
            self.seconds.clear()

    def _once(self, part: str, prove: Callable[[], None]) -> None:
        with self._lock:
            if part not in self._outcomes:
                started = time.perf_counter()
                try:
                    prove()
                    self._outcomes[part] = True
                except IncompatibleNeMo as exc:
                    self._outcomes[part] = exc
                self.seconds[part] = time.perf_counter() - started
                log.info("NeMo self-check (%s) on nemoguardrails %s: %s in %.0f ms", part, compat.NEMO_VERSION,
                         "passed" if self._outcomes[part] is True else "refused", 1000 * self.seconds[part])
            outcome = self._outcomes[part]
        if isinstance(outcome, IncompatibleNeMo):
            raise IncompatibleNeMo(outcome.hook, outcome.problem)


selfcheck = SelfCheck()
