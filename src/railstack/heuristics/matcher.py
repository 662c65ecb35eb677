"""The cheap tier: length cap, hidden text, and an instruction-override blocklist.

It is a prefilter. Its rules target phrasing that benign prompts almost never use, so that
its false-positive rate stays at or under 1% (``scripts/eval_heuristics.py`` measures it);
catching paraphrases is the classifier tiers' job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from railstack.core import Verdict
from railstack.heuristics.settings import HeuristicsSettings
from railstack.core.text import normalize, phrase_pattern

_ANY = r"(?:all|any|every|each|the|these|those|my|your|of)"
_PRIOR = r"(?:previous|prior|preceding|above|earlier|former|foregoing|original|initial|system|developer)"
_RULES = (
    r"(?:instructions?|prompts?|rules|directions?|directives?|guidelines|orders"
    r"|constraints|restrictions|programming|guardrails)"
)
_WORD = r"(?:\w+\W+)"  # one arbitrary word; the separator is required so that words cannot be split

# Rule id -> pattern over normalized (casefolded, spacing-collapsed) text. ``\W*`` between
# fixed words also matches text whose spaces were squeezed out. Every repeated part needs
# a separator, which keeps matching linear (no catastrophic backtracking).
DEFAULT_RULES: dict[str, str] = {
    "override-previous-instructions": (
        rf"\b(?:ignore|disregard|forget|override)\W*(?:{_ANY}\W*){{0,3}}{_PRIOR}\W*{_WORD}?{_RULES}\b"
    ),
    "override-instructions-and": (
        rf"\b(?:ignore|disregard|forget)\W*(?:about\W*)?(?:{_ANY}\W*){{1,3}}{_RULES}\W*"
        r"(?:you\W*(?:got|were\W*given|received)|and\b|\.|,|:|!)"
    ),
    "forget-everything": r"\bforget\W*(?:about\W*)?everything\W*(?:above|before|i\W*(?:said|told\W*you)|so\W*far)",
    "new-task-focus": r"\b(?:focus|concentrate)\W*(?:now\W*)?on\W*your\W*new\W*(?:task|assignment|instructions?)",
    "from-now-on-persona": (
        r"\bfrom\W*now\W*on\W*,?\W*you\W*(?:are\W*going\W*to|will|shall|must)\W*(?:act|be|play|respond|answer|pretend|operate)"
        rf"\W+{_WORD}{{0,4}}(?:dan|jailbr\w*|unfiltered|uncensored|unrestricted|amoral|two\W*(?:different|separate)|without)\b"
    ),
    "amoral-persona": (
        rf"\b(?:amoral|unfiltered|uncensored|unrestricted|unethical)\W+(?:and\W+{_WORD}|,\W*{_WORD})?"
        r"(?:ai|chatbot|bot|assistant|language\W*model|persona)\b"
    ),
    "freed-from-confines": r"\bfreed\W*from\W*the\W*(?:typical\W*)?(?:confines|restrictions|limitations|rules)",
    "reveal-system-prompt": (
        r"\b(?:reveal|show|print|repeat|output|display|leak|disclose|tell\W*me)\W*(?:me\W*)?"
        r"(?:your\W*(?:full\W*|entire\W*|hidden\W*|secret\W*|original\W*|initial\W*)?"
        r"|the\W*(?:full|entire|hidden|secret|original|initial)\W*)"
        r"(?:system\W*prompt|instructions|system\W*message|prompt\W*text)"
    ),
    "persona-dan": r"\b(?:do\W*anything\W*now|you\W*are\W*(?:now\W*)?dan\b|dan\W*mode|jailbreak\W*mode)",
    "developer-mode": r"\b(?:developer\W*mode\W*(?:enabled|on|activated)|enable\W*developer\W*mode)",
    "no-restrictions-persona": (
        r"\b(?:free\W*from|without|no\W*longer\W*(?:bound|restricted)\W*by|not\W*bound\W*by)\W*"
        rf"(?:any\W*)?(?:ethical|moral|openai|content|safety)\W+{_WORD}?(?:restrictions|guidelines|policies|filters|rules)"
    ),
    # German instruction overrides, as in the deepset set.
    "override-previous-instructions-de": (
        rf"\b(?:ignoriere|ignorieren\W*sie|vergiss|vergessen\W*sie|missachte|abweichend\W*(?:zu|von))\W+{_WORD}{{0,3}}"
        r"(?:anweisungen|befehle|instruktionen|vorgaben|regeln|aufträge|aufgaben|alles)\b"
    ),
}


@dataclass(frozen=True)
class Matcher:
    rules: tuple[tuple[str, re.Pattern[str]], ...]
    max_input_chars: int
    block_hidden_text: bool

    @classmethod
    def build(cls, settings: HeuristicsSettings) -> "Matcher":
        rules: list[tuple[str, str]] = []
        if settings.default_blocklist:
            rules += DEFAULT_RULES.items()
        rules += [(f"phrase:{p}", phrase_pattern(p)) for p in settings.phrases]
        rules += [(f"pattern:{p}", p) for p in settings.patterns]
        return cls(
            rules=tuple((rule_id, re.compile(p)) for rule_id, p in rules),
            max_input_chars=settings.max_input_chars,
            block_hidden_text=settings.block_hidden_text,
        )

    def scan(self, text: str) -> Verdict:
        if len(text) > self.max_input_chars:
            return Verdict.block(
                f"input is {len(text)} characters, over the limit of {self.max_input_chars}",
                rule="max-input-chars",
            )
        norm = normalize(text)
        if norm.hidden_chars and self.block_hidden_text:
            return Verdict.block(
                f"hidden text: {norm.hidden_chars} invisible Unicode tag characters",
                rule="hidden-text",
            )
        for rule_id, pattern in self.rules:
            if pattern.search(norm.text):
                return Verdict.block(f"matched blocklist rule '{rule_id}'", rule=rule_id)
        return Verdict.allow(invisible_chars=norm.invisible_chars)
