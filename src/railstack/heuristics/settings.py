"""Settings of the heuristics rail: ``custom_data.railstack.heuristics``."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from railstack.core.settings import RailPolicy, have_words


class HeuristicsSettings(RailPolicy):
    """The cheap tier: normalization, hidden data, control characters, turn markers, blocklist,
    decoded payloads, input length."""

    max_input_chars: int = Field(default=32_000, gt=0)
    block_hidden_text: bool = Field(
        default=True, description="block invisible data channels: tag characters, variation-selector runs, zero-width runs"
    )
    block_control_chars: bool = Field(
        default=True, description="block terminal escape sequences, backspaces and other control characters"
    )
    default_blocklist: bool = True
    turn_markers: bool = Field(
        default=True,
        description="block chat-template tokens and role lines inside content (strict in tool results and retrieved chunks)",
    )
    decode: bool = Field(
        default=True,
        description="decode encoded segments (base64, hex, Morse...) for the rules, and hand them to the classifier tiers",
    )
    max_decoded_chars: int = Field(default=16_000, ge=0, le=1_000_000, description="decoded characters kept per text")
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
