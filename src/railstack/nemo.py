"""Wiring into NeMo Guardrails: a config's config.py does ``from railstack.nemo import init``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from railstack.mechanism import Runtime
from railstack.settings import parse_settings


def init(app: Any) -> None:
    """Called by NeMo with the ``LLMRails`` of a config that imports it.

    Validates the config's railstack settings (a bad key stops the config from loading),
    and gives every railstack action the config's runtime.
    """
    from railstack.actions.railstack import railstack_rails

    # The config's id (its dir's name) scopes per-client state such as rate-limit buckets.
    first_path = (app.config.config_path or "").split(",")[0].strip()
    runtime = Runtime(parse_settings(app.config.custom_data), scope=Path(first_path).name or "config")
    app.register_action_param("railstack_runtime", runtime)
    app.register_action(railstack_rails, name="railstack_rails")
