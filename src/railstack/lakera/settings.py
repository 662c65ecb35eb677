"""Settings of the lakera rail: ``custom_data.railstack.lakera``."""

from __future__ import annotations

import os
from typing import Optional

from pydantic import Field

from railstack.core.settings import RailPolicy

KEY_ENV = "LAKERA_GUARD_API_KEY"
KEY_SETTING = f"custom_data.railstack.lakera.api_key (or the {KEY_ENV} environment variable)"


class LakeraSettings(RailPolicy):
    """Lakera Guard's ``POST {base_url}/v2/guard``: the conversation as OpenAI-style messages, the
    project's policy decides (``flagged``)."""

    base_url: str = Field(default="https://api.lakera.ai", pattern=r"^https?://[^\s/]+", description="the API's root")
    # Read when the config loads; kept out of repr so that a printed settings tree does not show it.
    api_key: Optional[str] = Field(
        default_factory=lambda: os.environ.get(KEY_ENV) or None, min_length=1, repr=False,
        description=f"the Guard API key; default: {KEY_ENV}",
    )
    project_id: Optional[str] = Field(
        default=None, min_length=1, description="the project whose policy screens; default: Lakera's default policy"
    )
    breakdown: bool = Field(default=True, description="ask which detectors fired, for the reason and the record")
    timeout_s: Optional[float] = Field(default=5.0, gt=0, le=600)
