"""What an admission decision says: the client's limits, what is left, when to come back."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from railstack.admission.settings import RateTier


@dataclass(frozen=True)
class Limits:
    request_burst: int
    requests_per_s: float
    token_burst: int
    tokens_per_s: float

    @classmethod
    def of(cls, tier: RateTier) -> "Limits":
        return cls(
            request_burst=tier.request_burst or max(1, math.floor(tier.requests_per_minute)),
            requests_per_s=tier.requests_per_minute / 60,
            token_burst=tier.token_burst or max(1, math.floor(tier.tokens_per_minute)),
            tokens_per_s=tier.tokens_per_minute / 60,
        )


@dataclass(frozen=True)
class Quota:
    """An admission decision with the client's quota after it (OpenAI's x-ratelimit-* headers)."""

    allowed: bool
    limits: Optional[Limits]
    remaining_requests: float = 0.0
    remaining_tokens: float = 0.0
    retry_after_s: Optional[float] = None  # None: waiting will not help (or nothing to wait for)
    reason: Optional[str] = None
    status: int = 200  # what HTTP says when refused: 429 over the limit, 503 limiter unavailable

    def reset_requests_s(self) -> float:
        return max(0.0, (self.limits.request_burst - self.remaining_requests) / self.limits.requests_per_s)

    def reset_tokens_s(self) -> float:
        return max(0.0, (self.limits.token_burst - self.remaining_tokens) / self.limits.tokens_per_s)

    def headers(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.limits is not None:
            out += [
                ("x-ratelimit-limit-requests", str(self.limits.request_burst)),
                ("x-ratelimit-remaining-requests", str(math.floor(self.remaining_requests))),
                ("x-ratelimit-reset-requests", _duration(self.reset_requests_s())),
                ("x-ratelimit-limit-tokens", str(self.limits.token_burst)),
                ("x-ratelimit-remaining-tokens", str(math.floor(self.remaining_tokens))),
                ("x-ratelimit-reset-tokens", _duration(self.reset_tokens_s())),
            ]
        if not self.allowed and self.retry_after_s is not None:
            out.append(("retry-after", str(max(1, math.ceil(self.retry_after_s)))))
        return out


def _duration(seconds: float) -> str:
    """OpenAI's reset format: '1s', '6m0s', '250ms'."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, secs = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def refusal(limits: Limits, remaining_requests: float, remaining_tokens: float, cost: int) -> Quota:
    if cost > limits.token_burst:
        return Quota(
            False, limits, remaining_requests, remaining_tokens, None,
            f"the request needs about {cost} tokens, over this client's burst of {limits.token_burst}", 429,
        )
    wait = max((1 - remaining_requests) / limits.requests_per_s, (cost - remaining_tokens) / limits.tokens_per_s, 0.0)
    which = "requests" if remaining_requests < 1 else "tokens"
    return Quota(False, limits, remaining_requests, remaining_tokens, wait, f"{which} per minute limit reached", 429)
