"""The llama_guard rail: Llama Guard 3/4 or ShieldGemma on the client's last turn and on the answer."""

from __future__ import annotations

from typing import Any

from railstack.core import CheckContext, Runtime, Verdict


def engine(runtime: Runtime) -> Any:
    from railstack.engines.pool import pool
    from railstack.llama_guard.classifier import SafetyModel, engine_key

    return pool.get(runtime, "llama_guard", engine_key(runtime.settings.llama_guard), SafetyModel.load)


async def check(text: str, ctx: CheckContext) -> Verdict:
    if ctx.source == "input":
        judged, dialogue = "user", ctx.dialogue or (("user", text),)
        if ctx.revealed:
            dialogue = _with_revealed(dialogue, ctx.revealed)
    elif ctx.source == "output":
        # The answer (or a streamed chunk of it with NeMo's look-back) after the turns before it;
        # the format judges an Agent turn after a User turn, even an unknown (empty) one.
        before = ctx.dialogue if any(role == "user" for role, _ in ctx.dialogue) else (("user", ""),)
        judged, dialogue = "assistant", (*before, ("assistant", text))
    else:
        raise ValueError(f"llama_guard judges conversations and answers, not {ctx.source} text")
    settings = ctx.settings.llama_guard
    found = await ctx.resource.assess(dialogue, judged)
    categories = [{"code": code, "name": name} for code, name in found.categories]
    facts = {
        "model": settings.model,
        "family": ctx.resource.family.name,
        "prompt": ctx.resource.family.prompt_source,
        "categories": categories,
        "prompt_tokens": found.prompt_tokens,
        "dropped_turns": found.dropped_turns,
        "cached": found.cached,
    }
    if found.score < settings.threshold:
        return Verdict.allow(score=found.score, **facts)
    named = ", ".join(f"{c['code']} {c['name'] or '(not in the policy)'}" for c in categories) or "no category given"
    return Verdict.block(f"unsafe ({named}); score {found.score:.3f} >= {settings.threshold:g}", score=found.score, **facts)


def _with_revealed(dialogue: tuple, revealed: tuple) -> tuple:
    """The last user turn with what the cheap tier decoded from the request after it, each part
    labelled, so that the classifier judges what the main model would read."""
    shown = "\n\n".join(f"[decoded from {item.label}]\n{item.text}" for item in revealed)
    users = [i for i, (role, _) in enumerate(dialogue) if role == "user"]
    if not users:
        return (*dialogue, ("user", shown))
    last = users[-1]
    return (*dialogue[:last], ("user", f"{dialogue[last][1]}\n\n{shown}"), *dialogue[last + 1 :])
