"""Wiring into NeMo Guardrails: a config's config.py does ``from railstack.nemo import init``."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from railstack.mechanism import Runtime
from railstack.settings import parse_settings


def rails_named_in_flows(config: Any) -> list[str]:
    """The railstack rails a config's flows run: the ``rails`` argument of each
    ``railstack_rails`` action in its parsed flows."""
    names: list[str] = []
    for flow in config.flows:
        for element in flow.get("elements", []):
            if isinstance(element, dict) and element.get("action_name") == "railstack_rails":
                spec = element.get("action_params", {}).get("rails", "")
                names += [n.strip() for n in spec.split(",") if n.strip() and not spec.startswith("$")]
    return names


def init(app: Any) -> None:
    """Called by NeMo with the ``LLMRails`` of a config that imports it.

    Validates the config's railstack settings and the rails its flows name (a bad key or an
    unknown rail stops the config from loading), builds each rail's resources, and gives
    every railstack action the config's runtime.
    """
    from railstack.actions.railstack import railstack_rails

    # The config's id (its dir's name) scopes per-client state such as rate-limit buckets.
    first_path = (app.config.config_path or "").split(",")[0].strip()
    runtime = Runtime(parse_settings(app.config.custom_data), scope=Path(first_path).name or "config")
    runtime.prepare(rails_named_in_flows(app.config))
    app.register_action_param("railstack_runtime", runtime)

    # Bound as well as injected: NeMo's streaming output rails call the action directly,
    # without injecting registered parameters. (wraps keeps the signature NeMo inspects.)
    @functools.wraps(railstack_rails)
    async def bound(*args: Any, **kwargs: Any) -> Any:
        kwargs["railstack_runtime"] = runtime
        return await railstack_rails(*args, **kwargs)

    app.register_action(bound, name="railstack_rails")
