"""The hallucination rail: is each sentence of the answer supported by the turn's context (or,
without context, consistent with other answers the main model gives)?"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from railstack.core import CheckContext, Runtime, Verdict


def resources(runtime: Runtime) -> tuple[Any, Any]:
    from railstack.engines.pool import pool
    from railstack.hallucination.nli import NLI, engine_key
    from railstack.hallucination.samples import Samples

    nli = pool.get(runtime, "hallucination", engine_key(runtime.settings.hallucination), NLI)
    return nli, Samples(ttl_s=runtime.settings.memory.conversation_cache_ttl_s)


def samples_main_model(settings: Any) -> bool:
    """Without retrieved context only grounded mode does without the main model's answers."""
    return settings.hallucination.mode != "grounded"


def _context_text(ctx: CheckContext) -> str:
    found = ctx.nemo_context.get(ctx.settings.hallucination.context_key)
    if isinstance(found, (list, tuple)):
        return "\n\n".join(str(c) for c in found)
    return str(found or "")


def _conversation(ctx: CheckContext) -> list[dict]:
    """What the main model answered: the request's system/user/assistant turns behind the HTTP
    layer, else the turns NeMo saw."""
    from railstack.core.text import message_text

    if ctx.messages is not None:
        return [{"role": m["role"], "content": message_text(m.get("content"))}
                for m in ctx.messages if m.get("role") in ("system", "user", "assistant")]
    return [{"role": role, "content": text} for role, text in ctx.dialogue]


async def check(text: str, ctx: CheckContext) -> Verdict:
    from railstack.hallucination.samples import sample_answers
    from railstack.core.sentences import split_sentences
    from railstack.hallucination.sentences import claims

    if ctx.source != "output":
        raise ValueError(f"hallucination checks answers, not {ctx.source} text")
    settings = ctx.settings.hallucination
    nli, samples = ctx.resource
    sentences = split_sentences(text)
    evidence = _context_text(ctx)
    mode = settings.mode if settings.mode != "auto" else ("grounded" if evidence.strip() else "self_consistency")
    facts = {"model": settings.model, "mode": mode, "sentences": len(sentences), "main_model_calls": 0}
    if not sentences:
        return Verdict.allow(score=1.0, unsupported=[], **facts)
    question = next((t for role, t in reversed(ctx.dialogue) if role == "user"), "")
    judged = claims(sentences, question, settings.short_claim_words)
    if mode == "grounded":
        if not evidence.strip():
            raise ValueError(f"grounded mode, and the turn has no {settings.context_key!r} context")
        scores = [s.entailed for s in await nli.support(evidence, judged)]
    else:
        conversation = _conversation(ctx)
        key = hashlib.blake2b(json.dumps(conversation).encode(), digest_size=16).hexdigest()
        drawn, facts["main_model_calls"] = await samples.get(
            key, lambda: sample_answers(ctx.main_model, conversation, settings.samples, settings.sample_temperature)
        )
        # Together, so that every (sample, sentence) pair shares the engine's forward passes.
        per_sample = await asyncio.gather(*(nli.support(sample, judged) for sample in drawn if sample.strip()))
        if not per_sample:
            raise ValueError("the main model gave no sample answers to compare with")
        scores = [1 - sum(nli.inconsistency(s[i]) for s in per_sample) / len(per_sample) for i in range(len(judged))]
    score = min(scores)
    unsupported = [s for s, value in zip(sentences, scores) if value < settings.threshold]
    facts["unsupported"] = unsupported
    if not unsupported:
        return Verdict.allow(score=score, **facts)
    evidence_name = "the context" if mode == "grounded" else "the main model's other answers"
    finding = f"{len(unsupported)} of {len(sentences)} sentences not supported by {evidence_name}"
    if settings.on_low_score == "block":
        return Verdict.block(f"{finding} (weakest {score:.3f} < {settings.threshold:g})", score=score, **facts)
    return Verdict.allow(score=score, warned=finding, bot_message=text + settings.warning, **facts)
