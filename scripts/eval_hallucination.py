#!/usr/bin/env python3
"""Evaluate the configured hallucination check on HaluEval QA (context, question, answer).

    NEMO_GUARDRAILS_NO_USAGE_STATS=1 python scripts/eval_hallucination.py \
        [--data ../shared/data/hallucination_eval.jsonl] [--config configs/default] [--model ID_OR_DIR] \
        [--modes grounded self_consistency] [--main-model-url http://127.0.0.1:8000/v1 --main-model NAME] [--limit N]

Each row's answer is scored as the rail scores it, with the NLI checkpoint and settings the
config names (``custom_data.railstack.hallucination``; --model swaps the checkpoint). Grounded:
against the row's context. Self-consistency: against ``samples`` answers drawn (with ``n``) from
an OpenAI-compatible main model at --main-model-url for the row's question; skipped without one.
Rows labelled ``hallucinated`` are positives, scored 1 - the answer's support. Reported per
mode: ROC-AUC, and balanced accuracy at the configured threshold.
The runtime and precision are the settings' (say RAILSTACK__HALLUCINATION__RUNTIME=onnx
RAILSTACK__HALLUCINATION__PRECISION=int8 for ONNX Runtime in int8).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

os.environ.setdefault("NEMO_GUARDRAILS_NO_USAGE_STATS", "1")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hallucination_eval.jsonl"


async def answer_support(nli, settings, row: dict, samples: list[str] | None) -> float:
    from railstack.core.sentences import split_sentences
    from railstack.hallucination.sentences import claims

    judged = claims(split_sentences(row["answer"]) or [row["answer"]], row["question"], settings.short_claim_words)
    if samples is None:
        return min(s.entailed for s in await nli.support(row["context"], judged))
    per_sample = await asyncio.gather(*(nli.support(sample, judged) for sample in samples if sample.strip()))
    return min(1 - sum(nli.inconsistency(s[i]) for s in per_sample) / len(per_sample) for i in range(len(judged)))


async def run_mode(nli, settings, rows: list[dict], mode: str, client, main_model: str) -> list[float]:
    from railstack.tools.evaluation import in_batches

    async def one(row: dict) -> float:
        samples = None
        if mode == "self_consistency":
            drawn = await client.chat.completions.create(
                model=main_model, messages=[{"role": "user", "content": row["question"]}], n=settings.samples,
                temperature=settings.sample_temperature,
            )
            samples = [c.message.content or "" for c in drawn.choices]
        return await answer_support(nli, settings, row, samples)

    return await in_batches(rows, one, 16, mode, "answer")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--config", type=Path, default=None, help="config dir (default: packaged default)")
    parser.add_argument("--model", default=None, help="NLI checkpoint to use instead of the config's")
    parser.add_argument("--modes", nargs="+", default=["grounded", "self_consistency"],
                        choices=["grounded", "self_consistency"])
    parser.add_argument("--main-model-url", default=None, help="OpenAI-compatible endpoint for self-consistency samples")
    parser.add_argument("--main-model", default="main")
    parser.add_argument("--limit", type=int, default=None, help="only the first N rows (a quick look)")
    args = parser.parse_args()

    from nemoguardrails import RailsConfig

    from railstack.tools.evaluation import roc_auc
    from railstack.hallucination.nli import NLI
    from railstack.paths import config_dir
    from railstack.settings import parse_settings

    settings = parse_settings(RailsConfig.from_path(str(args.config or config_dir("default"))).custom_data)
    hs = settings.hallucination.model_copy(update={"cache_size": 0, **({"model": args.model} if args.model else {})})
    rows = [json.loads(line) for line in args.data.open(encoding="utf-8")][: args.limit]
    nli = NLI(hs)
    print(f"{len(rows)} rows of {args.data.name}; {hs.model} ({type(nli.runner).__name__} on {nli.device}, {nli.precision}), threshold {hs.threshold:g}")
    client = None
    if args.main_model_url:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(base_url=args.main_model_url, api_key=os.environ.get("OPENAI_API_KEY", "EMPTY"))
    for mode in args.modes:
        if mode == "self_consistency" and client is None:
            print("\nself_consistency: skipped (it samples a main model: give --main-model-url)")
            continue
        support = asyncio.run(run_mode(nli, hs, rows, mode, client, args.main_model))
        positives = [1 - s for r, s in zip(rows, support) if r["label"] == "hallucinated"]
        negatives = [1 - s for r, s in zip(rows, support) if r["label"] != "hallucinated"]
        recall = sum(s > 1 - hs.threshold for s in positives) / max(len(positives), 1)
        specificity = sum(s <= 1 - hs.threshold for s in negatives) / max(len(negatives), 1)
        print(f"\n{mode}: ROC-AUC {roc_auc(positives, negatives):.4f}; at threshold {hs.threshold:g}: "
              f"balanced accuracy {50 * (recall + specificity):.2f}% "
              f"(hallucinations caught {100 * recall:.2f}%, faithful answers passed {100 * specificity:.2f}%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
