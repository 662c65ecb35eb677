"""Settings of the topic rail: ``custom_data.railstack.topic``."""

from __future__ import annotations

from pydantic import Field, field_validator

from railstack.core.settings import RailPolicy, have_words


class TopicSettings(RailPolicy):
    """Refuse turns that mention any of the listed terms (whole words, after normalization)."""

    deny: list[str] = Field(default_factory=list)
    reason: str = "this assistant does not discuss that topic"

    @field_validator("deny")
    @classmethod
    def _termshave_words(cls, terms: list[str]) -> list[str]:
        return have_words(terms)
