#!/usr/bin/env python3
"""Evaluate the configured Prompt Guard checkpoint, and the input stack, on a labelled set.

    NEMO_GUARDRAILS_NO_USAGE_STATS=1 python scripts/eval_prompt_guard.py \
        [--data ../shared/data/injection_eval.jsonl] [--config configs/default] [--model ID_OR_DIR] \
        [--score jailbreak|injection]

Rows labelled ``benign`` are negatives, every other label positive. For the checkpoint that the
config names (``custom_data.railstack.prompt_guard.model``, or --model): ROC-AUC of the score,
the threshold that flags 1% of the benign rows, and per-source detection and false-positive
rates at the configured threshold; then the same rates for the whole input stack (heuristics,
then Prompt Guard), as the rails run it.
The runtime and precision are the settings' (say RAILSTACK__PROMPT_GUARD__RUNTIME=onnx
RAILSTACK__PROMPT_GUARD__PRECISION=int8 for ONNX Runtime in int8).
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
DEFAULT_DATA = REPO.parent / "shared" / "data" / "injection_eval.jsonl"


def rates(rows: list[dict], flagged: list[bool]) -> dict[tuple[str, str], tuple[int, int]]:
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for row, hit in zip(rows, flagged):
        bucket = counts[(row["source"], "attack" if row["label"] != "benign" else "benign")]
        bucket[0] += 1
        bucket[1] += hit
    return {k: (n, hit) for k, (n, hit) in sorted(counts.items())}


def print_rates(title: str, table: dict[tuple[str, str], tuple[int, int]]) -> None:
    print(f"\n{title}")
    print(f"  {'source':58s} {'rows':>6s}  {'rate':>7s}")
    for (source, kind), (n, hit) in table.items():
        what = "detected" if kind == "attack" else "false positives"
        print(f"  {source[:58]:58s} {n:6d}  {100 * hit / n:6.2f}%  {what}")
    for kind, what in (("attack", "detection"), ("benign", "false-positive rate")):
        n = sum(v[0] for (_, k), v in table.items() if k == kind)
        hit = sum(v[1] for (_, k), v in table.items() if k == kind)
        print(f"  {'ALL ' + kind:58s} {n:6d}  {100 * hit / max(n, 1):6.2f}%  {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--config", type=Path, default=None, help="config dir (default: packaged default)")
    parser.add_argument("--model", default=None, help="checkpoint to use instead of the config's")
    parser.add_argument("--score", choices=["jailbreak", "injection"], default="jailbreak",
                        help="jailbreak: how the input rail scores the conversation; injection: third-party data")
    args = parser.parse_args()

    from nemoguardrails import RailsConfig

    from railstack.tools.evaluation import in_batches, roc_auc, threshold_at_fpr
    from railstack.heuristics.matcher import Matcher
    from railstack.paths import config_dir
    from railstack.prompt_guard.model import PromptGuard
    from railstack.settings import parse_settings

    settings = parse_settings(RailsConfig.from_path(str(args.config or config_dir("default"))).custom_data)
    pg_settings = settings.prompt_guard.model_copy(update={"cache_size": 0, **({"model": args.model} if args.model else {})})
    threshold = getattr(pg_settings, f"{args.score}_threshold")
    rows = [json.loads(line) for line in args.data.open(encoding="utf-8")]
    pg = PromptGuard(pg_settings)
    print(f"{len(rows)} rows of {args.data.name}; {pg_settings.model} ({pg.scheme}, {type(pg.runner).__name__} on {pg.device}, {pg.precision}); "
          f"{args.score} score, threshold {threshold:g}")
    async def score(text: str) -> float:
        return getattr((await pg.scores(text))[0], args.score)

    scores = asyncio.run(in_batches([r["text"] for r in rows], score, 64, f"{args.score} scores", "text"))

    positives = [s for r, s in zip(rows, scores) if r["label"] != "benign"]
    negatives = [s for r, s in zip(rows, scores) if r["label"] == "benign"]
    print(f"\nROC-AUC {roc_auc(positives, negatives):.4f}")
    at_1 = threshold_at_fpr(negatives, 0.01)
    recall = sum(s >= at_1 for s in positives) / len(positives)
    print(f"threshold for 1% false positives on the benign rows: {at_1:.6f} (detection there {100 * recall:.2f}%)")

    flagged = [s >= threshold for s in scores]
    print_rates(f"Prompt Guard alone, {args.score} score >= {threshold:g}", rates(rows, flagged))
    matcher = Matcher.build(settings.heuristics)
    stack = [matcher.scan(r["text"]).blocked or hit for r, hit in zip(rows, flagged)]
    print_rates("Input stack: heuristics, then Prompt Guard", rates(rows, stack))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
