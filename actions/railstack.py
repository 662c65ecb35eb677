"""The one NeMo action every railstack flow calls: run the named rails in cost order."""

from typing import Any, Optional

from nemoguardrails.actions import action
from nemoguardrails.actions.rail_outcome import RailOutcome

_SOURCES = {"input": "user_message", "output": "bot_message"}


@action(name="railstack_rails")
async def railstack_rails(
    rails: str,
    source: str = "input",
    context: Optional[dict] = None,
    railstack_runtime: Any = None,
    **kwargs: Any,
) -> RailOutcome:
    if railstack_runtime is None:
        return RailOutcome.failure(
            reason="Blocked: railstack is not initialised for this config "
            "(its config.py must contain `from railstack.nemo import init`)."
        )
    if source not in _SOURCES:
        return RailOutcome.failure(reason=f"Blocked: railstack flow names an unknown source {source!r}.")
    context = context or {}
    # Streaming output rails pass the chunk as a keyword instead of through the context.
    text = kwargs.get(_SOURCES[source], context.get(_SOURCES[source]))
    names = [name.strip() for name in rails.split(",") if name.strip()]
    return await railstack_runtime.run(names, source=source, text=text if isinstance(text, str) else "", nemo_context=context)
