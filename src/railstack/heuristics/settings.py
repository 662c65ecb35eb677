"""Settings of the heuristics rail: ``custom_data.railstack.heuristics``."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from railstack.core.settings import RailPolicy, have_words


class HeuristicsSettings(RailPolicy):
    """The cheap tier: normalization, hidden text, blocklist, input length."""

    max_input_chars: int = Field(default=32_000, gt=0)
    block_hidden_text: bool = True
    default_blocklist: bool = True
    phrases: list[str] = Field(default_factory=list)
    patterns: list[str] = Field(default_factory=list)

    @field_validator("phrases")
    @classmethod
    def _phraseshave_words(cls, phrases: list[str]) -> list[str]:
        return have_words(phrases)

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
        return patterns
