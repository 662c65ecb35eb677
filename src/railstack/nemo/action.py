"""The one NeMo action every railstack flow calls: what the flow asks (rails, source) and what
NeMo passes (context, events) turned into the text a runtime checks."""

from __future__ import annotations

from typing import Any, Optional

from railstack.core import request
from railstack.core.text import Unreadable, conversation_text, dialogue_of, message_text
from railstack.nemo import compat
from railstack.nemo.outcome import passed, refusal, replay, run


def _conversation(events: Optional[list], context: dict) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Everything the client sent that the main model will read (system and user turns, the
    assistant turns of the history it supplied, tool results) joined, and the user and assistant
    turns on their own."""
    req = request.current()
    if req is not None and req.messages is not None:  # behind railstack's HTTP layer: the request as it came
        return conversation_text(req.messages), dialogue_of(req.messages)
    # Otherwise NeMo's events: they hold tool results only when tool input rails are configured.
    texts, dialogue = [], []
    for role, content in compat.turns_in_events(events):
        texts.append(message_text(content))
        if role in ("user", "assistant"):
            dialogue.append((role, texts[-1]))
    if not texts:
        last = message_text(context.get("user_message"))
        return last, (("user", last),) if last else ()
    return "\n\n".join(texts), tuple(dialogue)


async def railstack_rails(
    rails: str,
    source: str = "input",
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
        if source == "input":
            text, dialogue = _conversation(events, context)
        elif source == "output":
            if compat.streamed_answer_in_full(events, config):
                return passed("the streamed chunks were checked")
            # Streaming output rails pass the chunk as a keyword instead of through the context.
            text = message_text(kwargs.get("bot_message", context.get("bot_message")))
            _, dialogue = _conversation(events, context)
        elif source == "retrieval":
            text = message_text(context.get("relevant_chunks"))
        else:
            return refusal(f"Blocked: a railstack flow names an unknown source {source!r}.")
    except Unreadable as exc:
        return refusal(f"Blocked: message content railstack cannot read ({exc}).")
    return await run(railstack_runtime, names, source=source, text=text, nemo_context=context, dialogue=dialogue, main_model=llm)
