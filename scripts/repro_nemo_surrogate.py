#!/usr/bin/env python3
"""Reproduce the lone-surrogate poisoning of bare NeMo Guardrails 0.24.1's server, without railstack.

    NEMO_GUARDRAILS_NO_USAGE_STATS=1 python scripts/repro_nemo_surrogate.py

Serves a plain NeMo config (a main model at a loopback stand-in, no rails, no railstack) with
`nemoguardrails server`, in single-config mode and in multi-config mode (two configs), and sends:
a benign request, one whose message is a lone surrogate ("\\ud800" in the JSON), then benign ones
again (to the same config and, in multi-config mode, to the other). Prints each status; exits 0
when every benign request after the surrogate failed (the poisoning reproduced), 1 otherwise.

railstack's own configs cannot show it under bare NeMo: without railstack's HTTP layer they refuse
every request already (see "Serving" in the README).
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from railstack.tools.loopback import LoopbackModel

os.environ.setdefault("NEMO_GUARDRAILS_NO_USAGE_STATS", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plain_config(path: Path, base_url: str) -> Path:
    path.mkdir(parents=True)
    (path / "config.yml").write_text(
        "models:\n  - type: main\n    engine: openai\n    model: main\n"
        f"    parameters: {{base_url: \"{base_url}\", api_key: EMPTY, max_retries: 0}}\npassthrough: true\n"
    )
    return path


def request(url: str, config_id: str, content: str) -> int:
    # Formatted, not json.dumps: the escape must reach the server as sent, for its JSON parser to decode.
    body = '{"model": "main", "guardrails": {"config_id": "%s"}, "messages": [{"role": "user", "content": "%s"}]}'
    res = httpx.post(f"{url}/v1/chat/completions", content=(body % (config_id, content)).encode(),
                     headers={"content-type": "application/json"}, timeout=60)
    return res.status_code


def trial(mode: str, base_url: str, where: Path) -> bool:
    root = where / mode
    first = plain_config(root / "first", base_url)
    plain_config(root / "second", base_url)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(where / f"{mode}.log", "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "nemoguardrails", "server", "--config", str(first if mode == "single" else root),
             "--port", str(port), "--disable-chat-ui"], stdout=log, stderr=subprocess.STDOUT, cwd=where,
            env={**os.environ, "NEMO_GUARDRAILS_NO_USAGE_STATS": "1"},
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{url}/v1/rails/configs", timeout=2)
                break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start; its log: {where / f'{mode}.log'}")
                time.sleep(0.3)
        steps = [("benign", "first", "Hello"), ("lone surrogate", "first", "\\ud800"),
                 ("benign again", "first", "Hello"), ("benign, third time", "first", "What is the capital of France?")]
        if mode == "multi":
            steps.append(("benign, the other config", "second", "Hello"))
        statuses = [(name, config_id, request(url, config_id, text)) for name, config_id, text in steps]
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"{mode}-config mode:")
    for name, config_id, status in statuses:
        print(f"  {name:28s} config {config_id:7s} HTTP {status}")
    before, after = statuses[0][2], [status for _, _, status in statuses[2:]]
    return before == 200 and all(status >= 500 for status in after)


def main() -> int:
    model = LoopbackModel().start()
    try:
        with tempfile.TemporaryDirectory(prefix="nemo-surrogate-") as tmp:
            reproduced = [trial(mode, model.base_url, Path(tmp)) for mode in ("single", "multi")]
    finally:
        model.stop()
    print(f"poisoning reproduced: single-config {reproduced[0]}, multi-config {reproduced[1]}")
    return 0 if all(reproduced) else 1


if __name__ == "__main__":
    sys.exit(main())
