"""The building blocks of the settings tree: strict sections and a rail's own policy."""

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
