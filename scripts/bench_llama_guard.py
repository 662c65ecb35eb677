#!/usr/bin/env python3
"""Llama Guard scoring cost: one prefill against generating the answer, and batching.

    NEMO_GUARDRAILS_NO_USAGE_STATS=1 python scripts/bench_llama_guard.py [--prompts 6] [--precision auto]

A random-weight model of the Llama Guard 3 1B size (the Llama 3.2 1B config: 16 layers, hidden
2048, vocab 128256) is built and saved, and loaded the way the rail loads a checkpoint. Its
tokenizer is trained on the safety evaluation set, so a prompt costs about as many tokens as
with the real one. Same prompts for every side:

- score: railstack's verdict, P(unsafe) from one prefill, with the policy prefix's key/value cache
  reused (the default) and without; on the safe path (threshold 1: no category decode) and on the
  unsafe path (threshold 0: every verdict unsafe, so the category line is decoded, as an unsafe
  verdict of the real model triggers);
- generate: `model.generate` greedy, stopping where a trained Llama Guard 3 stops: a logits
  processor makes the random model write the real answer tokens, `safe<|eot_id|>` (2 tokens) or
  `unsafe\nS1<|eot_id|>` (5 tokens: Llama 3's pre-tokenizer splits "\nS1" into "\n", "S", "1"),
  and generation ends at the end-of-turn token, so the baseline runs the real model's decode steps.
  railstack's category decode gets the same budget (category_tokens=4: "\nS1" and the end of turn),
  as random weights never write the end of turn themselves;
- 8 concurrent checks through the micro-batcher (one forward) against the same 8 one by one.

Targets (safe path): score >= 1.6x faster than generate on a CPU; on a GPU >= 5x, and 8 concurrent
checks <= 2.5x the time of one. The unsafe path has no target: it is reported. Verdicts of a random model are meaningless; the time is real.
Run from the repo checkout (it reads ../shared/data).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NEMO_GUARDRAILS_NO_USAGE_STATS", "1")
REPO = Path(__file__).resolve().parent.parent

UNSAFE_LINE = "\nS1"  # what a trained Llama Guard 3 writes after "unsafe" for one category


class Answer:
    """A logits processor that makes greedy decoding write ``tokens`` after the prompt: random
    weights do not answer as a trained guard, whose answer decides how many steps a decode runs."""

    def __init__(self, tokens: list[int], prompt_length: int):
        self.tokens, self.prompt_length = tokens, prompt_length

    def __call__(self, input_ids, scores):
        forced = scores.new_full(scores.shape, float("-inf"))
        forced[:, self.tokens[input_ids.shape[1] - self.prompt_length]] = 0.0
        return forced


def safety_texts(n: int) -> list[str]:
    with open(REPO.parent / "shared" / "data" / "safety_eval.jsonl") as f:
        rows = [json.loads(line)["text"] for line in f]
    return rows[:n]


def build(where: Path) -> Path:
    import torch

    from railstack.tools.random_models import LLAMA_3_2_1B, guard_lm

    # Llama 3.2 1B is what Llama Guard 3 1B is fine-tuned from.
    model, _ = guard_lm(where, tokenizer_vocab=16000, texts=safety_texts(2491), **LLAMA_3_2_1B)
    model.to(torch.bfloat16).save_pretrained(where)
    return where


def ms(seconds: list[float]) -> str:
    return f"p50 {1000 * statistics.median(seconds):8.1f} ms  mean {1000 * statistics.mean(seconds):8.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=6, help="prompts per measurement")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", help="an existing checkpoint dir instead of building one")
    args = parser.parse_args()

    import torch
    from transformers import LogitsProcessorList

    from railstack.llama_guard.classifier import SafetyModel
    from railstack.llama_guard.settings import LlamaGuardSettings

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.model) if args.model else build(Path(tmp) / "lg3-1b")
        guard = SafetyModel.load(LlamaGuardSettings(
            model=str(path), device=args.device, precision=args.precision, threshold=1.0, cache_size=0,
            max_batch=8, max_delay_ms=20,
        ))
        engine = guard.engine
        print(f"device {engine.device}, precision {engine.precision}, torch threads {torch.get_num_threads()}")
        texts = safety_texts(args.prompts + 8)
        prompts = [guard.prompts.fit((("user", t),), "user")[0][0][1] for t in texts]
        lengths = [len(p) for p in prompts[: args.prompts]]
        print(f"prompt tokens: median {statistics.median(lengths):.0f} (min {min(lengths)}, max {max(lengths)})")

        def timed(run, items) -> list[float]:
            out = []
            for item in items:
                start = time.perf_counter()
                run(item)
                out.append(time.perf_counter() - start)
            return out

        def sync() -> None:
            if engine.device.startswith("cuda"):
                torch.cuda.synchronize()

        def score(ids, threshold: float = 1.0) -> None:
            engine.forward([(ids, threshold)])
            sync()

        def flagged(ids) -> None:
            score(ids, 0.0)

        tokenizer = engine.tokenizer
        eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
        line = tokenizer(UNSAFE_LINE, add_special_tokens=False)["input_ids"]
        answers = {"safe": [engine.answer.safe, eot], "unsafe": [engine.answer.unsafe, *line, eot]}
        engine.category_tokens = len(line) + 1  # the real model's category decode: the line and the end of turn
        print(f"real answers as generated: safe {len(answers['safe'])} tokens, unsafe {len(answers['unsafe'])} tokens")

        def generate(ids, answer: str = "safe") -> None:
            ids_t, mask, _ = engine._padded([ids])
            tokens = answers[answer]
            with torch.inference_mode():
                out = engine.model.generate(
                    input_ids=ids_t, attention_mask=mask, max_new_tokens=len(tokens), do_sample=False,
                    pad_token_id=engine.pad_id, eos_token_id=eot,
                    logits_processor=LogitsProcessorList([Answer(tokens, ids_t.shape[1])]),
                )
            sync()
            assert out[0, ids_t.shape[1] :].tolist() == tokens  # the real model's decode steps, no more

        def generate_unsafe(ids) -> None:
            generate(ids, "unsafe")

        score(prompts[0]), flagged(prompts[0]), generate(prompts[0]), generate_unsafe(prompts[0])  # warm-up
        decodes = engine.decodes
        one, one_unsafe = timed(score, prompts[: args.prompts]), timed(flagged, prompts[: args.prompts])
        assert engine.decodes - decodes == args.prompts  # the unsafe path did decode its category lines
        prefixes, engine.prefixes = engine.prefixes, {}  # the same, prefilling each whole prompt
        whole, whole_unsafe = timed(score, prompts[: args.prompts]), timed(flagged, prompts[: args.prompts])
        engine.prefixes = prefixes
        gen, gen_unsafe = timed(generate, prompts[: args.prompts]), timed(generate_unsafe, prompts[: args.prompts])
        shared = statistics.median(len(p) for p in prefixes)
        for path, cached, bare, baseline in (("safe", one, whole, gen), ("unsafe", one_unsafe, whole_unsafe, gen_unsafe)):
            print(f"-- {path} verdict --")
            print(f"score, policy prefix cached ({shared:.0f} tokens)   {ms(cached)}")
            print(f"score, whole prompt                      {ms(bare)}")
            print(f"generate until the real answer ends      {ms(baseline)}")
            print(f"speedup over generate: {statistics.median(baseline) / statistics.median(cached):.2f}x with the prefix "
                  f"cache, {statistics.median(baseline) / statistics.median(bare):.2f}x without"
                  + ("   (target >= 1.6x CPU, >= 5x GPU)" if path == "safe" else ""))

        eight = [(("user", t),) for t in texts[args.prompts : args.prompts + 8]]

        async def concurrent() -> float:
            start = time.perf_counter()
            await asyncio.gather(*(guard.assess(d, "user") for d in eight))
            return time.perf_counter() - start

        print(f"their prompt tokens: {sorted(len(guard.prompts.fit(d, 'user')[0][0][1]) for d in eight)}")
        batches = engine.batcher.batches
        together = asyncio.run(concurrent())
        ran = engine.batcher.batches - batches
        apart = sum(timed(score, [guard.prompts.fit(d, "user")[0][0][1] for d in eight]))
        single = statistics.median(one)
        print(f"8 concurrent checks, batched ({ran} forward): {1000 * together:8.1f} ms = {together / single:.2f}x one check")
        print(f"8 checks one by one:                 {1000 * apart:8.1f} ms = {apart / single:.2f}x one check")
        print("(target on a GPU: 8 concurrent <= 2.5x one check)")


if __name__ == "__main__":
    main()
