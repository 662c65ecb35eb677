#!/usr/bin/env python3
"""The overheads the README quotes: the cheap tier's cost per request, and NeMo's own per input
flow, per message and for its input-rail machinery.

    NEMO_GUARDRAILS_NO_USAGE_STATS=1 python scripts/bench_overheads.py [--runs 30]

Cheap tier (in-process, as the HTTP layer runs it before NeMo: every field of the request): a chat
turn, a message at the 32k-character cap, a chat with five and with thirty tools. NeMo (in-process
``LLMRails.generate_async`` against the loopback main model, railstack's packaged cheap-tier flows):
one input flow against two (per flow), one message against fifty (per message), and input rails
on against off (the machinery railstack's HTTP layer lets NeMo skip). Medians of --runs, in ms.
"""

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NEMO_GUARDRAILS_NO_USAGE_STATS", "1")


NOUNS = ("weather", "flight", "invoice", "order", "calendar event", "customer", "shipment", "report")


def tools(n: int) -> list[dict]:
    """``n`` function tools of an ordinary shape: a description and five described parameters."""

    def prop(i: int, j: int) -> dict:
        return {"type": "string", "description": f"The {NOUNS[(i + j) % len(NOUNS)]} identifier, as shown in the app."}

    return [{"type": "function", "function": {
        "name": f"tool_{i}", "description": f"Look up the {NOUNS[i % len(NOUNS)]} details for the signed-in user.",
        "parameters": {"type": "object", "properties": {f"arg_{j}": prop(i, j) for j in range(5)}},
    }} for i in range(n)]


async def cheap_tier(runs: int) -> None:
    from railstack.core import Runtime, fields
    from railstack.settings import parse_settings

    runtime = Runtime(parse_settings({"railstack": {}}))
    runtime.prepare(["heuristics"])
    turn = [{"role": "user", "content": "What is the capital of France, and what is it known for?"}]
    cases = {
        "a chat turn": (turn, []),
        "one 32k-character message": ([{"role": "user", "content": ("The quick brown fox jumps. " * 1300)[:32000]}], []),
        "a chat turn + 5 tools": (turn, [("tools", tools(5))]),
        "a chat turn + 30 tools": (turn, [("tools", tools(30))]),
    }
    print(f"cheap tier (heuristics, every field), median of {runs}:")
    for name, (messages, params) in cases.items():
        check = fields.input_check(runtime, messages, params)
        times = []
        for _ in range(runs + 1):
            start = time.perf_counter()
            decisions, blocker = await check(["heuristics"])
            times.append(1000 * (time.perf_counter() - start))
        assert blocker is None, decisions  # a benign request: the whole tier ran
        print(f"  {name:28s} {statistics.median(times[1:]):7.2f} ms")


def nemo_config(where: Path, base_url: str, flows: list[str]) -> Path:
    where.mkdir(parents=True)
    (where / "config.yml").write_text(
        "models:\n  - type: main\n    engine: openai\n    model: main\n"
        f"    parameters: {{base_url: \"{base_url}\", api_key: EMPTY, max_retries: 0}}\npassthrough: true\n"
        f"rails:\n  input:\n    flows: [{', '.join(flows)}]\ncustom_data:\n  railstack: {{}}\n"
    )
    (where / "config.py").write_text("from railstack.nemo import init  # noqa: F401\n")
    return where


async def timed(rails, messages: list[dict], runs: int, options: dict) -> float:
    times = []
    for _ in range(runs + 1):
        start = time.perf_counter()
        await rails.generate_async(messages=messages, options=options)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times[1:])


async def nemo(runs: int) -> None:
    from nemoguardrails import LLMRails

    from railstack.nemo.flows import load_config
    from railstack.tools.loopback import LoopbackModel

    model = LoopbackModel().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            one = LLMRails(load_config(nemo_config(Path(tmp) / "one", model.base_url, ["railstack heuristics"])))
            two = LLMRails(load_config(nemo_config(
                Path(tmp) / "two", model.base_url, ["railstack admission", "railstack heuristics"])))
            turn = [{"role": "user", "content": "What is the capital of France?"}]
            long = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"Message {i} of a long chat."}
                    for i in range(49)] + turn
            on, off = {"rails": {"input": True}}, {"rails": {"input": False}}
            t_one, t_two = await timed(one, turn, runs, on), await timed(two, turn, runs, on)
            t_long = await timed(one, long, runs, on)
            t_off = await timed(one, turn, runs, off)
    finally:
        model.stop()
    print(f"NeMo generate_async (loopback main model, 0 ms), median of {runs}:")
    print(f"  1 input flow {t_one:.1f} ms, 2 flows {t_two:.1f} ms: {t_two - t_one:.1f} ms per flow")
    print(f"  1 message {t_one:.1f} ms, 50 messages {t_long:.1f} ms: {(t_long - t_one) / 49:.2f} ms per message")
    print(f"  input rails on {t_one:.1f} ms, off {t_off:.1f} ms: {t_one - t_off:.1f} ms of input-rail machinery "
          "(the heuristics' own time, well under 1 ms, included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU cores")
    asyncio.run(cheap_tier(args.runs))
    asyncio.run(nemo(args.runs))


if __name__ == "__main__":
    main()
