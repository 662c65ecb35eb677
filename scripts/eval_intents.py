#!/usr/bin/env python3
"""Calibrate and evaluate the intents rail (the Colang topic rail) on a labelled set.

    NEMO_GUARDRAILS_NO_USAGE_STATS=1 python scripts/eval_intents.py \
        [--config configs/seed] [--data scripts/data/topic_competitors.jsonl] [--max-fp 0.01]

Each row is scored as the rail scores a message (the highest cosine between the message, or one of
its sentences, and any example of the config's refused intents). The threshold is chosen on the
``dev`` rows only: the lowest that flags at most ``--max-fp`` of the dev negatives. Recall and
false positives are then reported on the ``heldout`` rows, per kind, at that threshold and at the
config's own, and, for comparison, those of the ``topic`` rail's deny-list of the competitors' names.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("NEMO_GUARDRAILS_NO_USAGE_STATS", "1")

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "scripts" / "data" / "topic_competitors.jsonl"


async def scores(config_dir: Path, texts: list[str]) -> tuple[list[float], float]:
    """The rail's score of each text, and the config's threshold."""
    from railstack.core import Runtime
    from railstack.intents.check import Index, parts_of
    from railstack.nemo.flows import config_intents, config_settings, load_config

    config = load_config(config_dir)
    settings = config_settings(config)
    index = Index(Runtime(settings, config_dir.name, config_intents(config)))
    found: list[float] = []
    for start in range(0, len(texts), 64):  # as many at once as the engine's stage admits
        batch = texts[start : start + 64]
        nearest = await asyncio.gather(*(index.nearest(parts_of(t, settings.intents.max_parts)) for t in batch))
        found += [similarity for similarity, _ in nearest]
    return found, settings.intents.threshold


async def denied(texts: list[str], terms: list[str]) -> list[bool]:
    """Whether railstack's ``topic`` deny-list of ``terms`` refuses each text, for comparison."""
    from railstack.core import Runtime
    from railstack.settings import parse_settings

    runtime = Runtime(parse_settings({"railstack": {"topic": {"deny": terms}}}), "deny-list")
    runtime.prepare(["topic"])
    return [(await runtime.decide(["topic"], source="input", text=t))[1] is not None for t in texts]


def calibrate(scored: list[tuple[dict, float]], max_fp: float) -> float:
    """The lowest threshold (just above a negative's score) that flags at most ``max_fp`` of the negatives."""
    negatives = sorted((s for row, s in scored if row["label"] != "competitors"), reverse=True)
    allowed = int(max_fp * len(negatives))
    return round(negatives[allowed] + 1e-3, 3) if allowed < len(negatives) else 0.0


def table(scored: list[tuple[dict, float]], threshold: float) -> list[str]:
    by_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row, score in scored:
        by_kind[row["kind"]][0] += 1
        by_kind[row["kind"]][1] += score >= threshold
    lines = ["| kind | rows | refused |", "|---|---:|---:|"]
    for kind, (n, hit) in sorted(by_kind.items()):
        lines.append(f"| {kind} | {n} | {100 * hit / n:.1f}% |")
    positives = [s >= threshold for row, s in scored if row["label"] == "competitors"]
    negatives = [s >= threshold for row, s in scored if row["label"] != "competitors"]
    lines.append(f"| **recall** (competitors) | {len(positives)} | {100 * sum(positives) / len(positives):.1f}% |")
    share = 100 * sum(negatives) / len(negatives)
    lines.append(f"| **false positives** (all others) | {len(negatives)} | {share:.1f}% |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "seed")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--max-fp", type=float, default=0.01, help="share of dev negatives the threshold may flag")
    parser.add_argument("--deny", nargs="*", default=["Globex", "Initech"],
                        help="also report the topic rail's deny-list of these names on the held-out rows")
    parser.add_argument("--show", type=int, default=0, help="print the N dev rows nearest the threshold (dev only)")
    args = parser.parse_args()

    rows = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()]
    found, configured = asyncio.run(scores(args.config, [row["text"] for row in rows]))
    dev = [(row, s) for row, s in zip(rows, found) if row["split"] == "dev"]
    heldout = [(row, s) for row, s in zip(rows, found) if row["split"] == "heldout"]
    chosen = calibrate(dev, args.max_fp)
    print(f"{args.config.name}: threshold for <= {100 * args.max_fp:g}% dev false positives: {chosen} "
          f"(the config's: {configured:g})")
    for name, threshold in (("calibrated", chosen), ("configured", configured)):
        print(f"\nheld-out split, {name} threshold {threshold:g}:")
        print("\n".join(table(heldout, threshold)))
    if args.deny:
        hits = asyncio.run(denied([row["text"] for row, _ in heldout], args.deny))
        print(f"\nheld-out split, the topic rail's deny-list {args.deny} instead:")
        print("\n".join(table([(row, float(hit)) for (row, _), hit in zip(heldout, hits)], 1.0)))
    if args.show:
        print(f"\ndev rows nearest {chosen}:")
        for row, score in sorted(dev, key=lambda pair: abs(pair[1] - chosen))[: args.show]:
            print(f"  {score:.3f} {row['label']:11s} {row['text'][:100]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
