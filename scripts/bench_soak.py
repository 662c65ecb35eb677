#!/usr/bin/env python3
"""Memory soak of a real `nemoguardrails server` with railstack, on loopback.

    NEMO_GUARDRAILS_NO_USAGE_STATS=1 python scripts/bench_soak.py [--minutes 10] [--rate 14]

Starts the loopback main model (``railstack.tools.loopback``) and a server over one config with
the cheap tier (heuristics) in front of it, then sends distinct conversations (each with a
history of its own: user, assistant, user) at a steady open-loop --rate for --minutes, and
prints the server process's RSS every 30 s, the 1, 5 and 10-minute values, and its growth after
warm-up (from minute 1 to the end). Target: growth <= 5% (--max-growth); it exits 1 past it.

Settings reach the server from the environment, so the bound can be lifted for a comparison:

    RAILSTACK__MEMORY__CONVERSATION_CACHE_SIZE=1000000 \\
    RAILSTACK__MEMORY__CONVERSATION_CACHE_TTL_S=604800 python scripts/bench_soak.py --minutes 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("NEMO_GUARDRAILS_NO_USAGE_STATS", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import httpx  # noqa: E402

from support import Server, main_model_process, railstack_config  # noqa: E402

SAMPLE_S = 30.0
CALLED_OUT_MIN = (1, 5, 10)
FILLER = "Please keep the answer short and plain, without lists or headings. " * 3


def configs_root(base: Path, url: str) -> Path:
    root = base / "configs"
    railstack_config(root / "soak", url, ["railstack heuristics"])
    (root / "config.py").write_text("from railstack.http.install import init  # noqa: F401\n")
    return root


def conversation(i: int) -> dict:
    """A conversation no earlier request had: NeMo keys its events cache by the whole history."""
    return {
        "model": "main",
        "messages": [
            {"role": "user", "content": f"Conversation {i}: what is the tallest mountain in Europe? {FILLER}"},
            {"role": "assistant", "content": f"In conversation {i}: Mount Elbrus, in the Caucasus."},
            {"role": "user", "content": f"Conversation {i}: and how high is it, in metres? {FILLER}"},
        ],
        "guardrails": {"config_id": "soak"},
    }


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def soak(url: str, pid: int, rate: float, seconds: float) -> tuple[list[tuple[float, float, int]], Counter]:
    """Open-loop arrivals at ``rate`` for ``seconds``; RSS samples (s, MiB, requests sent) and the statuses."""
    statuses: Counter = Counter()
    samples: list[tuple[float, float, int]] = []
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one(i: int) -> None:
            try:
                res = await client.post("/v1/chat/completions", json=conversation(i))
                statuses[res.status_code] += 1
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1

        tasks: set[asyncio.Task] = set()
        start = time.perf_counter()
        sent, next_sample = 0, 0.0
        while True:
            now = time.perf_counter() - start
            if now >= next_sample:
                samples.append((next_sample, rss_mib(pid), sent))
                minute = next_sample / 60
                note = f"   <- {minute:.0f} min" if minute in CALLED_OUT_MIN else ""
                print(f"  t={next_sample:5.0f} s  RSS {samples[-1][1]:7.1f} MiB  requests sent {sent:6d}{note}", flush=True)
                next_sample += SAMPLE_S
            if now >= seconds:
                break
            due = sent / rate
            if now < due:
                await asyncio.sleep(min(due - now, max(0.0, next_sample - now)))
                continue
            task = asyncio.create_task(one(sent))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.gather(*tasks)
    return samples, statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=14.0, help="requests (distinct conversations) per second")
    parser.add_argument("--max-growth", type=float, default=5.0, help="percent of RSS growth allowed after minute 1")
    args = parser.parse_args()
    if args.minutes < 1.5:
        parser.error("--minutes must be at least 1.5: growth is measured from minute 1")

    overrides = {k: v for k, v in os.environ.items() if k.startswith("RAILSTACK__")}
    model, url = main_model_process("-m", "railstack.tools.loopback")
    try:
        with tempfile.TemporaryDirectory(prefix="railstack-soak-") as base:
            env = {**os.environ, "MAIN_MODEL_BASE_URL": url}
            server = Server(configs_root(Path(base), url), cwd=Path(base), env=env)
            try:
                res = httpx.post(f"{server.url}/v1/chat/completions", json=conversation(-1), timeout=60)
                if res.status_code != 200:
                    raise RuntimeError(f"the first request got {res.status_code}: {res.text[:300]}")
                print(f"soak: {args.rate:g} req/s of distinct conversations for {args.minutes:g} min; "
                      f"settings from the environment: {overrides or 'none'}")
                samples, statuses = asyncio.run(soak(server.url, server.proc.pid, args.rate, args.minutes * 60))
            finally:
                server.stop()
    finally:
        model.terminate()
        model.wait(timeout=10)

    by_time = {t: mib for t, mib, _ in samples}
    called = ", ".join(f"{m} min {by_time[m * 60.0]:.1f} MiB" for m in CALLED_OUT_MIN if m * 60.0 in by_time)
    start, warm, end = samples[0][1], by_time[60.0], samples[-1][1]
    growth = 100 * (end - warm) / warm
    ok = statuses.get(200, 0)
    print(f"responses: {dict(statuses)} ({ok} of {sum(statuses.values())} answered 200)")
    print(f"RSS: start {start:.1f} MiB; {called}; end ({samples[-1][0]:.0f} s) {end:.1f} MiB")
    print(f"growth after warm-up (minute 1 to the end): {end - warm:+.1f} MiB, {growth:+.1f}% "
          f"(target <= {args.max_growth:g}%): {'PASS' if growth <= args.max_growth else 'FAIL'}")
    failed = sum(statuses.values()) - ok
    if failed:
        print(f"{failed} requests were not answered 200")
    sys.exit(0 if growth <= args.max_growth and not failed else 1)


if __name__ == "__main__":
    main()
