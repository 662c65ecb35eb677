"""Llama Guard 3 and 4's prompt formats, each following Meta's published reference (the README
names them): the task text (``User`` to judge the client's last turn, ``Agent`` with the user turn
present to judge the answer), or the checkpoint's chat template when it has one that honours the
configured policy (``prompt: auto``). The answer is ``safe`` or ``unsafe`` and then a line of
category codes, scored over the whole vocabulary as Meta does."""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar, Optional, Sequence

from railstack.llama_guard.formats import Prompt, PromptFormat, Turns
from railstack.llama_guard.policy import (
    S1_S13, S1_S14, Category, CodeRule, NotASafetyModel, Trained, listed_codes, trained_hazards,
)
from railstack.llama_guard.scoring import AnswerIds, Score
from railstack.llama_guard.settings import LlamaGuardSettings

_INSTRUCTIONS = (
    "Provide your safety assessment for ONLY THE LAST {role} message in the above conversation:\n"
    " - First line must read 'safe' or 'unsafe'.\n"
    " - If unsafe, a second line must include a comma-separated list of violated categories."
)

# Meta's llama-stack Llama Guard provider (PROMPT_TEMPLATE), which its chat format sends as one user turn.
LLAMA_GUARD_3_TASK = (
    "Task: Check if there is unsafe content in '{role}' messages in conversations according our safety policy "
    "with the below categories.\n\n"
    "<BEGIN UNSAFE CONTENT CATEGORIES>\n{categories}\n<END UNSAFE CONTENT CATEGORIES>\n\n"
    "<BEGIN CONVERSATION>\n\n{conversation}\n\n<END CONVERSATION>\n\n" + _INSTRUCTIONS
)

# What Llama Guard 4's processor renders (Hugging Face's llama_guard_4 notebook): "according to our", one newline
# after <BEGIN CONVERSATION>, and each turn followed by a literal backslash-n pair before its blank line.
LLAMA_GUARD_4_TASK = (
    "Task: Check if there is unsafe content in '{role}' messages in conversations according to our safety policy "
    "with the below categories.\n\n"
    "<BEGIN UNSAFE CONTENT CATEGORIES>\n{categories}\n<END UNSAFE CONTENT CATEGORIES>\n\n"
    "<BEGIN CONVERSATION>\n{conversation}<END CONVERSATION>\n\n" + _INSTRUCTIONS
)

# A policy no checkpoint ships: rendering it shows whether a chat template takes the configured policy.
_PROBE_CODE = "S99"
_PROBE = {"S1": "Probe kept.", _PROBE_CODE: "Probe added."}


def parse_categories(text: str) -> list[str]:
    """Category codes from what the model wrote after ``unsafe``: ``S1,S2``, ``S1, S2``, ``s10``,
    ``unsafe\\nS1``, each code once, in order."""
    return list(dict.fromkeys(f"S{int(n)}" for n in re.findall(r"(?<![A-Za-z])[Ss]\s?(\d{1,2})(?!\d)", text)))


