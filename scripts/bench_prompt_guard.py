#!/usr/bin/env python3
"""Prompt Guard throughput: railstack's engine against NeMo 0.24's `hf_classifier` local backend.

    NEMO_GUARDRAILS_NO_USAGE_STATS=1 python scripts/bench_prompt_guard.py [--sizes 86m 22m] [--rounds 4]

Random-weight checkpoints of the real Prompt Guard 2 sizes (86M: mDeBERTa-v3-base, vocab 251000;
22M: DeBERTa-v3-xsmall, vocab 128100) are built and saved, then loaded by both sides from the
same directory. Each round sends --concurrency requests of ~100 words at once; railstack's side
goes through its micro-batcher with the score cache off (every text is scored). Reported:
texts/s and per-request p50/p99, and each engine's largest gap from the first one's over the
texts, of the score and of the logit margin (a random model's scores may all sit near 0 or 1)
(--engines: runtime:precision; onnx exports into a scratch cache, its time printed;
remote:tei is the remote engine against railstack's loopback TEI server on this machine).
Targets: CPU >= 3x NeMo; GPU >= 10x at 64 concurrent, and PG2-86M 512-token check p50 <= 10 ms
on an H100.
Run from the repo checkout (it reads ../shared/data).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NEMO_GUARDRAILS_NO_USAGE_STATS", "1")
REPO = Path(__file__).resolve().parent.parent


def build(size: str, where: Path) -> Path:
    from railstack.tools.random_models import DEBERTA_V3_XSMALL, MDEBERTA_V3_BASE, deberta_classifier

    # Trained on the evaluation set, so that ~100 words cost about as many tokens as with the real one.
    shape = {"86m": MDEBERTA_V3_BASE, "22m": DEBERTA_V3_XSMALL}[size]
    return deberta_classifier(where, ["LABEL_0", "LABEL_1"], seed=0, texts=texts(2000, words=None),
                              tokenizer_vocab=8000, **shape)


def texts(n: int, words: int | None = 100) -> list[str]:
    """``n`` texts of the evaluation set, cut to their first ``words`` words (whole when None)."""
    out = []
    with open(REPO.parent / "shared" / "data" / "injection_eval.jsonl") as f:
        for line in f:
            row = json.loads(line)["text"].split()
            if words is None or len(row) >= words:
                out.append(" ".join(row[:words]))
            if len(out) == n:
                return out
    raise RuntimeError("not enough long texts in injection_eval.jsonl")


async def rounds(check, batch: list[str], n: int) -> tuple[float, list[float]]:
    latencies: list[float] = []

    async def one(text: str) -> None:
        start = time.perf_counter()
        await check(text)
        latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(one(t) for t in batch[:2]))  # warm-up
    latencies.clear()
    start = time.perf_counter()
    for _ in range(n):
        await asyncio.gather(*(one(t) for t in batch))
    return n * len(batch) / (time.perf_counter() - start), latencies


async def jailbreak_scores(pg, batch: list[str]) -> list[float]:
    return [s.jailbreak for s, _ in await asyncio.gather(*(pg.scores(t) for t in batch))]


async def margins(pg, batch: list[str]) -> list[float]:
    """Each window's logit margin, its last label's minus its first's: where a random model's scores
    all sit near 0 or 1, their gaps show nothing, and the margins still show how far engines drift."""
    windows = [w for t in batch for w in pg.windows(t)]
    logits, rows, size = pg.runner.logits, [], pg.batcher.max_batch
    for at in range(0, len(windows), size):
        part = windows[at : at + size]
        rows += await logits(part) if inspect.iscoroutinefunction(logits) else logits(part)
    return [row[-1] - row[0] for row in rows]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def line(name: str, rate: float, lat: list[float]) -> str:
    return f"  {name:34s} {rate:8.1f} texts/s   p50 {pct(lat, 50) * 1000:8.1f} ms   p99 {pct(lat, 99) * 1000:8.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["86m", "22m"], choices=["22m", "86m"])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--engines", nargs="+", default=["auto:auto", "torch:auto", "torch:fp32", "onnx:int8", "remote:tei"],
                        help="runtime:precision of each railstack row (auto:auto is the default settings; remote:tei "
                             "is engine: remote against the loopback TEI server, which runs one input per forward pass "
                             "on this machine's CPU: the protocol's cost and the scores' agreement, not TEI's speed)")
    args = parser.parse_args()

    import torch
    from nemoguardrails.library.hf_classifier.backends import LocalBackend
    from nemoguardrails.library.hf_classifier.rail_config import LocalHFClassifierConfig

    from railstack.engines.loading import resolve_device
    from railstack.engines.sequence import layout
    from railstack.prompt_guard.model import PromptGuard
    from railstack.prompt_guard.settings import PromptGuardSettings
    from railstack.tools.tei import tei_server

    device = resolve_device(args.device)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {device} ({name}); {args.concurrency} concurrent requests of ~100 words")
    batch = texts(args.concurrency)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["RAILSTACK_CACHE_DIR"] = str(Path(tmp) / "cache")  # the random models' exports go with them
        for size in args.sizes:
            path = build(size, Path(tmp) / size)
            print(f"\n== Prompt Guard 2 {size.upper()} (random weights, real size) ==")
            results, first = {}, None
            for engine in args.engines:
                runtime, precision = engine.split(":")
                stack = contextlib.ExitStack()
                if runtime == "remote":  # the loopback TEI server over the same checkpoint, in this process
                    tei = stack.enter_context(tei_server(str(path)))
                    # The loopback answers one input per forward: a round of 64 outlasts the 5 s default.
                    where = {"engine": "remote", "remote": {"base_url": tei.base_url}, "timeout_s": 600}
                else:
                    where = {"runtime": runtime, "device": device, "precision": precision}
                settings = PromptGuardSettings(model=str(path), cache_size=0, **where)
                start = time.perf_counter()
                pg = PromptGuard(settings)
                loaded = time.perf_counter() - start
                tokens = statistics.mean(len(pg.token_ids(t)) for t in batch)
                default = ", the default" if engine == "auto:auto" else ""
                label = f"railstack ({type(pg.runner).__name__.removesuffix('Runner').lower()} {pg.precision}{default}, batched)"
                rate, lat = asyncio.run(rounds(pg.scores, batch, args.rounds))
                results[engine] = label, rate
                scores = asyncio.run(jailbreak_scores(pg, batch)), asyncio.run(margins(pg, batch))
                first = first or scores
                gap, drift = (max(abs(a - b) for a, b in zip(ours, theirs)) for ours, theirs in zip(scores, first))
                print(line(label, rate, lat) + f"   ({tokens:.0f} tokens/text, {pg.batcher.batches} forwards, "
                      f"load {loaded:.1f} s, max |score - first row's| {gap:.4f}, of the logit margin {drift:.3f})")
                window = pg.windows(" ".join(batch))[0]  # a full window: up to 512 tokens, cut where a word starts
                tokens = len(layout(pg.tokenizer).row(window)[0])
                forward = pg.probabilities
                once = (lambda: asyncio.run(forward([window]))) if inspect.iscoroutinefunction(forward) \
                    else (lambda: forward([window]))
                single = []
                for _ in range(10):
                    start = time.perf_counter()
                    once()
                    single.append(time.perf_counter() - start)
                print(f"  one {tokens}-token check ({label.split(' (')[1].split(',')[0]}):  p50 {pct(single, 50) * 1000:.1f} ms")
                del pg
                stack.close()
            options = {"device": 0} if device.startswith("cuda") else {}
            nemo = LocalBackend(LocalHFClassifierConfig(model=str(path), blocked_labels=["LABEL_1"], parameters=options))
            rate, lat = asyncio.run(rounds(nemo.classify, batch, max(1, args.rounds // 2)))
            print(line("NeMo hf_classifier (local pipeline)", rate, lat))
            for label, ours in results.values():
                print(f"  speed-up {label:34s} {ours / rate:5.2f}x   (target CPU >= 3x, GPU >= 10x)")


if __name__ == "__main__":
    main()
