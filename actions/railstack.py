"""The one NeMo action every railstack flow calls: run the named rails in cost order."""

from typing import Any, Optional

from nemoguardrails.actions import action
from nemoguardrails.actions.rail_outcome import RailOutcome

from railstack.text import Unreadable, conversation_text, message_text


def _conversation(events: Optional[list], context: dict) -> str:
    """Everything the client sent that the main model will read: system and user turns, the
    assistant turns of the history it supplied, and tool results."""
    from railstack.http import http_messages

    sent = http_messages.get()
    if sent is not None:  # behind railstack's HTTP layer: the request exactly as it came
        return conversation_text(sent)
    # Otherwise NeMo's events: they hold tool results only when tool input rails are configured.
    texts = []
    for event in events or []:
        kind = event.get("type")
        if kind == "UtteranceUserActionFinished":
            texts.append(message_text(event.get("final_transcript")))
        elif kind == "SystemMessage":
            texts.append(message_text(event.get("content")))
        elif kind == "UtteranceBotActionFinished":
            texts.append(message_text(event.get("final_script")))
        elif kind == "UserToolMessages":
            texts += [message_text(m.get("content")) for m in event.get("tool_messages") or []]
    return "\n\n".join(texts) if texts else message_text(context.get("user_message"))


@action(name="railstack_rails")
async def railstack_rails(
    rails: str,
    source: str = "input",
    context: Optional[dict] = None,
    events: Optional[list] = None,
    railstack_runtime: Any = None,
    **kwargs: Any,
) -> RailOutcome:
    if railstack_runtime is None:
        return RailOutcome.failure(
            reason="Blocked: railstack is not initialised for this config "
            "(its config.py must contain `from railstack.nemo import init`)."
        )
    context = context or {}
    names = [name.strip() for name in rails.split(",") if name.strip()]
    if source == "input":
        from railstack.http import http_input_decisions

        decided = http_input_decisions.get()
        # The HTTP layer already ran this request's input rails; the flow only says the outcome.
        replayed = railstack_runtime.replay(names, decided) if decided is not None else None
        if replayed is not None:
            return replayed
    try:
        if source == "input":
            text = _conversation(events, context)
        elif source == "output":
            # Streaming output rails pass the chunk as a keyword instead of through the context.
            text = message_text(kwargs.get("bot_message", context.get("bot_message")))
        elif source == "retrieval":
            text = message_text(context.get("relevant_chunks"))
        else:
            return RailOutcome.failure(reason=f"Blocked: a railstack flow names an unknown source {source!r}.")
    except Unreadable as exc:
        return RailOutcome.failure(reason=f"Blocked: message content railstack cannot read ({exc}).")
    return await railstack_runtime.run(names, source=source, text=text, nemo_context=context)
