"""The interface every safety family's prompt format implements (the strategies are in
``meta_format`` and ``shieldgemma_format``): its prompts for the turns to judge under the
checkpoint's policy, its answer words, and how its answer reads as P(unsafe) and category codes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, NamedTuple, Optional, Sequence

from railstack.llama_guard.policy import Category, CodeRule, NotASafetyModel, select
from railstack.llama_guard.scoring import AnswerIds, Score
from railstack.llama_guard.settings import LlamaGuardSettings

Turns = list[tuple[str, str]]


class Prompt(NamedTuple):
    code: str  # the category this prompt alone judges; "" when one prompt judges the whole policy
    text: str


class PromptFormat(ABC):
    """One family's way of asking, bound to a checkpoint's tokenizer and policy."""

    name: ClassVar[str]
    marker: ClassVar[str]  # a special token only this family's tokenizers have
    unsafe: ClassVar[str]  # the answer word of a violation
    safe: ClassVar[str]
    wrap: ClassVar[str]  # what surrounds the prompt text ({}) up to where the answer starts
    decodes: ClassVar[bool]  # whether an unsafe answer goes on with a category line
    policy_prefix: ClassVar[bool]  # whether the prompts of a judged role share a start long enough to cache
    renders_template: ClassVar[bool]  # whether the checkpoint's chat template can build the prompts
    code_rule: ClassVar[Optional[CodeRule]] = None

    def __init__(self, settings: LlamaGuardSettings, tokenizer: Any, config: Any):
        self.settings = settings
        self.tokenizer = tokenizer
        self.template = self._uses_template()
        self.prompt_source = "template" if self.template else "builtin"  # what the start-up log and decisions say
        self.categories = select(settings, self.offered(config), self.code_rule)
        # What the model writes between the prompt and the answer word (see meta_format).
        self.lead = ""

    def _uses_template(self) -> bool:
        has = bool(getattr(self.tokenizer, "chat_template", None))
        if self.settings.prompt == "template" and not has:
            raise NotASafetyModel(f"llama_guard: prompt is 'template' but {self.settings.model!r} has no chat template")
        return has and self.settings.prompt != "builtin" and self.renders_template

    @abstractmethod
    def offered(self, config: Any) -> dict[str, Category]:
        """The categories the checkpoint was trained on (``config``: its model config)."""

    @abstractmethod
    def build(self, turns: Turns) -> list[Prompt]:
        """The prompts that judge the last of ``turns`` (alternating, from a user turn)."""

    @abstractmethod
    def probability(self, logits: Any, answer: AnswerIds) -> Any:
        """P(unsafe) from the logits at the decision position (a batch of rows)."""

    @abstractmethod
    def probability_from_logprobs(self, unsafe: Optional[float], safe: Optional[float]) -> float:
        """P(unsafe) from the two answer tokens' log-probabilities (None: not among the top ones)."""

    @abstractmethod
    def flagged(self, codes: Sequence[str], scores: Sequence[Score], threshold: float) -> list[str]:
        """The category codes a verdict names, from the prompts' codes and their scores."""
