"""Settings of the admission rail: ``custom_data.railstack.admission``."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from railstack.core.settings import RailPolicy, Strict


class RateTier(Strict):
    """Limits of one class of client. A burst defaults to one minute's worth."""

    requests_per_minute: float = Field(default=60, gt=0)
    request_burst: Optional[int] = Field(default=None, gt=0)
    tokens_per_minute: float = Field(default=100_000, gt=0)
    token_burst: Optional[int] = Field(default=None, gt=0)


class ClientKeySettings(Strict):
    """Where the client's identity comes from: the first of ``sources`` the request has, else
    the shared "anonymous" bucket. The credential comes first because a client chooses its
    header and context freely; put ``header`` first only behind a proxy that sets it."""

    sources: list[Literal["authorization", "header", "context"]] = Field(
        default_factory=lambda: ["authorization", "header", "context"], min_length=1
    )
    header: str = Field(default="x-client-id", min_length=1)
    context_field: str = Field(default="client_id", min_length=1)


class AdmissionSettings(RailPolicy):
    """Per-client token buckets for requests and tokens per minute. Off unless enabled: the
    limits are a deployment's own choice."""

    enabled: bool = False
    default_tier: RateTier = Field(default_factory=RateTier)
    tiers: dict[str, RateTier] = Field(default_factory=dict)
    clients: dict[str, str] = Field(default_factory=dict, description="client key -> tier name")
    client_key: ClientKeySettings = Field(default_factory=ClientKeySettings)
    default_max_tokens: int = Field(default=1024, ge=0, description="counted when a request sets no max_tokens")
    chars_per_token: float = Field(default=4.0, gt=0)
    engine: Literal["local", "redis"] = "local"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_timeout_s: float = Field(default=0.25, gt=0, le=10)
    redis_max_connections: int = Field(default=64, gt=0)
    redis_outage: Literal["local", "closed", "open"] = "local"
    key_prefix: str = "railstack:rl"
    # In-process buckets kept, least recently seen evicted first: about 1.5 kB each, so the
    # default stays within ~30 MB however many client ids arrive (scripts/bench_admission.py).
    max_clients: int = Field(default=20_000, gt=0)

    @model_validator(mode="after")
    def _clients_name_tiers(self) -> "AdmissionSettings":
        unknown = sorted({t for t in self.clients.values() if t not in self.tiers})
        if unknown:
            raise ValueError(f"clients refer to undefined tiers: {', '.join(unknown)}")
        return self
