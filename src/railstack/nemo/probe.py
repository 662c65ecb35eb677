"""What the installed NeMo does with the hooks railstack relies on, observed on a minimal
LLMRails: a config dir written for the probe, whose config.py hooks in through the same compat
calls as railstack's ``init``, driven with fake main models through a streamed answer, a
streamed answer its output rail blocks, a plain answer, that conversation's next turn and an
answer after ``update_llm``. This module only records; ``railstack.nemo.selfcheck`` judges."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import tempfile
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Optional

from railstack.nemo import compat
from railstack.nemo.conversations import ConversationCache
from railstack.overload.gate import stream_until_consumer_leaves

ANSWER = "one two three four five six seven"
LEAK = "BLOCKME"
BLOCKED_ANSWER = f"alpha beta gamma {LEAK} delta epsilon"
PLAIN_ANSWER = "a plain answer"
CONTINUED_ANSWER = "the next turn's answer"
UPDATED_ANSWER = "an answer from the swapped-in model"
HISTORY = [
    {"role": "system", "content": "probe system"},
    {"role": "user", "content": "probe user one"},
    {"role": "assistant", "content": "probe assistant"},
    {"role": "user", "content": "probe user two"},
]
CONTINUED = [*HISTORY, {"role": "assistant", "content": PLAIN_ANSWER}, {"role": "user", "content": "probe user three"}]
PHASES = ("stream", "blocked stream", "generate", "continued", "updated")
CACHE_SIZE = 1
_TIMEOUT_S = 10.0

_CONFIG_YML = """\
models: []
passthrough: true
rails:
  input:
    flows: [railstack probe input]
  output:
    flows: [railstack probe output]
    # Small chunks, so that one short answer makes several chunk checks. stream_first is left
    # unset: the probe's init chooses it as railstack's does.
    streaming: {enabled: true, chunk_size: 2, context_size: 1}
"""
_FLOWS_CO = """\
define bot railstack probe refusal
  "refused"

define subflow railstack probe input
  $r = execute railstack_probe(source="input")

define subflow railstack probe output
  $r = execute railstack_probe(source="output")
  if $r.is_blocked
    bot railstack probe refusal
    stop
"""
_CONFIG_PY = "from railstack.nemo.probe import init  # noqa: F401\n"


@dataclass(frozen=True)
class RailCall:
    """One call of the probe's rail action, as NeMo made it."""

    source: str
    text: Optional[str]
    events_passed: bool
    handler_active: bool
    in_full: bool  # compat.streamed_answer_in_full, as railstack's action would have read it
    turns: tuple[tuple[str, Any], ...]


@dataclass
class Observed:
    phase: str = "build"
    calls: dict[str, list[RailCall]] = field(default_factory=dict)
    received: dict[str, str] = field(default_factory=dict)
    models_seen: list[tuple[str, Any]] = field(default_factory=list)  # (phase, app.llm) each time the model-setup hook ran
    main_calls_wrapped: int = 0
    main_calls_made: int = 0
    generations_wrapped: int = 0
    streams_wrapped: int = 0
    stream_marks: list[Optional[int]] = field(default_factory=list)  # _stream_mark, as each main-model stream saw it
    ended_by_error: dict[str, bool] = field(default_factory=dict)  # per stream phase: ends_stream(its last chunk)
    models: tuple[Any, ...] = ()  # the fakes, in the order the probe gives them
    cache_writes: list[str] = field(default_factory=list)  # the phase of each write NeMo made to railstack's cache
    cache_reads: list[str] = field(default_factory=list)  # the phase of each entry NeMo found there
    cache_at_end: Any = None  # the instance's events_history_cache after the last phase

    def rail_calls(self, phase: str, source: str) -> list[RailCall]:
        return [c for c in self.calls.get(phase, []) if c.source == source]

    def models_set(self, phase: str) -> list[Any]:
        return [model for when, model in self.models_seen if when == phase]


class _RecordedCache(ConversationCache):
    """railstack's bound on NeMo's conversation cache (``CACHE_SIZE`` entries), counting what NeMo
    wrote to it and found in it."""

    def __init__(self, seen: Observed, kept: dict):
        self._seen = seen
        super().__init__(CACHE_SIZE, 3600.0, kept)

    def __setitem__(self, key: str, value: Any) -> None:
        self._seen.cache_writes.append(self._seen.phase)
        super().__setitem__(key, value)

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key)
        self._seen.cache_reads.append(self._seen.phase)
        return value


# How the probe's config.py finds what to record into: NeMo calls it from inside LLMRails().
_observing: ContextVar[Optional[Observed]] = ContextVar("railstack_nemo_probe", default=None)
# Set while stream_async is called: the generation task it starts must see it (railstack ends a
# stream's generation through what that task sees).
_stream_mark: ContextVar[Optional[int]] = ContextVar("railstack_nemo_probe_stream", default=None)


