"""Hallucination check: each answer sentence against evidence, with an NLI model (run here or on a
TEI server: ``engine``).

- Grounded (the turn has retrieved context): every sentence is a hypothesis and the context the
  premise; a context longer than the model's input is cut into overlapping windows of token ids,
  and a sentence's support is its best window's P(entailed). No main-model call.
- Self-consistency (no context): k more answers are sampled from the main model (one call with
  ``n`` when the endpoint is OpenAI-compatible, else k concurrent calls) and each sentence is
  judged against each sample as in SelfCheckGPT-NLI: inconsistency = P(contradiction) /
  (P(entailed) + P(contradiction)); support = 1 - its mean over the samples.
- The answer's score is its weakest sentence's. Every (premise window, sentence) pair goes
  through the shared micro-batcher.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from railstack.engines.batcher import Batcher
from railstack.engines.cache import ScoreCache
from railstack.engines.loading import load_tokenizer
from railstack.engines.sequence import (
    Input, LayoutError, Tokenized, forward, layout, length, runner, softmax, tokenize, window, windows,
)
from railstack.engines.tei import refusal
from railstack.hallucination.settings import HallucinationSettings
from railstack.overload.stages import Stage

log = logging.getLogger("railstack.hallucination")


class NotAnNLIModel(ValueError):
    """The checkpoint's labels lack the ones the settings name."""


@dataclass(frozen=True)
class Support:
    entailed: float  # P(entailed) in the best window
    contradicted: float  # P(contradiction) in that window (0 without a contradiction label)


class NLI:
    """One NLI / factual-consistency checkpoint (run where the settings say) behind the micro-batcher."""

    def __init__(self, settings: HallucinationSettings, stage: Optional[Stage] = None):
        self.settings = settings
        self.tokenizer = load_tokenizer("hallucination", settings.model)
        try:
            self.specials = layout(self.tokenizer).specials(2)
        except LayoutError as exc:
            raise NotAnNLIModel(f"hallucination: {exc}") from exc
        self.runner = runner(settings, "hallucination", self.tokenizer)
        self.device, self.precision = self.runner.device, self.runner.precision
        labels = {name.lower(): i for i, name in enumerate(self.runner.labels)}
        try:
            self.entailed = self._label(labels, settings.entailed_label, "entailed_label")
            self.contradicted = (
                self._label(labels, settings.contradiction_label, "contradiction_label")
                if settings.contradiction_label else None
            )
        except NotAnNLIModel as exc:
            if settings.engine == "remote":
                raise refusal("hallucination", settings, str(exc)) from exc
            raise
        if settings.engine == "remote" and (self.runner.max_tokens or settings.max_tokens) < settings.max_tokens:
            # Locally the checkpoint's own limit narrows the windows; a server's is a deployment's choice.
            raise refusal("hallucination", settings, f"it takes at most {self.runner.max_tokens} tokens per input, "
                          f"hallucination.max_tokens is {settings.max_tokens}: lower hallucination.max_tokens to "
                          f"{self.runner.max_tokens}")
        self.width = min(settings.max_tokens, self.runner.max_tokens or settings.max_tokens)
        self.cache: ScoreCache[Support] = ScoreCache(settings.cache_size)
        self.probabilities = forward(self.runner, softmax)  # softmax(logits) of each (premise, hypothesis) window
        self.batcher: Batcher[Input, list[float]] = Batcher(
            f"nli:{settings.model}",
            self.probabilities,
            length=length,
            max_batch=settings.max_batch or self.runner.max_batch,
            max_delay_s=settings.max_delay_ms / 1000,
            stage=stage,
        )
        log.info("hallucination: loaded %s on %s in %s", settings.model, self.device, self.precision)

    def _label(self, labels: dict[str, int], name: str, key: str) -> int:
        if name.lower() not in labels:
            raise NotAnNLIModel(
                f"hallucination.{key}: {self.settings.model!r} has no label {name!r}; its labels are "
                f"{sorted(labels)}"
            )
        return labels[name.lower()]

    def ids(self, text: str) -> Tokenized:
        return tokenize(self.tokenizer, text)

    def windows(self, premise: Tokenized, hypothesis: Tokenized) -> list[Input]:
        """(premise window, hypothesis) pairs that fit the model and cover the premise, neighbours
        sharing ``window_overlap`` tokens, so a fact across a cut is whole in one of them."""
        claim, _ = window(self.tokenizer, hypothesis, 0, (self.width - self.specials) // 2)  # never crowds out the evidence
        room = self.width - self.specials - len(claim)
        cut = windows(self.tokenizer, premise, room, self.settings.window_overlap) or [premise.span(0, 0)]
        return [(part, claim) for part in cut]

    async def support(self, premise: str, hypotheses: list[str]) -> list[Support]:
        """Each hypothesis's support in the premise (its best window), scored together."""
        found: dict[int, Support] = {}
        todo = []
        for i, hypothesis in enumerate(hypotheses):
            cached = self.cache.get(f"{premise}\x00{hypothesis}")
            if cached is not None:
                found[i] = cached
            else:
                todo.append(i)
        premise_ids = self.ids(premise)
        pairs = {i: self.windows(premise_ids, self.ids(hypotheses[i])) for i in todo}
        flat = [pair for i in todo for pair in pairs[i]]
        results = iter(await self.batcher.score(flat)) if flat else iter(())
        for i in todo:
            best = max((next(results) for _ in pairs[i]), key=lambda p: p[self.entailed])
            found[i] = Support(best[self.entailed], best[self.contradicted] if self.contradicted is not None else 0.0)
            self.cache.put(f"{premise}\x00{hypotheses[i]}", found[i])
        return [found[i] for i in range(len(hypotheses))]

    def inconsistency(self, s: Support) -> float:
        if self.contradicted is None:
            return 1.0 - s.entailed
        return s.contradicted / (s.entailed + s.contradicted) if s.entailed + s.contradicted > 0 else 0.5


def engine_key(settings: HallucinationSettings) -> tuple:
    """What makes two configs' NLI model one engine (thresholds and modes apply per config)."""
    return (settings.model_dump_json(include={
        "model", "runtime", "device", "precision", "max_batch", "max_delay_ms", "cache_size", "entailed_label",
        "contradiction_label", "max_tokens", "window_overlap", "engine"}),
        settings.model_dump_json(include={"remote", "timeout_s"}) if settings.engine == "remote" else None)
