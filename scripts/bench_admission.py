#!/usr/bin/env python3
"""Admission benchmark: decision cost, limit accuracy, and memory under a flood of client ids.

    NEMO_GUARDRAILS_NO_USAGE_STATS=1 python scripts/bench_admission.py [--duration 20] [--redis-url URL]

- decision cost p50/p99 of one admission decision, in-process and on Redis (loopback);
- accuracy: one client offered 10x its rate for --duration seconds; admitted count against
  burst + rate * t, for 1 process in-process and for 4 processes sharing Redis;
- memory: RSS growth after 1,000,000 distinct client ids through the in-process engine.
Without --redis-url it starts a redis-server of its own on a free loopback port.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import time

os.environ.setdefault("NEMO_GUARDRAILS_NO_USAGE_STATS", "1")

RATE_PER_S = 5.0
BURST = 20
OFFERED_FACTOR = 10


def settings(engine: str, redis_url: str = ""):
    from railstack.admission.settings import AdmissionSettings, RateTier

    tier = RateTier(requests_per_minute=RATE_PER_S * 60, request_burst=BURST, tokens_per_minute=10**9)
    extra = {"engine": "redis", "redis_url": redis_url} if engine == "redis" else {}
    return AdmissionSettings(enabled=True, default_tier=tier, **extra)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1]


async def decision_cost(engine: str, redis_url: str, n: int) -> tuple[float, float]:
    from railstack.admission.service import Admission

    adm = Admission(settings(engine, redis_url), f"bench-{engine}")
    for i in range(200):  # warm up connections and code paths
        await adm.decide(f"id:warm{i}", 10)
    samples = []
    for i in range(n):
        start = time.perf_counter_ns()
        await adm.decide(f"id:c{i % 1000}", 10)
        samples.append((time.perf_counter_ns() - start) / 1000)
    if engine == "redis":
        await adm.store.close()
    return percentile(samples, 50), percentile(samples, 99)


async def offer(engine: str, redis_url: str, start_at: float, duration: float, rate: float, scope: str) -> int:
    """Offer requests of one client at ``rate`` per second from ``start_at``; count admissions."""
    from railstack.admission.service import Admission

    adm = Admission(settings(engine, redis_url), scope)
    admitted, i = 0, 0
    await asyncio.sleep(max(0.0, start_at - time.time()))
    while True:
        due = start_at + i / rate
        if due >= start_at + duration:
            break
        await asyncio.sleep(max(0.0, due - time.time()))
        admitted += (await adm.decide("id:flood", 1)).allowed
        i += 1
    if engine == "redis":
        await adm.store.close()
    return admitted


def _offer_process(args) -> int:
    return asyncio.run(offer(*args))


def accuracy(engine: str, redis_url: str, processes: int, duration: float) -> tuple[int, float]:
    offered_rate = RATE_PER_S * OFFERED_FACTOR
    start_at = time.time() + 1.0
    scope = f"acc-{engine}-{time.time_ns()}"
    if processes == 1:
        admitted = asyncio.run(offer(engine, redis_url, start_at, duration, offered_rate, scope))
    else:
        with mp.get_context("spawn").Pool(processes) as pool:
            start_at = time.time() + 5.0  # spawned interpreters need a moment to import
            args = [(engine, redis_url, start_at, duration, offered_rate / processes, scope)] * processes
            admitted = sum(pool.map(_offer_process, args))
    # The last offer comes 1/offered_rate before the end, so t is the span of the offers, and
    # only whole requests are admitted.
    span = (int(offered_rate * duration) - 1) / offered_rate
    return admitted, math.floor(BURST + RATE_PER_S * span)


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def flood_memory(n: int) -> tuple[float, int]:
    import gc

    from railstack.admission.service import Admission

    adm = Admission(settings("local"), "flood")
    gc.collect()
    before = rss_mb()
    for i in range(n):
        await adm.decide(f"id:{i}", 1)
    gc.collect()
    return rss_mb() - before, adm.store.clients


def start_redis() -> tuple[subprocess.Popen, str]:
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server) and no --redis-url was given")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--flood", type=int, default=1_000_000)
    parser.add_argument("--redis-url")
    args = parser.parse_args()

    proc, redis_url = (None, args.redis_url) if args.redis_url else start_redis()
    try:
        print(f"machine: {os.cpu_count()} CPUs; limit {RATE_PER_S:g}/s, burst {BURST}, offered {OFFERED_FACTOR}x")
        for engine in ("local", "redis"):
            p50, p99 = asyncio.run(decision_cost(engine, redis_url, args.decisions))
            print(f"decision cost  {engine:5s}: p50 {p50:7.1f} us  p99 {p99:7.1f} us  ({args.decisions} decisions)")
        for engine, procs in (("local", 1), ("redis", 4)):
            admitted, expected = accuracy(engine, redis_url, procs, args.duration)
            error = (admitted - expected) / expected
            print(
                f"accuracy       {engine:5s} x{procs}: admitted {admitted} of {int(RATE_PER_S * OFFERED_FACTOR * args.duration)}"
                f" offered in {args.duration:g} s; burst + rate*t = {expected:g}; error {error:+.2%}"
            )
        grown, kept = asyncio.run(flood_memory(args.flood))
        print(f"memory         local: +{grown:.1f} MB RSS after {args.flood:,} distinct client ids ({kept:,} buckets kept)")
    finally:
        if proc is not None:
            proc.kill()


if __name__ == "__main__":
    main()