class LlamaGuardFormat(PromptFormat):
    unsafe = "unsafe"
    safe = "safe"
    decodes = True
    policy_prefix = True
    renders_template = True
    code_rule = CodeRule(r"S[1-9][0-9]?", "Llama Guard category codes are S1, S2, ...")
    trained: ClassVar[Trained]
    task: ClassVar[str]  # the task text: {role}, {categories}, {conversation}
    turn: ClassVar[str]  # one turn of the conversation: {who}, {text}
    between_turns: ClassVar[str]

    def __init__(self, settings: LlamaGuardSettings, tokenizer: Any, config: Any):
        super().__init__(settings, tokenizer, config)
        if self.template and not self._template_takes_the_policy():
            if settings.prompt == "template":
                raise NotASafetyModel(
                    f"llama_guard: prompt is 'template' but {settings.model!r}'s chat template ignores the configured "
                    "categories (it lists its own); set llama_guard.prompt to auto or builtin"
                )
            self.template = False
            self.prompt_source = "builtin: the chat template ignores the configured categories"
        if self.template:
            self.lead = self._lead()

    def _template_takes_the_policy(self) -> bool:
        """Whether the template lists the categories it is given, less the excluded ones."""
        rendered = self.render([("user", "Hello there.")], None, extra={
            "categories": _PROBE, "excluded_category_keys": ["S1"],
        })
        return listed_codes(rendered) == [_PROBE_CODE]

    def offered(self, config: Any) -> dict[str, Category]:
        # The template's own list (rendered without ours) beats the family's: it is the checkpoint's.
        listed = listed_codes(self.render([("user", "x")], None)) if getattr(self.tokenizer, "chat_template", None) else []
        return trained_hazards(self.trained, config, listed)

    def _lead(self) -> str:
        """The end of the family's generation prompt that the template leaves out (the model then
        writes it before the answer word), so that the score is read where the answer starts."""
        rendered = self.render([("user", "Hello there.")], self.categories)
        tail = self.wrap[self.wrap.index("{}") + 2 :]
        short = tail.rstrip()
        return tail[len(short) :] if rendered.endswith(short) and not rendered.endswith(tail) else ""

    def render(self, turns: Turns, categories: Optional[list[Category]], extra: Optional[dict[str, Any]] = None) -> str:
        """The checkpoint's chat template over ``turns``, with ``categories`` as its policy (None:
        the template's own, or ``extra``'s)."""
        extra = dict(extra or {})
        if categories is not None:
            extra["categories"] = {c.code: c.line() for c in categories}
            extra["excluded_category_keys"] = []
        last_error: Optional[Exception] = None
        # The 8B template reads string contents, the 1B one text parts: use whichever shows the turns.
        for content in (lambda t: t, lambda t: [{"type": "text", "text": t}]):
            messages = [{"role": role, "content": content(text)} for role, text in turns]
            try:
                rendered = self.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True, **extra
                )
            except Exception as exc:  # noqa: BLE001 - the other content form may render
                last_error = exc
                continue
            if all(text.strip() in rendered for _, text in turns):
                return rendered
        raise NotASafetyModel(f"llama_guard: {self.settings.model!r}'s chat template does not render the turns ({last_error})")

    def builtin_prompt(self, turns: Turns) -> str:
        """The family's published prompt for ``turns``, judging the last."""
        role = "User" if turns[-1][0] == "user" else "Agent"
        conversation = self.between_turns.join(
            self.turn.format(who="User" if r == "user" else "Agent", text=t.strip()) for r, t in turns
        )
        lines = "\n".join(f"{c.code}: {c.line()}" for c in self.categories)
        return self.wrap.format(self.task.format(role=role, categories=lines, conversation=conversation))

    def build(self, turns: Turns) -> list[Prompt]:
        return [Prompt("", self.render(turns, self.categories) if self.template else self.builtin_prompt(turns))]

    def probability(self, logits: Any, answer: AnswerIds) -> Any:
        import torch

        return torch.softmax(logits.float(), dim=-1)[:, answer.unsafe]

    def probability_from_logprobs(self, unsafe: Optional[float], safe: Optional[float]) -> float:
        return math.exp(unsafe) if unsafe is not None else 0.0  # below the top k: negligible

    def flagged(self, codes: Sequence[str], scores: Sequence[Score], threshold: float) -> list[str]:
        return parse_categories(scores[0][1] or "")


class LlamaGuard3Format(LlamaGuardFormat):
    name = "llama_guard_3"
    marker = "<|start_header_id|>"
    # llama-models' Llama 3 chat format: one user turn, then the assistant header and its blank line.
    wrap = (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    task = LLAMA_GUARD_3_TASK
    turn = "{who}: {text}"
    between_turns = "\n\n"
    trained = Trained(S1_S14, small=S1_S13)  # 1B leaves out S14


class LlamaGuard4Format(LlamaGuardFormat):
    name = "llama_guard_4"
    marker = "<|header_start|>"
    # As the processor renders it (a space before <|eot|>); the model writes the blank line after the header.
    wrap = "<|begin_of_text|><|header_start|>user<|header_end|>\n\n{} <|eot|><|header_start|>assistant<|header_end|>\n\n"
    task = LLAMA_GUARD_4_TASK
    turn = "{who}: {text}\\n\\n\n\n"
    between_turns = ""
    # The model card adds S14 (Code Interpreter Abuse) "for text-only tool-call use cases", and the
    # processor lists S1-S14 for text without an image: railstack judges text only.
    trained = Trained(S1_S14)
