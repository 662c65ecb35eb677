"""Bounded stages and health: ``custom_data.railstack.backpressure`` and ``custom_data.railstack.health``."""

from __future__ import annotations

from pydantic import Field, model_validator

from railstack.core.settings import Strict


class StageSettings(Strict):
    """A concurrency limit with a bounded wait queue; past either, a request is shed (503)."""

    max_concurrency: int = Field(default=32, gt=0)
    max_queue: int = Field(default=64, ge=0, description="0 sheds every request that finds the slots full")
    max_wait_s: float = Field(default=5.0, gt=0, le=600)


class BackpressureSettings(Strict):
    """Bounded stages in front of the main model and each classifier engine, and the health
    thresholds served at /railstack/health."""

    enabled: bool = True
    main: StageSettings = Field(default_factory=StageSettings)
    engines: StageSettings = Field(
        default_factory=lambda: StageSettings(max_concurrency=64, max_queue=256, max_wait_s=2.0),
        description="each classifier engine's stage (checks in flight, batched together)",
    )
    degraded_at: float = Field(default=0.8, gt=0, le=1, description="share of a stage's slots in use")
    overloaded_at: float = Field(default=0.5, gt=0, le=1, description="share of a stage's wait queue in use")
    retry_after_s: float = Field(default=1.0, gt=0, le=3600, description="the Retry-After of a shed request")


class HealthSettings(Strict):
    """The recent calls a dependency (the main model, a classifier engine) is judged on at
    /railstack/health: the latest ``window_calls`` of the last ``window_s`` seconds. Any failure
    among them is degraded; all of them failing, at least ``unhealthy_after``, is unhealthy."""

    window_s: float = Field(default=60.0, gt=0, le=3600, description="calls older than this are forgotten")
    window_calls: int = Field(default=20, gt=0, le=10_000, description="at most this many of the latest calls are judged")
    unhealthy_after: int = Field(default=3, gt=0, description="failed calls, with none succeeding, that make it unhealthy")

    @model_validator(mode="after")
    def _unhealthy_fits_the_window(self) -> "HealthSettings":
        if self.unhealthy_after > self.window_calls:
            raise ValueError(
                f"unhealthy_after ({self.unhealthy_after}) is over window_calls ({self.window_calls}): never unhealthy"
            )
        return self
