"""Settings of the hallucination rail: ``custom_data.railstack.hallucination``."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from railstack.engines.settings import EncoderSettings, TEISettings


class NLIServer(TEISettings):
    """The NLI model's TEI server: a port of its own (one server serves one model)."""

    base_url: str = Field(default="http://127.0.0.1:8003", min_length=1)


class HallucinationSettings(EncoderSettings):
    """Grounded NLI check of each answer sentence against the turn's context, or, with no context,
    against k more answers sampled from the main model (SelfCheckGPT-NLI)."""

    model: str = Field(default="MoritzLaurer/DeBERTa-v3-base-mnli-fever-anli", min_length=1)
    timeout_s: Optional[float] = Field(default=10.0, gt=0, le=600)
    remote: NLIServer = Field(default_factory=NLIServer)
    entailed_label: str = Field(default="entailment", min_length=1, description="the label meaning supported")
    contradiction_label: Optional[str] = Field(
        default="contradiction", description="for self-consistency; None: inconsistency = 1 - P(entailed)"
    )
    mode: Literal["auto", "grounded", "self_consistency"] = Field(
        default="auto", description="auto: grounded when the turn has context, else self-consistency"
    )
    context_key: str = Field(default="relevant_chunks", min_length=1, description="the context variable to check against")
    threshold: float = Field(default=0.5, ge=0, le=1, description="a sentence scoring under it is unsupported")
    on_low_score: Literal["block", "warn"] = "block"
    warning: str = Field(
        default="\n\nNote: parts of this answer could not be verified against the sources.", min_length=1
    )
    samples: int = Field(default=3, ge=1, le=10, description="self-consistency: extra answers from the main model")
    sample_temperature: float = Field(default=1.0, ge=0, le=2)
    max_tokens: int = Field(default=512, ge=64, le=4096, description="NLI input length; longer context is windowed")
    window_overlap: int = Field(default=64, ge=0, description="tokens shared by neighbouring context windows")
    short_claim_words: int = Field(
        default=6, ge=0, description="a sentence of fewer words is judged with the question before it"
    )
