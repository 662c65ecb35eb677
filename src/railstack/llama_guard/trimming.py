"""A dialogue to the model inputs that judge its last user turn or its answer, within
``max_prompt_tokens``: a longer conversation loses its oldest turns, and on the output the
question before the answer loses its start; the judged turn is never cut (one that alone does
not fit fails the check)."""

from __future__ import annotations

from typing import NamedTuple

from railstack.llama_guard.formats import PromptFormat, Turns
from railstack.llama_guard.scoring import Ids, Judged
from railstack.llama_guard.tokens import PromptEncoder

Dialogue = tuple[tuple[str, str], ...]

# Two dialogues per judged role whose prompts differ only from the first turn's text on.
_PREFIX_PROBES: tuple[tuple[Dialogue, Dialogue, Judged], ...] = (
    ((("user", "Hello there."),), (("user", "Quite another question?"),), "user"),
    ((("user", "Hi"), ("assistant", "Hello.")), (("user", "Quite another question?"), ("assistant", "Hello.")), "assistant"),
)
_WORTH_A_CACHE = 16  # shared tokens


class TurnTooLong(ValueError):
    """The turn being judged does not fit ``max_prompt_tokens`` on its own."""


class Encoded(NamedTuple):
    code: str  # the category this input alone judges; "" when it judges the whole policy
    ids: Ids


class Fitted(NamedTuple):
    prompts: list[Encoded]
    dropped: int  # old turns left out to fit


def alternating(dialogue: Dialogue) -> Turns:
    """User and assistant turns that alternate from a user turn, as the prompt format needs:
    neighbours of one role are joined, an assistant turn before any user turn is dropped."""
    turns: Turns = []
    for role, text in dialogue:
        if turns and turns[-1][0] == role:
            turns[-1] = (role, f"{turns[-1][1]}\n\n{text}")
        elif turns or role == "user":
            turns.append((role, text))
    return turns


class PromptBuilder:
    """The family's prompts over as much of a dialogue as fits, encoded for the model."""

    def __init__(self, family: PromptFormat, encoder: PromptEncoder, budget: int):
        self.family = family
        self.encoder = encoder
        self.tokenizer = encoder.tokenizer
        self.budget = budget

    def _encoded(self, turns: Turns) -> list[Encoded]:
        return [Encoded(p.code, self.encoder.encode_prompt(p.text)) for p in self.family.build(turns)]

    def fit(self, dialogue: Dialogue, judged: Judged) -> Fitted:
        """The model inputs that judge the last ``judged`` turn of ``dialogue``."""
        turns = alternating(dialogue)
        if judged == "user":
            while turns and turns[-1][0] != "user":
                turns.pop()
        if not turns or turns[-1][0] != judged:
            raise ValueError(f"there is no {judged} turn to judge")
        keep = len(turns)
        shortest = 1 if judged == "user" else 2
        lengths: list[int] = []  # each turn's tokens, counted only when the prompt is too long
        while True:
            built = self._encoded(turns[len(turns) - keep :])
            longest = max(len(ids) for _, ids in built)
            if longest <= self.budget:
                return Fitted(built, len(turns) - keep)
            excess = longest - self.budget
            if keep > shortest:
                lengths = lengths or [len(self.encoder.encode(text)) for _, text in turns]
                # Drop the oldest turns (in pairs, so the kept ones still start with a user turn)
                # until their own tokens cover the excess, then measure again.
                dropped = 0
                while keep > shortest and dropped < excess:
                    start = len(turns) - keep
                    dropped += lengths[start] + lengths[start + 1]
                    keep -= 2
                continue
            if judged == "assistant" and self._trim_question(turns, excess):
                continue  # the answer is judged; the question before it is context, and loses its start
            raise TurnTooLong(f"the judged turn needs {longest} prompt tokens, over max_prompt_tokens {self.budget}")

    def _trim_question(self, turns: Turns, excess: int) -> bool:
        ids = self.encoder.encode(turns[-2][1])
        if len(ids) <= excess:
            return False
        # A few tokens more than the excess: decoding a cut can re-tokenize a little longer.
        turns[-2] = ("user", self.tokenizer.decode(ids[excess + 8 :]))
        return True

    def shared_starts(self) -> tuple[Ids, ...]:
        """The fixed start of each judged role's prompt (task, policy, up to the first turn): the
        tokens two prompts with different conversations share, where long enough to cache."""
        starts = []
        for one, other, judged in _PREFIX_PROBES:
            a, b = self.fit(one, judged).prompts[0].ids, self.fit(other, judged).prompts[0].ids
            shared = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), 0)
            if shared >= _WORTH_A_CACHE:
                starts.append(a[:shared])
        return tuple(starts)
