"""Safety classification with a calibrated score (Llama Guard 3 and 4 text, ShieldGemma): the
classifier the rail calls, its score cache, and the loading that wires a checkpoint's family,
prompts and engine together.

The verdict comes from one prefill: the probability of the "unsafe" answer token (Meta's
method; P(Yes) against P(No) for ShieldGemma) at the position where the model starts its answer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Literal, Optional

from railstack.engines.cache import ScoreCache
from railstack.engines.loading import source
from railstack.llama_guard.families import detect
from railstack.llama_guard.formats import PromptFormat
from railstack.llama_guard.local import LocalEngine
from railstack.llama_guard.remote import RemoteEngine
from railstack.llama_guard.scoring import EngineSpec, Judged, Query, SafetyEngine
from railstack.llama_guard.settings import LlamaGuardSettings
from railstack.llama_guard.tokens import PromptEncoder
from railstack.llama_guard.trimming import Dialogue, PromptBuilder
from railstack.overload.stages import Stage

log = logging.getLogger("railstack.llama_guard")

ENGINES: dict[Literal["local", "remote"], Callable[[EngineSpec, Optional[Stage]], SafetyEngine]] = {
    "local": LocalEngine,
    "remote": RemoteEngine,
}


@dataclass(frozen=True)
class Assessment:
    score: float
    categories: tuple[tuple[str, Optional[str]], ...]  # (code, name); name None for a code the policy lacks
    prompt_tokens: int
    dropped_turns: int
    cached: bool = False


class SafetyModel:
    """Judges a dialogue's last user turn or its answer through the engine it is given."""

    def __init__(self, settings: LlamaGuardSettings, family: PromptFormat, prompts: PromptBuilder, engine: SafetyEngine):
        self.threshold = settings.threshold
        self.family = family
        self.prompts = prompts
        self.engine = engine
        self.cache: ScoreCache[Assessment] = ScoreCache(settings.cache_size)
        self._names = {c.code: c.name for c in family.categories}

    @classmethod
    def load(cls, settings: LlamaGuardSettings, stage: Optional[Stage] = None) -> SafetyModel:
        """The checkpoint of ``settings`` with its engine (queueing at ``stage``)."""
        from transformers import AutoConfig, AutoTokenizer

        where = source("llama_guard", settings.model)
        try:
            tokenizer = AutoTokenizer.from_pretrained(where.model, **where.kwargs)
            config = AutoConfig.from_pretrained(where.model, **where.kwargs)
        except Exception as exc:  # noqa: BLE001 - missing, gated, broken: each is the same refusal
            raise where.failure(exc) from exc
        family = detect(settings, tokenizer)(settings, tokenizer, config)
        encoder = PromptEncoder(tokenizer, family)
        prompts = PromptBuilder(family, encoder, settings.max_prompt_tokens)
        spec = EngineSpec(
            settings, tokenizer, family, encoder.answer,
            warmup=encoder.encode_prompt(family.build([("user", "warm-up")])[0].text),
            prefixes=prompts.shared_starts() if settings.reuse_policy_prefix and family.policy_prefix else (),
        )
        engine = ENGINES[settings.engine](spec, stage)
        log.info(
            "llama_guard: %s (%s, prompt %s, %s engine), categories %s",
            settings.model, family.name, family.prompt_source, settings.engine,
            ",".join(c.code for c in family.categories),
        )
        return cls(settings, family, prompts, engine)

    async def assess(self, dialogue: Dialogue, judged: Judged) -> Assessment:
        """Score the last ``judged`` turn of ``dialogue``."""
        built, dropped = self.prompts.fit(dialogue, judged)
        key = "\x00".join(f"{code}\x01{','.join(map(str, ids))}" for code, ids in built)
        cached = self.cache.get(key)
        if cached is not None:
            return Assessment(cached.score, cached.categories, cached.prompt_tokens, dropped, cached=True)
        results = await self.engine.score([Query(ids, self.threshold) for _, ids in built])
        codes = self.family.flagged([code for code, _ in built], results, self.threshold)
        found = Assessment(
            max(p for p, _ in results),
            tuple((code, self._names.get(code)) for code in codes),
            max(len(ids) for _, ids in built),
            dropped,
        )
        self.cache.put(key, found)
        return found


def engine_key(settings: LlamaGuardSettings) -> tuple:
    """What makes two configs' safety model one engine: every setting but the rail's policy."""
    return (settings.model_dump_json(exclude={"enabled", "timeout_s", "on_failure"}),)
