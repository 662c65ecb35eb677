"""Decision records as the ``RailOutcome`` a NeMo flow tests (``$railstack_outcome.is_blocked``)."""

from __future__ import annotations

from typing import Any, Optional

from railstack.core import Decision, Runtime
from railstack.nemo.compat import RailOutcome, TransformTarget


def outcome(decisions: list[Decision], blocker: Optional[Decision]) -> Any:
    metadata: dict[str, Any] = {"decisions": [d.as_dict() for d in decisions]}
    if blocker is None:
        # A rail that rewrote the chunks (a retrieval rail dropped some) or the answer (a warning
        # appended) hands the new text back for the flow to use.
        rewrites = []
        for target in (TransformTarget.RELEVANT_CHUNKS, TransformTarget.BOT_MESSAGE):
            text = next((d.metadata[target.value] for d in decisions if target.value in d.metadata), None)
            if text is not None:
                rewrites.append((target, text))
        if rewrites:
            return RailOutcome.transform(rewrites, metadata=metadata)
        return RailOutcome.allow(metadata=metadata)
    metadata["rail"] = blocker.rail
    if "answer" in blocker.metadata:  # what the config's own flow answers (the intents rail)
        metadata["answer"] = blocker.metadata["answer"]
    reason = f"Blocked by the {blocker.rail} rail: {blocker.reason}"
    if blocker.failed:
        return RailOutcome.failure(reason=reason, metadata=metadata)
    return RailOutcome.block(reason=reason, metadata=metadata)


def refusal(reason: str, **metadata: Any) -> Any:
    """A fail-closed outcome for what no rail could judge."""
    return RailOutcome.failure(reason=reason, metadata={"decisions": [], **metadata})


def passed(why: str) -> Any:
    return RailOutcome.allow(metadata={"decisions": [], "skipped": why})


async def run(runtime: Runtime, names: list[str], **request: Any) -> Any:
    """The outcome of the rails ``names`` for a flow; ``request`` is as for ``Runtime.decide``."""
    unknown = runtime.unknown(names)
    if unknown:  # a rail named by a flow that prepare() never saw
        return refusal(f"Blocked: unknown railstack rail(s) {', '.join(unknown)} in this config.", rail=unknown[0])
    return outcome(*await runtime.decide(names, **request))


def replay(runtime: Runtime, names: list[str], decisions: list[Decision]) -> Optional[Any]:
    """The outcome the rails ``names`` already reached in ``decisions`` (made for this request
    before NeMo ran, by the HTTP layer), or None when some of them did not decide there."""
    mine = [d for d in decisions if d.rail in names]
    if {d.rail for d in mine} != {n for n in names if runtime.settings.enabled(n)}:
        return None
    return outcome(mine, next((d for d in mine if d.verdict == "block"), None))
