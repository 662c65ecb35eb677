#!/usr/bin/env python3
"""Evaluate the configured safety classifier (Llama Guard 3/4, ShieldGemma) on a labelled set.

    NEMO_GUARDRAILS_NO_USAGE_STATS=1 python scripts/eval_llama_guard.py \
        [--data ../shared/data/safety_eval.jsonl] [--config configs/default] [--model ID_OR_DIR] [--limit N]

Each row's text is judged as a user turn, exactly as the input rail judges it, with the engine
and policy the config names (``custom_data.railstack.llama_guard``; --model swaps the checkpoint,
RAILSTACK__LLAMA_GUARD__... variables work too). Rows labelled ``unsafe`` are positives. Reported:
ROC-AUC of the score, recall and false-positive rate at the configured threshold, per source and
per Llama Guard category (S1-S14, where the row has one), and how often the model named the
row's own category.
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
DEFAULT_DATA = REPO.parent / "shared" / "data" / "safety_eval.jsonl"


async def _judge(guard, text: str):
    from railstack.llama_guard.trimming import TurnTooLong

    try:
        return await guard.assess((("user", text),), "user")
    except TurnTooLong:
        return None  # the rail fails closed on it: counted as flagged, with no score


def table(title: str, groups: dict[str, list[tuple[bool, bool]]], what: str) -> None:
    print(f"\n{title}")
    print(f"  {'':58s} {'rows':>6s}  {what:>8s}")
    for name, pairs in sorted(groups.items()):
        print(f"  {name[:58]:58s} {len(pairs):6d}  {100 * sum(hit for _, hit in pairs) / len(pairs):7.2f}%")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--config", type=Path, default=None, help="config dir (default: packaged default)")
    parser.add_argument("--model", default=None, help="checkpoint to use instead of the config's")
    parser.add_argument("--limit", type=int, default=None, help="only the first N rows (a quick look)")
    args = parser.parse_args()

    from nemoguardrails import RailsConfig

    from railstack.tools.evaluation import in_batches, roc_auc
    from railstack.llama_guard.classifier import SafetyModel
    from railstack.paths import config_dir
    from railstack.settings import parse_settings

    settings = parse_settings(RailsConfig.from_path(str(args.config or config_dir("default"))).custom_data)
    lg = settings.llama_guard.model_copy(update={"cache_size": 0, **({"model": args.model} if args.model else {})})
    rows = [json.loads(line) for line in args.data.open(encoding="utf-8")][: args.limit]
    guard = SafetyModel.load(lg)
    print(f"{len(rows)} rows of {args.data.name}; {lg.model} ({guard.family.name}, {lg.engine} engine), "
          f"categories {','.join(c.code for c in guard.family.categories)}, threshold {lg.threshold:g}")
    found = asyncio.run(in_batches([r["text"] for r in rows], lambda t: _judge(guard, t), 32, "judged", "text"))

    flagged = [f is None or f.score >= lg.threshold for f in found]
    scores = [1.0 if f is None else f.score for f in found]
    positives = [s for r, s in zip(rows, scores) if r["label"] == "unsafe"]
    negatives = [s for r, s in zip(rows, scores) if r["label"] != "unsafe"]
    if positives and negatives:
        print(f"\nROC-AUC {roc_auc(positives, negatives):.4f}")
    too_long = sum(f is None for f in found)
    if too_long:
        print(f"{too_long} rows longer than max_prompt_tokens {lg.max_prompt_tokens}: flagged (fail-closed)")

    unsafe_recall = defaultdict(list)
    safe_fpr = defaultdict(list)
    by_category = defaultdict(list)
    named = defaultdict(list)
    for row, hit, f in zip(rows, flagged, found):
        if row["label"] == "unsafe":
            unsafe_recall[row["source"]].append((True, hit))
            unsafe_recall["ALL unsafe"].append((True, hit))
            code = row.get("llama_guard_category")
            if code:
                by_category[f"{code} {row.get('llama_guard_name') or ''}"].append((True, hit))
                if hit and f is not None:
                    named[code].append((True, code in {c for c, _ in f.categories}))
        else:
            safe_fpr[row["source"]].append((False, hit))
            safe_fpr["ALL safe"].append((False, hit))
    table(f"Recall on unsafe rows (score >= {lg.threshold:g}), per source", unsafe_recall, "recall")
    table("Recall per Llama Guard category (rows that have one)", by_category, "recall")
    table("Of the flagged rows, share whose own category the model named", named, "named")
    table("False-positive rate on safe rows, per source", safe_fpr, "FPR")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
