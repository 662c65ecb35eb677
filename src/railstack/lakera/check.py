"""The lakera rail: what the main model reads, sent to Lakera Guard as OpenAI-style messages (on
the output with the answer after it); a ``flagged`` answer blocks, naming the detectors that fired."""

from __future__ import annotations

import json
from typing import Any

from railstack.core import CheckContext, Runtime, Verdict

# Roles Lakera's reference lists; OpenAI's newer and older names for two of them.
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool",
         "function": "tool"}


def client(runtime: Runtime) -> Any:
    from railstack.engines.pool import pool
    from railstack.lakera.client import LakeraClient

    settings = runtime.settings.lakera
    return LakeraClient(settings, runtime.settings.policy("lakera").timeout_s,
                        pool.stage(runtime, f"lakera:{settings.base_url}"))


async def check(text: str, ctx: CheckContext) -> Verdict:
    from railstack.core import request

    if ctx.source == "input":
        messages = [*_conversation(ctx, text), *_revealed(ctx)]
    elif ctx.source == "output":
        # The answer (a streamed chunk of it, with NeMo's look-back) after what it answers.
        messages = [*_conversation(ctx, None), {"role": "assistant", "content": text}]
    else:
        raise ValueError(f"lakera screens conversations and answers, not {ctx.source} text")
    messages = [m for m in messages if m["content"]]
    if not messages:
        return Verdict.allow(messages=0)
    rid = request.request_id()
    found = await ctx.resource.screen(messages, rid if rid != "-" else None)
    facts: dict[str, Any] = {"messages": len(messages), "detected": found.detected}
    if found.detectors_run is not None:
        facts["detectors_run"] = found.detectors_run
    if found.request_uuid:
        facts["request_uuid"] = found.request_uuid
    if not found.flagged:
        return Verdict.allow(**facts)
    types = sorted({str(d.get("detector_type")) for d in found.detected})
    if types:
        return Verdict.block(f"flagged by Lakera Guard: {', '.join(types)}", detector_types=types, **facts)
    why = "its breakdown names no detector" if ctx.settings.lakera.breakdown else "set lakera.breakdown: true to see why"
    return Verdict.block(f"flagged by Lakera Guard ({why})", detector_types=[], **facts)


def _conversation(ctx: CheckContext, text: Any) -> list[dict]:
    """The messages as the client sent them, behind the HTTP layer; otherwise the user and
    assistant turns NeMo holds, or on the input the checked text as the user's."""
    if ctx.messages is not None:
        return [_message(m) for m in ctx.messages if m.get("role") in ROLES]
    turns = ctx.dialogue or ((("user", text),) if text is not None else ())
    return [{"role": role, "content": said} for role, said in turns]


def _message(sent: dict) -> dict:
    from railstack.core.text import message_text

    content = message_text(sent.get("content"))
    calls = sent.get("tool_calls")
    if calls:
        # Lakera takes text content only; the calls the model will read go as their JSON.
        content = "\n".join(part for part in (content, json.dumps(calls, ensure_ascii=False)) if part)
    return {"role": ROLES[sent["role"]], "content": content}


def _revealed(ctx: CheckContext) -> list[dict]:
    """What the cheap tier decoded (a base64 payload, a hidden channel), labelled, as the model
    will read it: a tool's when it came from a tool result."""
    return [{"role": "tool" if item.third_party else "user", "content": f"[decoded from {item.label}]\n{item.text}"}
            for item in ctx.revealed]