class _WrappedModel:
    """The main model behind a wrapper, as railstack's gate puts it: counts the calls that reach
    the model through the wrapper."""

    def __init__(self, inner: Any, seen: Observed):
        self._inner, self._seen = inner, seen

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def generate_async(self, prompt: Any, *, stop: Optional[list] = None, **kwargs: Any) -> Any:
        self._seen.main_calls_wrapped += 1
        return await self._inner.generate_async(prompt, stop=stop, **kwargs)

    async def stream_async(self, prompt: Any, *, stop: Optional[list] = None, **kwargs: Any) -> AsyncIterator[Any]:
        self._seen.main_calls_wrapped += 1
        self._seen.stream_marks.append(_stream_mark.get())
        async for chunk in self._inner.stream_async(prompt, stop=stop, **kwargs):
            yield chunk


def init(app: Any) -> None:
    """The probe config's init: railstack's hooks, recording instead of gating."""
    seen = _observing.get()
    if seen is None:
        raise RuntimeError("railstack's NeMo probe config is only for railstack.nemo.selfcheck")

    async def railstack_probe(source: str, events: Optional[list] = None, context: Optional[dict] = None,
                              config: Any = None, **kwargs: Any) -> Any:
        # Where railstack's action reads an output rail's text: the chunk as a keyword, else the context.
        text = kwargs.get("bot_message", (context or {}).get("bot_message"))
        seen.calls.setdefault(seen.phase, []).append(RailCall(
            source, text, events is not None, compat.streaming_handler_active(),
            compat.streamed_answer_in_full(events, config), tuple((m.get("role"), m.get("content")) for m in compat.messages_in_events(events)),
        ))
        if source == "output" and LEAK in (text or ""):
            return compat.RailOutcome.block(reason="the probe's output rail blocks this text")
        return compat.RailOutcome.allow()

    def model_set() -> None:
        seen.models_seen.append((seen.phase, app.llm))
        if app.llm is not None and not isinstance(app.llm, _WrappedModel):
            compat.replace_main_model(app, _WrappedModel(app.llm, seen))

    @contextlib.contextmanager
    def generation() -> Any:
        seen.generations_wrapped += 1
        yield

    def stream(start: Any) -> Any:
        seen.streams_wrapped += 1

        def marked() -> Any:
            token = _stream_mark.set(seen.streams_wrapped)
            try:
                return start()
            finally:
                _stream_mark.reset(token)

        # Read the way railstack's hook has a stream read, so that the chunk checks are proven there.
        return stream_until_consumer_leaves(marked)

    app.register_action(railstack_probe, name="railstack_probe")
    compat.check_chunks_before_sending(app.config)
    compat.after_model_setup(app, model_set)
    compat.wrap_generate(app, generation)
    compat.wrap_stream(app, stream)
    compat.bound_events_history(app, lambda kept: _RecordedCache(seen, kept))


async def _streamed(rails: Any) -> str:
    chunks = [c async for c in rails.stream_async(messages=[{"role": "user", "content": "probe"}])]
    seen = _observing.get()
    if seen is not None and chunks:
        seen.ended_by_error[seen.phase] = compat.ends_stream(chunks[-1])
    return "".join(chunks)


async def _generated(rails: Any, messages: list[dict]) -> str:
    return (await rails.generate_async(messages=messages)).get("content") or ""


async def observe() -> Observed:
    """Build the probe's LLMRails and drive it through each phase (``PHASES``). Raises
    ``IncompatibleNeMo`` for a phase that does not finish: a NeMo that never ends a stream
    would otherwise hang the start-up."""
    from nemoguardrails import LLMRails, RailsConfig
    from nemoguardrails.testing import FakeLLMModel

    seen = Observed()
    _observing.set(seen)
    seen.models = (
        FakeLLMModel(responses=[ANSWER, BLOCKED_ANSWER, PLAIN_ANSWER, CONTINUED_ANSWER]),
        FakeLLMModel(responses=[UPDATED_ANSWER]),
    )
    answer = {
        "stream": _streamed,
        "blocked stream": _streamed,
        "generate": functools.partial(_generated, messages=HISTORY),
        "continued": functools.partial(_generated, messages=CONTINUED),
        "updated": functools.partial(_generated, messages=[{"role": "user", "content": "probe"}]),
    }
    with tempfile.TemporaryDirectory(prefix="railstack-nemo-probe-") as root:
        for name, text in (("config.yml", _CONFIG_YML), ("probe.co", _FLOWS_CO), ("config.py", _CONFIG_PY)):
            (Path(root) / name).write_text(text)
        rails = LLMRails(RailsConfig.from_path(root), llm=seen.models[0])
        rails.events_history_cache = {}  # as NeMo's server does to each instance it builds (its _get_rails)
        for phase in PHASES:
            seen.phase = phase
            if phase == "updated":
                rails.update_llm(seen.models[1])
            try:
                seen.received[phase] = await asyncio.wait_for(answer[phase](rails), _TIMEOUT_S)
            except asyncio.TimeoutError:
                raise compat.IncompatibleNeMo(
                    "LLMRails.stream_async" if "stream" in phase else "LLMRails.generate_async",
                    f"the self-check's {phase} answer from a fake model did not finish within {_TIMEOUT_S:.0f} s",
                ) from None
    seen.main_calls_made = sum(model.inference_count for model in seen.models)
    seen.cache_at_end = rails.events_history_cache
    return seen
