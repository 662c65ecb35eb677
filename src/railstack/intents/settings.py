"""Settings of the intents rail: ``custom_data.railstack.intents``."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from railstack.core.settings import RailPolicy
from railstack.engines.encoder import PACKAGED


class IntentsSettings(RailPolicy):
    """Refuse messages whose embedding is close to a refused intent's ``define user`` examples."""

    refuse: list[str] = Field(default_factory=list, description="the Colang user intents to refuse, by name")
    # At most 1% false positives on the dev split of scripts/data/topic_competitors.jsonl with the
    # packaged all-MiniLM-L6-v2 and configs/seed's examples (scripts/eval_intents.py); other
    # examples or another encoder want their own.
    threshold: float = Field(default=0.37, ge=-1, le=1, description="cosine similarity to the nearest example")
    model: str = Field(default=PACKAGED, min_length=1, description="the packaged encoder's name, or a local directory")
    sha256: Optional[str] = Field(default=None, pattern=r"^[0-9a-f]{64}$", description="of the model's weights")
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    max_batch: Optional[int] = Field(default=None, gt=0, le=1024, description="texts per forward pass")
    max_delay_ms: float = Field(default=2.0, ge=0, le=1000, description="how long a batch waits to fill")
    # A 32,000-character message (heuristics' cap) is about 300 parts.
    max_parts: int = Field(default=512, gt=0, le=4096, description="parts compared at most; a message of more is refused")
    timeout_s: Optional[float] = Field(default=2.0, gt=0, le=600)
