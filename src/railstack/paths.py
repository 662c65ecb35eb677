"""Where the packaged flows and configs are, whatever the working directory."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def configs_root() -> Path:
    return Path(str(files("railstack.configs")))


def config_dir(name: str) -> Path:
    path = configs_root() / name
    if not (path / "config.yml").is_file():
        raise FileNotFoundError(f"no packaged railstack config named {name!r} (looked in {path})")
    return path


def rails_dir() -> Path:
    return Path(str(files("railstack.rails")))
