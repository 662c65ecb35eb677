"""The one NeMo action every railstack flow calls: run the named rails in cost order."""

from typing import Any, Optional

from nemoguardrails.actions import action
from nemoguardrails.actions.rail_outcome import RailOutcome

from railstack.text import Unreadable, conversation_text, dialogue_of, message_text


def _conversation(events: Optional[list], context: dict) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Everything the client sent that the main model will read (system and user turns, the
    assistant turns of the history it supplied, tool results) joined, and the user and assistant
    turns on their own."""
    from railstack.http import http_messages

    sent = http_messages.get()
    if sent is not None:  # behind railstack's HTTP layer: the request exactly as it came
        return conversation_text(sent), dialogue_of(sent)
    # Otherwise NeMo's events: they hold tool results only when tool input rails are configured.
    texts, dialogue = [], []
    for event in events or []:
        kind = event.get("type")
        if kind == "UtteranceUserActionFinished":
            texts.append(message_text(event.get("final_transcript")))
            dialogue.append(("user", texts[-1]))
        elif kind == "SystemMessage":
            texts.append(message_text(event.get("content")))
        elif kind == "UtteranceBotActionFinished":
            texts.append(message_text(event.get("final_script")))
            dialogue.append(("assistant", texts[-1]))
        elif kind == "UserToolMessages":
            texts += [message_text(m.get("content")) for m in event.get("tool_messages") or []]
    if not texts:
        last = message_text(context.get("user_message"))
        return last, (("user", last),) if last else ()
    return "\n\n".join(texts), tuple(dialogue)


def _streamed_answer_in_full(events: Optional[list], config: Any) -> bool:
    """Whether this output check is the one NeMo's flows run on the whole answer after streaming
    it: every chunk was checked already and NeMo discards this verdict, so it would only cost."""
    from nemoguardrails.context import streaming_handler_var

    streaming = getattr(getattr(getattr(config, "rails", None), "output", None), "streaming", None)
    return (
        events is not None  # the chunk checks are called directly, without the events
        and streaming_handler_var.get() is not None
        and bool(getattr(streaming, "enabled", False))
    )


@action(name="railstack_rails")
async def railstack_rails(
    rails: str,
    source: str = "input",
    context: Optional[dict] = None,
    events: Optional[list] = None,
    config: Any = None,
    llm: Any = None,
    railstack_runtime: Any = None,
    **kwargs: Any,
) -> RailOutcome:
    if railstack_runtime is None:
        return RailOutcome.failure(
            reason="Blocked: railstack is not initialised for this config "
            "(its config.py must contain `from railstack.nemo import init`)."
        )
    from railstack.http import http_input_decisions

    context = context or {}
    names = [name.strip() for name in rails.split(",") if name.strip()]
    # Set when the HTTP layer's input rails blocked this request before NeMo ran.
    decided = http_input_decisions.get()
    if source == "input" and decided is not None:
        # The flow only says the outcome the HTTP layer reached.
        replayed = railstack_runtime.replay(names, decided)
        if replayed is not None:
            return replayed
    if source == "output" and decided is not None:
        # What NeMo streams for a blocked request is railstack's own refusal, not a model's answer.
        return RailOutcome.allow(metadata={"decisions": [], "skipped": "the answer is railstack's refusal"})
    dialogue: tuple[tuple[str, str], ...] = ()
    try:
        if source == "input":
            text, dialogue = _conversation(events, context)
        elif source == "output":
            if _streamed_answer_in_full(events, config):
                return RailOutcome.allow(metadata={"decisions": [], "skipped": "the streamed chunks were checked"})
            # Streaming output rails pass the chunk as a keyword instead of through the context.
            text = message_text(kwargs.get("bot_message", context.get("bot_message")))
            _, dialogue = _conversation(events, context)
        elif source == "retrieval":
            text = message_text(context.get("relevant_chunks"))
        else:
            return RailOutcome.failure(reason=f"Blocked: a railstack flow names an unknown source {source!r}.")
    except Unreadable as exc:
        return RailOutcome.failure(reason=f"Blocked: message content railstack cannot read ({exc}).")
    return await railstack_runtime.run(
        names, source=source, text=text, nemo_context=context, dialogue=dialogue, main_model=llm
    )
