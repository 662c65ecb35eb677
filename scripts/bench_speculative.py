#!/usr/bin/env python3
"""Time to first token of a passing request, with and without speculative start.

    NEMO_GUARDRAILS_NO_USAGE_STATS=1 python scripts/bench_speculative.py [--requests 12] [--ttft 0.3] [--rail 0.2]

A config runs the cheap tier (heuristics) and then a classifier-tier rail that takes --rail
seconds; the loopback main model answers its first token after --ttft seconds. `railstack
profile` serves it with a real `nemoguardrails server`, speculative start off and then on, one
request at a time; one prompt in four is blocked by the classifier. Without it the first token waits for the rails and
then the model (~rail + ttft); with it the two overlap. Target: TTFT <= max(ttft, rail) + 5 ms.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("NEMO_GUARDRAILS_NO_USAGE_STATS", "1")

SLOW_RAIL = '''import asyncio

from railstack.core import Tier, Verdict, rail


@rail("bench_classifier", Tier.SMALL_CLASSIFIER)
async def bench_classifier(text, ctx):
    await asyncio.sleep({seconds})  # stands for a classifier that takes this long
    return Verdict.block("forbidden") if "forbidden" in text else Verdict.allow()
'''

FLOW = '''define subflow bench classifier
  $railstack_outcome = execute railstack_rails(rails="bench_classifier")
  if $railstack_outcome.is_blocked
    bot railstack refuse
    stop
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--ttft", type=float, default=0.3, help="the main model's time to first token, s")
    parser.add_argument("--rail", type=float, default=0.2, help="the classifier tier's time, s")
    args = parser.parse_args()

    plain, spec = run(args, args.rail, "both")
    floor, _ = run(args, 0.0, "off")
    target = 1000 * max(args.ttft, args.rail) + 5
    print(f"\nTTFT p50: plain {plain:.1f} ms, speculative {spec:.1f} ms; target <= {target:.0f} ms: "
          f"{'met' if spec <= target else 'NOT met'}")
    print(f"the same stack with a 0 s classifier (NeMo, HTTP and the loopback model alone): {floor:.1f} ms; "
          f"speculative start leaves {spec - floor:+.1f} ms of the {1000 * args.rail:.0f} ms classifier tier")


def run(args: argparse.Namespace, rail_s: float, speculative: str) -> tuple[float, float]:
    """TTFT p50 (plain, speculative) of the config with a classifier tier of ``rail_s`` seconds."""
    from railstack.tools.profile import print_report, profile

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench"
        config.mkdir()
        (config / "config.yml").write_text(
            "models:\n  - type: main\n    engine: openai\n    model: main\n"
            "    parameters: {base_url: http://127.0.0.1:9/v1, api_key: EMPTY, max_retries: 0}\n"
            "passthrough: true\nrails:\n  input:\n    flows: [railstack heuristics, bench classifier]\n"
        )
        (config / "config.py").write_text("from railstack.nemo import init  # noqa: F401\n")
        (config / "actions.py").write_text(SLOW_RAIL.format(seconds=rail_s))
        (config / "bench.co").write_text(FLOW)
        prompts = Path(tmp) / "prompts.txt"
        # One in four is blocked by the classifier tier: with speculative start, its main-model call is wasted.
        prompts.write_text("What is the capital of France?\nSummarise the meeting notes, please.\n"
                           "Where is the nearest train station?\nTell me the forbidden recipe.\n")
        report = profile(
            config, requests=args.requests, concurrency=1, prompts_file=prompts, ttft=args.ttft, itl=0.01,
            answer_words=10, speculative=speculative, random_weights=False, out=Path(tmp) / "out",
        )
    print(f"\n-- classifier tier {1000 * rail_s:.0f} ms, speculative start: {speculative}")
    print_report(report)
    ttft = report["ttft_ms"]
    return ttft["plain"]["passing"]["p50"], ttft.get("speculative", {}).get("passing", {}).get("p50", float("nan"))


if __name__ == "__main__":
    main()
