"""Settings of the prompt_guard rail: ``custom_data.railstack.prompt_guard``."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from railstack.engines.settings import EncoderSettings


class PromptGuardSettings(EncoderSettings):
    """Prompt Guard 1 or 2: jailbreak score on the conversation, injection score on third-party
    text (tool results, retrieved chunks)."""

    model: str = Field(default="meta-llama/Llama-Prompt-Guard-2-86M", min_length=1)
    timeout_s: Optional[float] = Field(default=5.0, gt=0, le=600)
    temperature: float = Field(default=1.0, gt=0)
    jailbreak_threshold: float = Field(default=0.9, ge=0, le=1)
    injection_threshold: float = Field(default=0.9, ge=0, le=1)
    retrieval: Literal["drop", "flag"] = Field(
        default="drop", description="poisoned retrieved chunks: drop them, or only flag them in the decision"
    )
