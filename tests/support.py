"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from nemoguardrails import RailsConfig

from railstack.paths import config_dir

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def packaged_config(name: str, base_url: str) -> RailsConfig:
    """A packaged config whose main model is the test double."""
    config = RailsConfig.from_path(str(config_dir(name)))
    for model in config.models:
        if model.type == "main":
            model.parameters["base_url"] = base_url
    return config


@contextlib.contextmanager
def serving(root: Path) -> Iterator["TestClient"]:  # noqa: F821
    """`nemoguardrails server --config root`, in-process: its lifespan runs, then requests."""
    from nemoguardrails.server import api
    from starlette.testclient import TestClient

    api.llm_rails_instances.clear()
    api.app.rails_config_path = str(root)
    api.app.single_config_mode = False
    try:
        with TestClient(api.app) as client:
            yield client
    finally:
        api.llm_rails_instances.clear()


def chat(config_id: str, content: str, **extra) -> dict:
    return {"model": "main", "messages": [{"role": "user", "content": content}], "guardrails": {"config_id": config_id}, **extra}
