"""What a rail is and what it leaves behind: tiers, verdicts, decision records, the check's context."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Literal, NamedTuple, Optional

Source = Literal["input", "output", "retrieval"]
Outcome = Literal["allow", "block", "skipped", "cancelled"]
Role = Literal["user", "assistant"]
Turn = tuple[Role, str]


class Tier(enum.IntEnum):
    """Cost order: a cheaper tier always runs, and can block, before a dearer one."""

    ADMISSION = 0
    CHEAP = 1
    EMBEDDING = 2  # one sentence-encoder pass: the topic-intent rail
    SMALL_CLASSIFIER = 3
    LARGE_CLASSIFIER = 4


class Revealed(NamedTuple):
    """Text a cheap rail found inside the message that a reader of its surface does not see (a
    base64 payload decoded, what invisible characters carry): the dearer tiers judge it too,
    labelled, so that they judge what the model would read."""

    label: str  # how it was hidden: "base64", "variation selectors"...
    text: str
    third_party: bool = False  # it came from a tool result or a retrieved chunk


@dataclass(frozen=True)
class Verdict:
    """What a check decides. ``reason`` names the rule that fired, never the user's text."""

    blocked: bool
    reason: Optional[str] = None
    score: Optional[float] = None
    metadata: dict[str, Any] = field(default_factory=dict)
    revealed: tuple[Revealed, ...] = ()

    @classmethod
    def allow(cls, *, score: Optional[float] = None, revealed: tuple[Revealed, ...] = (), **metadata: Any) -> "Verdict":
        return cls(False, None, score, metadata, revealed)

    @classmethod
    def block(cls, reason: str, *, score: Optional[float] = None, **metadata: Any) -> "Verdict":
        return cls(True, reason, score, metadata)


class Deadline(NamedTuple):
    """A latency budget's end (``time.perf_counter`` time) and its length in seconds."""

    at: float
    budget_s: float


@dataclass(frozen=True)
class CheckContext:
    source: Source  # the user's side of the conversation, the bot's answer, or retrieved chunks
    settings: Any  # the config's RailstackSettings
    nemo_context: dict[str, Any]
    resource: Any = None  # what the rail's ``resource`` builder made for this config
    # The user and assistant turns, oldest first, before the answer being checked on the output;
    # for rails that judge a conversation rather than one text. Empty when unknown.
    dialogue: tuple[Turn, ...] = ()
    main_model: Any = None  # the config's main LLM, for rails that sample it (self-consistency)
    deadline: Optional[Deadline] = None
    # The messages exactly as the client sent them, when railstack's HTTP layer serves the request.
    messages: Optional[list[dict]] = None
    # What the cheaper tiers that passed found hidden in the text (decoded payloads).
    revealed: tuple[Revealed, ...] = ()
    # The text is a chunk of a streamed answer with NeMo's look-back before it, not the whole answer:
    # what it holds may have begun before it or end after it, and NeMo sends it as it was.
    streamed: bool = False


Check = Callable[[str, CheckContext], Awaitable[Verdict]]
Builder = Callable[[Any], Any]  # Runtime -> the rail's per-config resource


@dataclass(frozen=True)
class Intent:
    """A user intent of the config's Colang (``define user``): its example utterances, and the text
    of the bot message a flow answers it with (None when no flow answers it with a defined one)."""

    name: str
    examples: tuple[str, ...]
    answer: Optional[str]


@dataclass(frozen=True)
class ModelRail:
    """What a model rail declares so that tools find it without a list of their own: its settings
    section (whose ``model`` names the checkpoint) and how to build a random-weight checkpoint
    of the configured architecture (``stand_in(settings, where, tiny) -> the saved dir``)."""

    section: str
    stand_in: Callable[[Any, Path, bool], Path]


@dataclass(frozen=True)
class Rail:
    name: str
    tier: Tier
    check: Check
    resource: Optional[Builder] = None
    model: Optional[ModelRail] = None
    # Whether, under the config's settings, the rail calls the main model itself on a turn with
    # no retrieved context (``railstack check`` must have one for it).
    calls_main_model: Optional[Callable[[Any], bool]] = None


@dataclass(frozen=True)
class Decision:
    rail: str
    tier: str
    source: Source
    verdict: Outcome
    reason: Optional[str]
    score: Optional[float]
    latency_ms: float
    failed: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    # The user's hidden text, for the later tiers only: never in a record, a log or a response.
    revealed: tuple[Revealed, ...] = field(default=(), repr=False)

    def as_dict(self) -> dict[str, Any]:
        record = {**self.__dict__, "metadata": dict(self.metadata)}
        del record["revealed"]
        return record


class Shed(Exception):
    """A bounded stage cannot take this request now; come back after ``retry_after_s``."""

    def __init__(self, stage: str, reason: str, retry_after_s: float):
        super().__init__(f"{stage} is overloaded: {reason}")
        self.stage = stage
        self.reason = reason
        self.retry_after_s = retry_after_s


class Misconfigured(Exception):
    """A check cannot run as its config stands (a service refused the configured key): it fails
    closed whatever ``on_failure`` says, since letting turns through would hide a fault that only a
    changed setting mends; the message names that setting."""


class UnknownRails(ValueError):
    """A config's flows name rails that no module has registered."""
