"""The one NeMo action every railstack flow calls: run the named rails in cost order."""

from typing import Any, Optional

from nemoguardrails.actions import action
from nemoguardrails.actions.rail_outcome import RailOutcome

from railstack.text import Unreadable, message_text


def _conversation(events: Optional[list], context: dict) -> str:
    """Everything the client sent that the main model will read: system and user turns."""
    texts = [
        message_text(e.get("final_transcript") if e.get("type") == "UtteranceUserActionFinished" else e.get("content"))
        for e in events or []
        if e.get("type") in ("UtteranceUserActionFinished", "SystemMessage")
    ]
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
    try:
        if source == "input":
            text = _conversation(events, context)
        elif source == "output":
            # Streaming output rails pass the chunk as a keyword instead of through the context.
            text = message_text(kwargs.get("bot_message", context.get("bot_message")))
        else:
            return RailOutcome.failure(reason=f"Blocked: a railstack flow names an unknown source {source!r}.")
    except Unreadable as exc:
        return RailOutcome.failure(reason=f"Blocked: message content railstack cannot read ({exc}).")
    names = [name.strip() for name in rails.split(",") if name.strip()]
    return await railstack_runtime.run(names, source=source, text=text, nemo_context=context)
