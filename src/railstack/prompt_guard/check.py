"""The prompt_guard rail: the client's own turns scored for jailbreaks, third-party text (tool
results, retrieved chunks) for injections."""

from __future__ import annotations

import asyncio
from typing import Any, Optional

from railstack.core import CheckContext, Runtime, Verdict


def engine(runtime: Runtime) -> Any:
    from railstack.engines.pool import pool
    from railstack.prompt_guard.model import PromptGuard, engine_key

    return pool.get(runtime, "prompt_guard", engine_key(runtime.settings.prompt_guard), PromptGuard)


async def check(text: str, ctx: CheckContext) -> Verdict:
    if ctx.source == "retrieval":
        return await _chunks(ctx.nemo_context.get("relevant_chunks_sep") or [text], ctx)
    settings = ctx.settings.prompt_guard
    own, third_party = _split(text, ctx.messages) if ctx.source == "input" else ([text], [])
    checks = [(t, "jailbreak", settings.jailbreak_threshold) for t in own if t]
    # Tool results are third-party data: Meta filters them on injection, not jailbreak.
    checks += [(t, "injection", settings.injection_threshold) for t in third_party if t]
    # What the cheap tier decoded (a base64 payload, a hidden channel) is judged as the model will read it.
    checks += [
        (item.text, "injection" if item.third_party else "jailbreak",
         settings.injection_threshold if item.third_party else settings.jailbreak_threshold)
        for item in ctx.revealed if ctx.source == "input"
    ]
    worst: Optional[tuple[float, str, float]] = None
    windows = cached = 0
    # Together, so that their windows share the engine's forward passes.
    results = await asyncio.gather(*(ctx.resource.scores(part) for part, _, _ in checks))
    for (_, kind, threshold), (scores, hit) in zip(checks, results):
        windows, cached = windows + scores.windows, cached + hit
        score = getattr(scores, kind)
        if worst is None or score - threshold > worst[0] - worst[2]:
            worst = (score, kind, threshold)
    facts = {"model": settings.model, "scheme": ctx.resource.scheme, "windows": windows, "cached": cached}
    if worst is None:
        return Verdict.allow(score=0.0, **facts)
    score, kind, threshold = worst
    if score >= threshold:
        return Verdict.block(f"{kind} score {score:.3f} >= {threshold:g}", score=score, kind=kind, **facts)
    return Verdict.allow(score=score, kind=kind, **facts)


def _split(text: str, sent: Optional[list[dict]]) -> tuple[list[str], list[str]]:
    """The client's own turns, and tool results, when the request is at hand (behind the HTTP
    layer); otherwise the joined text is all the client's."""
    from railstack.core.text import message_text

    if sent is None:
        return [text], []
    own = "\n\n".join(message_text(m.get("content")) for m in sent if m.get("role") not in ("tool", "context"))
    return [own], [message_text(m.get("content")) for m in sent if m.get("role") == "tool"]


async def _chunks(chunks: list, ctx: CheckContext) -> Verdict:
    settings = ctx.settings.prompt_guard
    results = await asyncio.gather(*(ctx.resource.scores(str(chunk)) for chunk in chunks))
    scored = [(chunk, scores.injection) for chunk, (scores, _) in zip(chunks, results)]
    poisoned = [i for i, (_, score) in enumerate(scored) if score >= settings.injection_threshold]
    facts = {"model": settings.model, "scheme": ctx.resource.scheme, "poisoned": poisoned, "chunks": len(chunks)}
    top = max((score for _, score in scored), default=0.0)
    if poisoned and settings.retrieval == "drop":
        kept = "\n".join(str(chunk) for i, (chunk, _) in enumerate(scored) if i not in poisoned)
        return Verdict.allow(score=top, relevant_chunks=kept, **facts)
    return Verdict.allow(score=top, **facts)
