"""``railstack serve CONFIG_OR_ROOT``: ``nemoguardrails server`` with railstack's HTTP layer always in
front, whether it is given one config dir or a directory of them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

ROOT_HOOK = "from railstack.http.install import init  # noqa: F401\n"


class CannotServe(ValueError):
    """The path is neither a config dir nor a directory of them that railstack can serve."""


def _is_config(path: Path) -> bool:
    return (path / "config.yml").is_file() or (path / "config.yaml").is_file()


def served_root(path: Path, where: Path) -> tuple[Path, Optional[str]]:
    """The directory of configs to give NeMo's server, and the default config id. A single config
    dir, or a root without railstack's root ``config.py``, is served from a root made in ``where``
    that links its configs and adds that ``config.py``."""
    path = path.resolve()
    if _is_config(path):
        configs, default = [path], path.name
    else:
        configs, default = sorted(p for p in path.iterdir() if p.is_dir() and _is_config(p)), None
        if not configs:
            raise CannotServe(f"{path} holds no config.yml and no config dirs")
        own_hook = path / "config.py"
        if own_hook.is_file():
            if "railstack.http.install" in own_hook.read_text(encoding="utf-8"):
                return path, None
            raise CannotServe(
                f"{own_hook} is a server-level config.py of your own: add `{ROOT_HOOK.split('  #')[0]}` to it "
                "(and call it from your init), then serve the directory"
            )
    for config in configs:
        (where / config.name).symlink_to(config, target_is_directory=True)
    (where / "config.py").write_text(ROOT_HOOK)
    return where, default


def serve(path: Path, port: int, default_config_id: Optional[str]) -> int:
    env = {**os.environ, "NEMO_GUARDRAILS_NO_USAGE_STATS": os.environ.get("NEMO_GUARDRAILS_NO_USAGE_STATS", "1")}
    with tempfile.TemporaryDirectory(prefix="railstack-serve-") as tmp:
        root, default = served_root(path, Path(tmp))
        default = default_config_id or default
        args = [sys.executable, "-m", "nemoguardrails", "server", "--config", str(root), "--port", str(port),
                "--disable-chat-ui", *(["--default-config-id", default] if default else [])]
        server = subprocess.Popen(args, env=env)
        # A stop meant for `railstack serve` (docker stop, systemd, Ctrl-C) must stop the server too.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda signum, _frame: server.send_signal(signum))
        return server.wait()
