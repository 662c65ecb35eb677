"""The supported safety families, and which one a checkpoint is: ``settings.family``, or
(``auto``) the family whose special token its tokenizer has."""

from __future__ import annotations

from typing import Any

from railstack.llama_guard.formats import PromptFormat
from railstack.llama_guard.meta_format import LlamaGuard3Format, LlamaGuard4Format
from railstack.llama_guard.policy import NotASafetyModel
from railstack.llama_guard.settings import LlamaGuardSettings
from railstack.llama_guard.shieldgemma_format import ShieldGemmaFormat

FAMILIES: dict[str, type[PromptFormat]] = {f.name: f for f in (LlamaGuard3Format, LlamaGuard4Format, ShieldGemmaFormat)}


def detect(settings: LlamaGuardSettings, tokenizer: Any) -> type[PromptFormat]:
    if settings.family != "auto":
        return FAMILIES[settings.family]
    vocab = tokenizer.get_vocab()
    for family in FAMILIES.values():
        if family.marker in vocab:
            return family
    raise NotASafetyModel(
        f"llama_guard: {settings.model!r} has none of the special tokens of Llama Guard 3 ({LlamaGuard3Format.marker}), "
        f"Llama Guard 4 ({LlamaGuard4Format.marker}) or ShieldGemma ({ShieldGemmaFormat.marker}); "
        "set llama_guard.family if it is one of them"
    )
