"""A random-weight Prompt Guard of the configured size, for timing before the weights are at hand."""

from __future__ import annotations

from pathlib import Path

from railstack.prompt_guard.settings import PromptGuardSettings


def stand_in(settings: PromptGuardSettings, where: Path, tiny: bool) -> Path:
    from railstack.tools.random_models import DEBERTA_V3_XSMALL, MDEBERTA_V3_BASE, deberta_classifier, train_texts

    name = settings.model.lower()
    size = DEBERTA_V3_XSMALL if "22m" in name else MDEBERTA_V3_BASE
    labels = ["BENIGN", "INJECTION", "JAILBREAK"] if "prompt-guard-86m" in name and "-2-" not in name else ["LABEL_0", "LABEL_1"]
    return deberta_classifier(where, labels, seed=0, texts=train_texts(2000), tokenizer_vocab=8000, **({} if tiny else size))
