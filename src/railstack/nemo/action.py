"""The one NeMo action every railstack flow calls: what the flow asks (rails, source) and what
NeMo passes (context, events) turned into the text a runtime checks."""

from __future__ import annotations

from typing import Any, Optional

from railstack.core import request
from railstack.core.fields import conversation_text, decide
from railstack.core.text import Unreadable, dialogue_of, message_text
from railstack.nemo import compat
from railstack.nemo.outcome import outcome, passed, refusal, replay, run

REFUSAL = "railstack refuse"  # the bot intents of railstack's refusals (rails/railstack.co, intents.co)


def _messages(events: Optional[list], context: dict) -> list[dict]:
    req = request.current()
    if req is not None and req.messages is not None:  # behind railstack's HTTP layer: the request as it came
        return req.messages
    messages = compat.messages_in_events(events)
    return messages or [{"role": "user", "content": message_text(context.get("user_message"))}]


def _conversation(events: Optional[list], context: dict) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Every field the main model will read (``railstack.core.fields``): the messages, and the
    parameters NeMo sends with them; and the user and assistant turns on their own."""
    return _conversation_of(_messages(events, context), context)


def _conversation_of(messages: list[dict], context: dict) -> tuple[str, tuple[tuple[str, str], ...]]:
    params = ((context.get("generation_options") or {}).get("llm_params") or {}).items()
    return conversation_text(messages, params), dialogue_of(messages)


async def railstack_rails(
    rails: str,
    source: str = "input",
    text: Optional[str] = None,
    context: Optional[dict] = None,
    events: Optional[list] = None,
    config: Any = None,
    llm: Any = None,
    railstack_runtime: Any = None,
    **kwargs: Any,
) -> Any:
    if railstack_runtime is None:
        return refusal(
            "Blocked: railstack is not initialised for this config "
            "(its config.py must contain `from railstack.nemo import init`)."
        )
    context = context or {}
    names = [name.strip() for name in rails.split(",") if name.strip()]
    req = request.current()
    # Set when the HTTP layer's input rails blocked this request before NeMo ran.
    decided = req.input_decisions if req is not None else None
    if source == "input" and decided is not None:
        # The flow only says the outcome the HTTP layer reached.
        replayed = replay(railstack_runtime, names, decided)
        if replayed is not None:
            return replayed
    if source == "output" and decided is not None:
        # What NeMo streams for a blocked request is railstack's own refusal, not a model's answer.
        return passed("the answer is railstack's refusal")
    dialogue: tuple[tuple[str, str], ...] = ()
    try:
        if compat.is_colang2(config):
            # A Colang 2.x flow passes what it checks ($input_text, $output_text); NeMo's 2.x
            # passthrough hands the main model the user's message alone.
            if source not in ("input", "output"):
                return refusal(
                    f"Blocked: a Colang 2.x railstack flow names the source {source!r}; 2.x has input and output rails only."
                )
            if not isinstance(text, str):
                return refusal(
                    "Blocked: a Colang 2.x railstack flow must pass the text it checks (text=$input_text or text=$output_text)."
                )
            user = text if source == "input" else context.get("user_message")
            messages = _messages(None, {"user_message": user})
            if source == "input":
                text, dialogue = _conversation_of(messages, context)
            else:
                dialogue = dialogue_of(messages)
        elif source == "input":
            text, dialogue = _conversation(events, context)
        elif source == "output":
            if compat.streamed_answer_in_full(events, config):
                return passed("the streamed chunks were checked")
            # Streaming output rails pass the chunk as a keyword instead of through the context.
            text = message_text(kwargs.get("bot_message", context.get("bot_message")))
            dialogue = dialogue_of(_messages(events, context))
        elif source == "retrieval":
            if (compat.bot_intent(events) or "").startswith(REFUSAL):
                # NeMo retrieves before every bot message. A refusal's text is fixed, so its chunks
                # are unused; and a refusal of this rail would start another retrieval, endlessly.
                return passed("the bot is saying railstack's refusal")
            text = message_text(context.get("relevant_chunks"))
        else:
            return refusal(f"Blocked: a railstack flow names an unknown source {source!r}.")
    except Unreadable as exc:
        return refusal(f"Blocked: message content railstack cannot read ({exc}).")
    given = dict(source=source, text=text, nemo_context=context, dialogue=dialogue, main_model=llm,
                 streamed=source == "output" and compat.is_streamed_chunk(events, context))
    if railstack_runtime.unknown(names):
        return await run(railstack_runtime, names, **given)  # the refusal that names them
    return outcome(*await decide(railstack_runtime, names, **given))
