"""Server-level wiring for `nemoguardrails server --config <dir of configs>`.

NeMo loads each config lazily, on its first request; a config with bad railstack settings
would only fail then. ``init`` validates every config when the server starts instead, so a
bad key stops the server with a message that names it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from railstack.settings import SettingsError, parse_settings

log = logging.getLogger("railstack.server")


def validate_configs(root: Path) -> list[str]:
    """Validate the railstack settings of every config dir under ``root``; return their ids."""
    from nemoguardrails import RailsConfig

    ids, problems = [], []
    for config_path in sorted(p for p in root.iterdir() if (p / "config.yml").is_file()):
        try:
            parse_settings(RailsConfig.from_path(str(config_path)).custom_data)
            ids.append(config_path.name)
        except SettingsError as exc:
            problems.append(f"config '{config_path.name}': {exc}")
    if problems:
        raise SettingsError("\n".join(problems))
    return ids


def init(app: Any) -> None:
    ids = validate_configs(Path(app.rails_config_path))
    log.info("railstack settings valid for configs: %s", ", ".join(ids))
