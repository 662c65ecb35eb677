"""Hallucination check: each answer sentence against evidence, with a local NLI model.

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
from typing import Any, Optional

from railstack.overload.stages import Stage
from railstack.engines.batcher import Batcher
from railstack.engines.cache import ScoreCache
from railstack.engines.loading import load_checkpoint
from railstack.hallucination.settings import HallucinationSettings

log = logging.getLogger("railstack.hallucination")

class NotAnNLIModel(ValueError):
    """The checkpoint's labels lack the ones the settings name."""


@dataclass(frozen=True)
class Support:
    entailed: float  # P(entailed) in the best window
    contradicted: float  # P(contradiction) in that window (0 without a contradiction label)


class NLI:
    """One NLI / factual-consistency checkpoint behind the micro-batcher."""

    def __init__(self, settings: HallucinationSettings, stage: Optional[Stage] = None):
        from transformers import AutoModelForSequenceClassification

        self.settings = settings
        self.tokenizer, model, self.device, self.precision = load_checkpoint(
            settings, "hallucination", AutoModelForSequenceClassification
        )
        labels = {str(name).lower(): int(i) for i, name in model.config.id2label.items()}
        self.entailed = self._label(labels, settings.entailed_label, "entailed_label")
        self.contradicted = (
            self._label(labels, settings.contradiction_label, "contradiction_label")
            if settings.contradiction_label else None
        )
        self.model = model
        self.width = min(settings.max_tokens, getattr(model.config, "max_position_embeddings", None) or settings.max_tokens)
        self.prefix, self.middle, self.suffix, self.types = _pair_layout(self.tokenizer)
        self.uses_types = "token_type_ids" in self.tokenizer.model_input_names and (
            getattr(model.config, "type_vocab_size", 0) or 0) > 1
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.cache: ScoreCache[Support] = ScoreCache(settings.cache_size)
        self.batcher: Batcher[tuple[tuple[int, ...], tuple[int, ...]], list[float]] = Batcher(
            f"nli:{settings.model}",
            self.probabilities,
            length=lambda pair: len(pair[0]) + len(pair[1]),
            max_batch=settings.max_batch or (64 if self.device.startswith("cuda") else 8),
            max_delay_s=settings.max_delay_ms / 1000,
            stage=stage,
        )
        self.probabilities([(tuple(self.ids("warm-up")), tuple(self.ids("warm-up")))])
        log.info("hallucination: loaded %s on %s in %s", settings.model, self.device, self.precision)

    def _label(self, labels: dict[str, int], name: str, key: str) -> int:
        if name.lower() not in labels:
            raise NotAnNLIModel(
                f"hallucination.{key}: {self.settings.model!r} has no label {name!r}; its labels are "
                f"{sorted(labels)}"
            )
        return labels[name.lower()]

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def windows(self, premise: list[int], hypothesis: list[int]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """(premise window, hypothesis) pairs that fit the model and cover the premise, neighbours
        sharing ``window_overlap`` tokens, so a fact across a cut is whole in one of them."""
        specials = len(self.prefix) + len(self.middle) + len(self.suffix)
        hypothesis = hypothesis[: (self.width - specials) // 2]  # a sentence never crowds out the evidence
        room = self.width - specials - len(hypothesis)
        step = max(room - self.settings.window_overlap, 1)
        starts = range(0, max(len(premise) - self.settings.window_overlap, 1), step)
        return [(tuple(premise[s : s + room]), tuple(hypothesis)) for s in starts]

    def probabilities(self, batch: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> list[list[float]]:
        """softmax(logits) of each (premise, hypothesis) pair: one padded forward pass."""
        import torch

        rows, kinds = [], []
        for premise, hypothesis in batch:
            parts = (self.prefix, premise, self.middle, hypothesis, self.suffix)
            rows.append([t for part in parts for t in part])
            kinds.append([kind for part, kind in zip(parts, self.types) for _ in part])
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        types = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row, kind) in enumerate(zip(rows, kinds)):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
            types[i, : len(row)] = torch.tensor(kind)
        inputs = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        if self.uses_types:
            inputs["token_type_ids"] = types.to(self.device)
        with torch.inference_mode():
            logits = self.model(**inputs).logits
        return torch.softmax(logits.float(), dim=-1).cpu().tolist()

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


def _pair_layout(tokenizer: Any) -> tuple[list[int], list[int], list[int], tuple[int, ...]]:
    """What the tokenizer puts around and between a premise and a hypothesis ([CLS] a [SEP] b
    [SEP] for BERT/DeBERTa, <s> a </s></s> b </s> for RoBERTa), and each part's token type."""
    a, b = tokenizer("a", add_special_tokens=False)["input_ids"], tokenizer("b", add_special_tokens=False)["input_ids"]
    encoded = tokenizer("a", "b", return_token_type_ids=True)
    full, kinds = encoded["input_ids"], encoded.get("token_type_ids") or [0] * len(encoded["input_ids"])
    for i in range(len(full)):
        if full[i : i + len(a)] != a:
            continue
        for j in range(i + len(a), len(full)):
            if full[j : j + len(b)] == b:
                at = (0, i, i + len(a), j, j + len(b), len(full))
                parts = [full[at[k] : at[k + 1]] for k in range(5)]
                types = tuple(kinds[min(at[k], len(full) - 1)] for k in range(5))
                return parts[0], parts[2], parts[4], types
    raise NotAnNLIModel("hallucination: cannot tell how the tokenizer joins a premise and a hypothesis")


def engine_key(settings: HallucinationSettings) -> tuple:
    """What makes two configs' NLI model one engine (thresholds and modes apply per config)."""
    return (settings.model_dump_json(include={
        "model", "device", "precision", "max_batch", "max_delay_ms", "cache_size", "entailed_label",
        "contradiction_label", "max_tokens", "window_overlap"}),)
