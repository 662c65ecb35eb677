"""A random-weight safety model of the configured family and size, for timing before the weights
are at hand."""

from __future__ import annotations

from pathlib import Path

from railstack.llama_guard.settings import LlamaGuardSettings


def stand_in(settings: LlamaGuardSettings, where: Path, tiny: bool) -> Path:
    from railstack.tools.random_models import GEMMA_2_2B, LLAMA_3_1_8B, LLAMA_3_2_1B, guard_lm, train_texts

    name = settings.model.lower()
    if "shieldgemma" in name:
        family, size = "shieldgemma", GEMMA_2_2B
    elif "guard-3-8b" in name:
        family, size = "llama_guard_3", LLAMA_3_1_8B
    elif "guard-3-1b" in name:
        family, size = "llama_guard_3", LLAMA_3_2_1B
    else:
        raise ValueError(f"no stand-in for {settings.model!r}: give its weights")
    model, _ = guard_lm(where, family, texts=train_texts(2000), tokenizer_vocab=16000, **({} if tiny else size))
    model.save_pretrained(where)
    return where
