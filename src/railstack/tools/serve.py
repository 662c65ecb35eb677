"""``railstack serve CONFIG_OR_ROOT``: ``nemoguardrails server`` with railstack's HTTP layer always in
front, whether it is given one config dir or a directory of them.

A first run answers with no other step: when the user has named no main model
(``MAIN_MODEL_BASE_URL`` unset) and nothing answers at the loopback address the served configs
name as their main model's ``base_url`` (the packaged configs: 127.0.0.1:8000), it starts
railstack's loopback stand-in main model there for as long as it serves, and the server labels
itself and every answer as served by a stand-in (``railstack.http.ops``). ``MAIN_MODEL_BASE_URL``
set to anything, or ``--no-stand-in``, and no stand-in is ever started.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import urlsplit

import yaml

from railstack.http.ops import STAND_IN_ENV

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


_LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
STAND_IN_START_S = 20.0


def _main_model_urls(root: Path) -> Iterator[str]:
    """The main model's ``base_url`` each served config names in its YAML files (NeMo merges
    them all); a file that does not parse is the server's to report, not this."""
    for config in sorted(p for p in root.iterdir() if p.is_dir() and _is_config(p)):
        for yml in sorted([*config.glob("*.yml"), *config.glob("*.yaml")]):
            try:
                loaded = yaml.safe_load(yml.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError):
                continue
            models = loaded.get("models") if isinstance(loaded, dict) else None
            for model in models if isinstance(models, list) else []:
                if isinstance(model, dict) and model.get("type") == "main":
                    url = (model.get("parameters") or {}).get("base_url")
                    if isinstance(url, str):
                        yield url


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def stand_in_address(root: Path) -> Optional[str]:
    """The base URL to start the stand-in at: the loopback ``base_url`` the served configs share
    as their main model, when the user named no main model and nothing answers there. None when
    a stand-in is not wanted there: a real endpoint, several different ones, or one that answers."""
    if "MAIN_MODEL_BASE_URL" in os.environ:  # the user named a model: theirs, whatever its state
        return None
    urls = set(_main_model_urls(root))
    if len(urls) != 1:
        return None
    url = urls.pop()
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return None
    if parts.scheme != "http" or parts.hostname not in _LOOPBACK_HOSTS or port is None:
        return None
    return None if _answers(parts.hostname, port) else url


def _end_with_parent() -> None:
    # Neither the server nor the stand-in may outlive `railstack serve`, even one killed with SIGKILL.
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_stand_in(url: str) -> subprocess.Popen:
    """railstack's loopback main model at ``url``, once it accepts connections."""
    port = urlsplit(url).port
    proc = subprocess.Popen([sys.executable, "-m", "railstack.tools.loopback", str(port), "--stand-in"],
                            preexec_fn=_end_with_parent, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + STAND_IN_START_S
    while not _answers("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise CannotServe(f"the stand-in main model did not start at {url}; start your main model there, "
                              "or set MAIN_MODEL_BASE_URL to its address")
        time.sleep(0.05)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def serve(path: Path, port: int, default_config_id: Optional[str], stand_in: bool = True) -> int:
    env = {**os.environ, "NEMO_GUARDRAILS_NO_USAGE_STATS": os.environ.get("NEMO_GUARDRAILS_NO_USAGE_STATS", "1")}
    env.pop(STAND_IN_ENV, None)  # only this process says that the main model is a stand-in
    with tempfile.TemporaryDirectory(prefix="railstack-serve-") as tmp:
        root, default = served_root(path, Path(tmp))
        default = default_config_id or default
        args = [sys.executable, "-m", "nemoguardrails", "server", "--config", str(root), "--port", str(port),
                "--disable-chat-ui", *(["--default-config-id", default] if default else [])]
        url = stand_in_address(root) if stand_in else None
        model = start_stand_in(url) if url else None
        if url:
            env[STAND_IN_ENV] = url
            print(f"railstack: STAND-IN main model: MAIN_MODEL_BASE_URL is not set and nothing answered at {url}, "
                  "so railstack's loopback stand-in answers there (one canned reply, and No to NeMo's self-check "
                  "questions: not a real model). "
                  "Serve a real model with MAIN_MODEL_BASE_URL=http://HOST:PORT/v1; --no-stand-in turns this off.",
                  file=sys.stderr, flush=True)
        try:
            server = subprocess.Popen(args, env=env, preexec_fn=_end_with_parent)
            # A stop meant for `railstack serve` (docker stop, systemd, Ctrl-C) must stop the server too.
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, lambda signum, _frame: server.send_signal(signum))
            return server.wait()
        finally:
            if model is not None:
                _stop(model)
