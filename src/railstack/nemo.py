"""Wiring into NeMo Guardrails: a config's config.py does ``from railstack.nemo import init``."""

from __future__ import annotations

from typing import Any

from railstack.mechanism import Runtime
from railstack.settings import parse_settings


def init(app: Any) -> None:
    """Called by NeMo with the ``LLMRails`` of a config that imports it.

    Validates the config's railstack settings (a bad key stops the config from loading),
    and gives every railstack action the config's runtime.
    """
    from railstack.actions.railstack import railstack_rails

    runtime = Runtime(parse_settings(app.config.custom_data))
    app.register_action_param("railstack_runtime", runtime)
    app.register_action(railstack_rails, name="railstack_rails")
