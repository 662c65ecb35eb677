"""The building blocks of the settings tree: strict sections, a rail's own policy, and the bounds
on what NeMo keeps per conversation (``memory``)."""

from __future__ import annotations

from typing import Literal, NamedTuple, Optional

from pydantic import BaseModel, ConfigDict, Field


class SettingsError(ValueError):
    """A config's railstack settings are invalid; the message names every offending key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RailPolicy(Strict):
    """How one rail runs. ``None`` inherits the value from ``defaults``."""

    enabled: bool = True
    timeout_s: Optional[float] = Field(default=None, gt=0, le=600)
    on_failure: Optional[Literal["closed", "open"]] = None


OnFailure = Literal["closed", "open"]


class Policy(NamedTuple):
    """How a rail runs, resolved: its own setting, else the defaults."""

    timeout_s: float
    on_failure: OnFailure


class Defaults(Strict):
    timeout_s: float = Field(default=2.0, gt=0, le=600)
    on_failure: Literal["closed", "open"] = "closed"


def have_words(terms: list[str]) -> list[str]:
    # A term with no letters or digits would match at every punctuation mark.
    empty = [t for t in terms if not any(ch.isalnum() for ch in t)]
    if empty:
        raise ValueError(f"terms must contain a letter or digit: {empty!r}")
    return terms


class MemorySettings(Strict):
    """Bounds on NeMo's per-conversation events cache (``LLMRails.events_history_cache``): NeMo
    keeps each conversation's events, with its text, so that the next turn of that conversation
    reuses them, and never drops one; at a steady rate of distinct conversations the process grows
    without end."""

    # 0 keeps none: every turn's events are rebuilt from its messages (NeMo's path for a
    # conversation it has not seen), and no conversation text outlives its request.
    conversation_cache_size: int = Field(
        default=1000, ge=0, le=1_000_000, description="conversations' events kept at most (the oldest go first)"
    )
    conversation_cache_ttl_s: float = Field(
        default=600.0,
        gt=0,
        le=7 * 86400,
        description="what is kept of a conversation (NeMo's events, the hallucination rail's samples) is dropped "
        "this long after its last turn",
    )
