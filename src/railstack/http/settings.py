"""What one chat request may hold, and how long it may take: ``custom_data.railstack.limits``."""

from __future__ import annotations

from pydantic import Field

from railstack.core.settings import Strict


class RequestLimits(Strict):
    """What one chat request may hold; past these it is refused with 413 before NeMo sees it."""

    max_body_bytes: int = Field(default=4_000_000, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0, description="a body still arriving after this gets 408")
    # The packaged configs give the main model's client a 60 s timeout; NeMo retries a timed-out
    # try (max_retries) and knows no total. A few seconds over one try leaves room for the rails
    # and the queue, and keeps a hung main model from holding a client for minutes.
    request_timeout_s: float = Field(
        default=65.0, gt=0, le=3600,
        description="a request not answered in full this long after its body arrived gets 504 "
        "(a stream that started: an error event ends it)",
    )
    # NeMo spends about 5 ms of CPU per message turning a conversation into events.
    max_messages: int = Field(default=100, gt=0)
    max_message_chars: int = Field(default=100_000, gt=0)
    max_total_chars: int = Field(default=400_000, gt=0)
    max_tokens: int = Field(default=32_768, gt=0, description="the largest max_tokens a request may ask for")
    # Model names a request may ask for besides the config's main model: NeMo builds and keeps
    # a rails instance for each distinct name.
    models: list[str] = Field(default_factory=list)
