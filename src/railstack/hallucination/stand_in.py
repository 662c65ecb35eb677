"""A random-weight NLI model of the configured size, for timing before the weights are at hand."""

from __future__ import annotations

from pathlib import Path

from railstack.hallucination.settings import HallucinationSettings


def stand_in(settings: HallucinationSettings, where: Path, tiny: bool) -> Path:
    from railstack.tools.random_models import DEBERTA_V3_BASE, DEBERTA_V3_LARGE, deberta_classifier, train_texts

    size = DEBERTA_V3_LARGE if "large" in settings.model.lower() else DEBERTA_V3_BASE
    labels = [settings.entailed_label, "neutral", settings.contradiction_label or "not_entailment"]
    return deberta_classifier(where, labels, seed=0, texts=train_texts(2000), tokenizer_vocab=8000, **({} if tiny else size))
