#!/usr/bin/env python3
"""Per-response cost of the grounded hallucination check against NeMo's `self check hallucination`.

    NEMO_GUARDRAILS_NO_USAGE_STATS=1 python scripts/bench_hallucination.py [--requests 8] [--latency 0.3]

The same questions and retrieved contexts (HaluEval QA rows) go through three LLMRails configs
around one loopback OpenAI-compatible main model that answers after --latency seconds:
no output rail (baseline); railstack's `railstack hallucination` in grounded mode on a
random-weight NLI model of the default checkpoint's size (DeBERTa-v3-base: 12 layers, hidden
768, vocab 128100), once per --engines runtime:precision (torch:auto was the default before
ONNX Runtime; onnx exports into a scratch cache during the warm-up; remote:tei is engine: remote
against railstack's loopback TEI server over the same checkpoint, in this process: the protocol's
cost, not TEI's speed); NeMo 0.24's `self check hallucination` action (two extra answers, then a judge
call), called after each answer as its flow calls it. Reported per response: extra main-model calls and latency added over the baseline,
and each railstack row's speed-up of the added latency over the first one's (goal: the default
on a CPU >= 2x faster than torch's).
Verdicts of a random model are meaningless; its time is real.
Run from the repo checkout (it reads ../shared/data).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NEMO_GUARDRAILS_NO_USAGE_STATS", "1")
REPO = Path(__file__).resolve().parent.parent

NEMO_PROMPT = (
    "prompts:\n  - task: self_check_hallucination\n    content: |-\n"
    "      You are given a task to identify if the hypothesis is in agreement with the context below.\n"
    "      You will only use the contents of the context and not rely on external knowledge.\n"
    '      Answer with yes/no. "context": {{ paragraph }} "hypothesis": {{ statement }} "agreement":\n'
)


def rows(n: int) -> list[dict]:
    with open(REPO.parent / "shared" / "data" / "hallucination_eval.jsonl") as f:
        return [json.loads(line) for line in f][:n]


def config(where: Path, base_url: str, output: str, railstack: str = "{}", extra: str = "") -> Path:

    where.mkdir(parents=True)
    # No passthrough: NeMo 0.24 takes a context (the retrieved chunks) only when it builds the prompt.
    (where / "config.yml").write_text(
        "models:\n  - type: main\n    engine: openai\n    model: main\n"
        f"    parameters: {{base_url: \"{base_url}\", api_key: EMPTY, max_retries: 0, timeout: 60}}\n"
        f"rails:\n  output:\n    flows: [{output}]\n" + extra + f"custom_data:\n  railstack: {railstack}\n"
    )
    (where / "config.py").write_text("from railstack.nemo import init  # noqa: F401\n")
    return where


async def measure(app, model, items: list[dict], nemo_check: bool = False) -> tuple[list[float], float]:
    from nemoguardrails.library.hallucination.actions import self_check_hallucination

    seconds, before = [], model.calls
    for row in items:
        messages = [
            {"role": "context", "content": {"relevant_chunks": row["context"]}},
            {"role": "user", "content": row["question"]},
        ]
        start = time.perf_counter()
        res = await app.generate_async(messages=messages)
        if nemo_check:
            # NeMo's rail as its flow runs it when the turn has a bot prompt to sample again. Its
            # flow cannot be used here: in this generation-mode config NeMo sets no
            # `_last_bot_prompt`, and the action then passes every answer unchecked.
            await self_check_hallucination(
                llm=app.llm, llm_task_manager=app.runtime.llm_task_manager, config=app.config,
                context={"bot_message": res["content"], "_last_bot_prompt": row["question"]},
            )
        seconds.append(time.perf_counter() - start)
    return seconds, (model.calls - before) / len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.3, help="the main model's seconds per answer")
    parser.add_argument("--engines", nargs="+", default=["torch:auto", "onnx:fp32", "onnx:int8", "remote:tei"],
                        help="runtime:precision of each railstack row")
    args = parser.parse_args()

    from nemoguardrails import LLMRails, RailsConfig

    from railstack.tools.loopback import LoopbackModel
    from railstack.tools.random_models import DEBERTA_V3_BASE, deberta_classifier
    from railstack.tools.tei import tei_server

    items = rows(args.requests + 1)
    model = LoopbackModel(reply=items[0]["answer"], latency_s=args.latency).start()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as servers:
        tmp = Path(tmp)
        os.environ["RAILSTACK_CACHE_DIR"] = str(tmp / "cache")  # the random model's exports go with it
        texts = [r["context"] for r in rows(1000)]
        nli = deberta_classifier(tmp / "nli", ["entailment", "neutral", "contradiction"], seed=0, texts=texts,
                                 tokenizer_vocab=8000, **DEBERTA_V3_BASE)
        sides = {"no output rail": config(tmp / "base", model.base_url, "")}
        for engine in args.engines:
            runtime, precision = engine.split(":")
            if runtime == "remote":
                tei = servers.enter_context(tei_server(str(nli)))
                where = 'engine: remote, remote: {base_url: "%s"}' % tei.base_url
            else:
                where = f"runtime: {runtime}, precision: {precision}"
            sides[f"railstack grounded ({runtime} {precision})"] = config(
                tmp / engine.replace(":", "-"), model.base_url, "railstack hallucination",
                '{hallucination: {model: "%s", mode: grounded, %s}}' % (nli, where))
        sides["NeMo self check hallucination"] = config(tmp / "nemo", model.base_url, "", extra=NEMO_PROMPT)

        async def run_all() -> dict:  # one event loop: NeMo's model clients belong to the loop they start on
            results = {}
            for name, path in sides.items():
                app = LLMRails(RailsConfig.from_path(str(path)))
                nemo = name.startswith("NeMo")
                await measure(app, model, items[:1], nemo)  # warm-up
                results[name] = await measure(app, model, items[1:], nemo)
            return results

        results = asyncio.run(run_all())
    model.stop()
    base_p50 = statistics.median(results["no output rail"][0])
    base_calls = results["no output rail"][1]
    print(f"main model latency {args.latency:g} s, {args.requests} responses each, sequential")
    print(f"{'':38s} {'p50 ms':>9s} {'added ms':>9s} {'main-model calls':>17s} {'extra calls':>12s}")
    first = None
    for name, (seconds, calls) in results.items():
        p50 = statistics.median(seconds)
        added = p50 - base_p50
        speed_up = ""
        if name.startswith("railstack"):
            first = first or added
            speed_up = f"   {first / added:5.2f}x the first railstack row's speed (goal >= 2x)"
        print(f"{name:38s} {1000 * p50:9.1f} {1000 * added:9.1f} {calls:17.1f} {calls - base_calls:12.1f}{speed_up}")


if __name__ == "__main__":
    main()
