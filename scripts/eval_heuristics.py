#!/usr/bin/env python3
"""Detection and false-positive rates of the heuristics tier, per source of a labelled set.

    NEMO_GUARDRAILS_NO_USAGE_STATS=1 python scripts/eval_heuristics.py \
        [--data ../shared/data/injection_eval.jsonl] [--config configs/no-models] [--markdown]

Rows labelled ``benign`` count towards the false-positive rate, every other label towards
detection. The heuristics settings come from the config's ``custom_data.railstack``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("NEMO_GUARDRAILS_NO_USAGE_STATS", "1")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "injection_eval.jsonl"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--config", type=Path, default=None, help="config dir (default: packaged no-models)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--show-fp", action="store_true", help="print the benign rows that were blocked")
    args = parser.parse_args()

    from nemoguardrails import RailsConfig

    from railstack.paths import config_dir
    from railstack.heuristics.matcher import Matcher
    from railstack.settings import parse_settings

    config = RailsConfig.from_path(str(args.config or config_dir("no-models")))
    matcher = Matcher.build(parse_settings(config.custom_data).heuristics)

    counts: dict[tuple[str, bool], list[int]] = defaultdict(lambda: [0, 0])
    with args.data.open(encoding="utf-8") as rows:
        for line in rows:
            row = json.loads(line)
            attack = row["label"] != "benign"
            verdict = matcher.scan(row["text"])
            bucket = counts[(row["source"], attack)]
            bucket[0] += 1
            bucket[1] += verdict.blocked
            if args.show_fp and verdict.blocked and not attack:
                print(f"FP [{row['source']}] {verdict.reason}: {row['text'][:160]!r}", file=sys.stderr)

    def total(attack: bool) -> tuple[int, int]:
        n = sum(v[0] for (_, a), v in counts.items() if a == attack)
        hit = sum(v[1] for (_, a), v in counts.items() if a == attack)
        return n, hit

    rows_out = [(src, "attack" if attack else "benign", n, hit) for (src, attack), (n, hit) in sorted(counts.items())]
    for attack in (True, False):
        n, hit = total(attack)
        rows_out.append(("ALL", "attack" if attack else "benign", n, hit))

    if args.markdown:
        print("| source | rows | label | blocked | rate |")
        print("|---|---:|---|---:|---:|")
        for src, label, n, hit in rows_out:
            print(f"| {src} | {n} | {label} | {hit} | {hit / n:.1%} |")
    else:
        for src, label, n, hit in rows_out:
            print(f"{src:45s} {label:7s} n={n:5d} blocked={hit:5d} rate={hit / n:7.2%}")
    n, hit = total(False)
    print(f"\nfalse-positive rate on benign rows: {hit / n:.2%} (target <= 1%)")
    n, hit = total(True)
    print(f"detection rate on attack rows: {hit / n:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
