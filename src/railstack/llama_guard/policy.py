"""The safety policy a checkpoint judges by: the categories it was trained on, narrowed or
extended by the settings (``categories``, ``excluded_categories``, ``custom_categories``), and
the startup errors of a policy or checkpoint that does not fit."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

from railstack.llama_guard.settings import LlamaGuardSettings

# MLCommons hazards as Llama Guard 3 names them.
HAZARDS = {
    "S1": "Violent Crimes",
    "S2": "Non-Violent Crimes",
    "S3": "Sex Crimes",
    "S4": "Child Exploitation",
    "S5": "Defamation",
    "S6": "Specialized Advice",
    "S7": "Privacy",
    "S8": "Intellectual Property",
    "S9": "Indiscriminate Weapons",
    "S10": "Hate",
    "S11": "Self-Harm",
    "S12": "Sexual Content",
    "S13": "Elections",
    "S14": "Code Interpreter Abuse",
}
S1_S13 = tuple(f"S{i}" for i in range(1, 14))
S1_S14 = (*S1_S13, "S14")

# Llama Guard 3 1B is a 16-layer Llama 3.2; 8B, a 32-layer Llama 3.1, was trained on more.
SMALL_LAYERS = 16


class NotASafetyModel(ValueError):
    """The checkpoint, or the settings, do not fit a supported safety classifier."""


@dataclass(frozen=True)
class Category:
    code: str
    name: str
    description: str = ""

    def line(self) -> str:
        """The policy line after ``S1: `` (name ending in a full stop, then any description)."""
        name = self.name if self.name.endswith(".") else f"{self.name}."
        return f"{name}\n{self.description}" if self.description else name


class Trained(NamedTuple):
    """The hazard codes a family's checkpoints were trained on."""

    codes: tuple[str, ...]
    small: Optional[tuple[str, ...]] = None  # those of its checkpoints of SMALL_LAYERS layers or fewer


class CodeRule(NamedTuple):
    """The shape a family's category codes must have, and how the startup error words it."""

    pattern: str
    says: str


def listed_codes(rendered: str) -> list[str]:
    """The category codes a rendered Llama Guard prompt lists in its policy block."""
    listed = re.search(r"<BEGIN UNSAFE CONTENT CATEGORIES>\n(.*?)<END UNSAFE CONTENT CATEGORIES>", rendered, re.S)
    return re.findall(r"^(S\d+):", listed.group(1), re.M) if listed else []


def trained_hazards(trained: Trained, config: Any, listed: list[str]) -> dict[str, Category]:
    """The hazards a checkpoint was trained on: those its chat template lists when it lists any,
    else its family's for its size."""
    if listed:
        codes = tuple(c for c in listed if c in HAZARDS)
    elif trained.small is not None and getattr(config, "num_hidden_layers", 32) <= SMALL_LAYERS:
        codes = trained.small
    else:
        codes = trained.codes
    return {code: Category(code, HAZARDS[code]) for code in codes}


def select(settings: LlamaGuardSettings, offered: dict[str, Category], rule: Optional[CodeRule]) -> list[Category]:
    """The categories to check: the model's ``offered`` ones with the custom ones laid over them,
    narrowed to ``categories``, less ``excluded_categories``, in code order."""
    s = settings
    policy = dict(offered)
    for custom in s.custom_categories:
        policy[custom.code] = Category(custom.code, custom.name, custom.description)
    if s.categories is not None:
        unknown = [c for c in s.categories if c not in policy]
        if unknown:
            raise NotASafetyModel(f"llama_guard.categories: {unknown} are not in {s.model!r}'s policy")
        policy = {code: policy[code] for code in s.categories}
    unknown = [c for c in s.excluded_categories if c not in policy]
    if unknown:
        raise NotASafetyModel(f"llama_guard.excluded_categories: {unknown} are not in {s.model!r}'s policy")
    kept = [c for code, c in policy.items() if code not in s.excluded_categories]
    if not kept:
        raise NotASafetyModel("llama_guard: every category is excluded; turn the rail off instead")
    if rule is not None:
        bad = [c.code for c in kept if not re.fullmatch(rule.pattern, c.code)]
        if bad:
            raise NotASafetyModel(f"llama_guard: {rule.says}: {bad}")
    # Codes without a number (ShieldGemma's harm types) keep the model's order.
    return sorted(kept, key=lambda c: int(c.code[1:]) if c.code[1:].isdigit() else 0)
