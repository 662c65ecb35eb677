"""The decision position: prompt text to the model input that ends where the answer word
starts, and the ids of the two answer words there. Both are found by tokenizing a prompt
followed by each answer word, not hard-coded."""

from __future__ import annotations

from typing import Any

from railstack.llama_guard.formats import PromptFormat
from railstack.llama_guard.policy import NotASafetyModel
from railstack.llama_guard.scoring import AnswerIds, Ids


class PromptEncoder:
    """A checkpoint's tokenizer as its family's prompts need it."""

    def __init__(self, tokenizer: Any, family: PromptFormat):
        self.tokenizer = tokenizer
        self.family = family
        self.answer = self._answer_ids()

    def encode(self, text: str) -> list[int]:
        # The prompt spells out its own special tokens (<|begin_of_text|>...): add none.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_prompt(self, prompt: str) -> Ids:
        """The model input for a prompt: the tokens before the answer word, tokenized as the model
        saw prompt and answer together (a tokenizer can split the prompt's last whitespace
        differently when a word follows it)."""
        return tuple(self.encode(prompt + self.family.lead + self.family.safe)[:-1])

    def _answer_ids(self) -> AnswerIds:
        # The decision position is where the prompt followed by either answer word differs, and
        # it must be the last token of both.
        family = self.family
        prompt = family.build([("user", "Hello there.")])[0].text + family.lead
        unsafe, safe = self.encode(prompt + family.unsafe), self.encode(prompt + family.safe)
        if len(unsafe) != len(safe) or unsafe[:-1] != safe[:-1] or unsafe[-1] == safe[-1]:
            raise NotASafetyModel(
                f"llama_guard: {family.unsafe!r} and {family.safe!r} are not single tokens after the "
                f"prompt in {family.settings.model!r}'s tokenizer: not a {family.name} checkpoint"
            )
        return AnswerIds(unsafe[-1], safe[-1])
