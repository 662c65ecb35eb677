"""What the classifier and its engines exchange: the queries and scores of the ``Engine``
protocol, the answer token ids, and the spec an engine is built from."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Optional

from railstack.engines.pool import Engine
from railstack.llama_guard.settings import LlamaGuardSettings

if TYPE_CHECKING:
    from railstack.llama_guard.formats import PromptFormat

Judged = Literal["user", "assistant"]
Ids = tuple[int, ...]


class AnswerIds(NamedTuple):
    """The token ids of the family's two answer words at the decision position."""

    unsafe: int
    safe: int


class Query(NamedTuple):
    ids: Ids  # the prompt, ending where the answer word starts
    threshold: float  # a score at or above it also gets its category line decoded


class Score(NamedTuple):
    p_unsafe: float
    category_line: Optional[str]  # what the model wrote after "unsafe"; None when not decoded


class EngineSpec(NamedTuple):
    """Everything an engine needs, fixed when the checkpoint loads."""

    settings: LlamaGuardSettings
    tokenizer: Any
    family: PromptFormat
    answer: AnswerIds
    warmup: Ids  # a prompt to run once at load, so the first check does not pay for lazy set-up
    prefixes: tuple[Ids, ...]  # prompt starts every check of a judged role shares (worth a kept cache)


SafetyEngine = Engine[Query, Score]
