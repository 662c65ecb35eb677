"""Settings of the llama_guard rail: ``custom_data.railstack.llama_guard``."""

from __future__ import annotations

import re
from typing import Literal, Optional

from pydantic import Field, field_validator

from railstack.core.settings import Strict
from railstack.engines.settings import ClassifierSettings


class CustomCategory(Strict):
    """A category of your own policy, or a new name and description for one of the model's."""

    code: str = Field(
        pattern=r"^[A-Za-z][A-Za-z0-9_]*$", description="S1..S99 for Llama Guard; an existing code is replaced"
    )
    name: str = Field(min_length=1)
    description: str = ""


class RemoteEngineSettings(Strict):
    """An OpenAI-compatible completions server (vLLM) serving the same checkpoint."""

    base_url: str = Field(default="http://127.0.0.1:8001/v1", min_length=1)
    served_model: Optional[str] = Field(default=None, description="the server's model name; default: model")
    api_key: str = "EMPTY"
    top_logprobs: int = Field(default=20, ge=2, le=20, description="how many first-token log-probabilities to ask for")
    max_connections: int = Field(default=64, gt=0)


class LlamaGuardSettings(ClassifierSettings):
    """Llama Guard 3 (1B, 8B), Llama Guard 4 (text) or ShieldGemma: P(unsafe) of the last user turn
    (input) or of the answer (output) from one prefill, compared with ``threshold``."""

    model: str = Field(default="meta-llama/Llama-Guard-3-1B", min_length=1)
    timeout_s: Optional[float] = Field(default=10.0, gt=0, le=600)
    engine: Literal["local", "remote"] = "local"
    remote: RemoteEngineSettings = Field(default_factory=RemoteEngineSettings)
    family: Literal["auto", "llama_guard_3", "llama_guard_4", "shieldgemma"] = Field(
        default="auto", description="prompt format and answer tokens; auto: from the tokenizer's special tokens"
    )
    prompt: Literal["auto", "template", "builtin"] = Field(
        default="auto", description="auto: the checkpoint's chat template when it has one, else the built-in format"
    )
    threshold: float = Field(default=0.5, ge=0, le=1)
    categories: Optional[list[str]] = Field(default=None, description="codes to check; default: the model's own set")
    excluded_categories: list[str] = Field(default_factory=list)
    custom_categories: list[CustomCategory] = Field(default_factory=list)
    max_prompt_tokens: int = Field(
        default=8192, ge=256, description="longer conversations lose their oldest turns; a longer judged turn fails"
    )
    category_tokens: int = Field(default=16, ge=1, le=64, description="greedy decode budget of the category line")
    reuse_policy_prefix: bool = Field(
        default=True, description="compute the fixed start of the prompt (task and policy) once, and reuse its cache"
    )

    @field_validator("categories", "excluded_categories")
    @classmethod
    def _are_codes(cls, codes: Optional[list[str]]) -> Optional[list[str]]:
        # Llama Guard's S1..S14, or ShieldGemma's harm types (dangerous_content, ...): one code per item.
        bad = [c for c in codes or [] if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", c)]
        if bad:
            raise ValueError(f"category codes are single words such as S1 or hate_speech: {bad!r}")
        return codes
