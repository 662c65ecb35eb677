"""The safety checkpoint in this process (transformers): checks of concurrent requests share
forward passes through the micro-batcher (left padding with position ids from the attention
mask, so a batched score equals a single one), the fixed policy start of a prompt is prefilled
once and its key/value cache reused, and only an unsafe verdict pays for a short greedy decode
of the category line."""

from __future__ import annotations

import copy
import inspect
from typing import Any, Optional, Sequence

from railstack.engines.batcher import Batcher
from railstack.engines.loading import load_checkpoint
from railstack.llama_guard.scoring import EngineSpec, Ids, Query, Score
from railstack.overload.stages import Stage

_END_OF_TURN = ("<|eot_id|>", "<|eot|>", "<end_of_turn>")


class LocalEngine:
    """``Engine[Query, Score]`` over the checkpoint loaded here."""

    def __init__(self, spec: EngineSpec, stage: Optional[Stage] = None):
        from transformers import AutoModelForCausalLM

        s = spec.settings
        self.family, self.answer, self.tokenizer = spec.family, spec.answer, spec.tokenizer
        self.category_tokens = s.category_tokens
        _, self.model, self.device, self.precision = load_checkpoint(s, "llama_guard", AutoModelForCausalLM, spec.tokenizer)
        tokenizer = spec.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = pad if pad is not None else 0
        self.stop_ids = sorted({i for i in (tokenizer.eos_token_id, *_end_of_turn_ids(tokenizer)) if i is not None})
        self.decodes = 0  # category lines decoded (for tests and benchmarks)
        self.batcher: Batcher[Query, Score] = Batcher(
            f"llama-guard:{s.model}",
            self.forward,
            length=lambda item: len(item[0]),
            # A CPU prefill is compute-bound: a batch costs as much as its rows padded to the longest
            # one by one, so batching only adds padding there (scripts/bench_llama_guard.py).
            max_batch=s.max_batch or (32 if self.device.startswith("cuda") else 1),
            max_delay_s=s.max_delay_ms / 1000,
            stage=stage,
        )
        # Newer transformers name the cache argument `cache`; older ones `past_key_values`.
        self._cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        self.prefixes: dict[Ids, Any] = {prefix: self._prefill(prefix) for prefix in spec.prefixes}
        self.forward([Query(spec.warmup, 1.0)])

    async def score(self, items: Sequence[Query]) -> list[Score]:
        return await self.batcher.score(items)

    def _prefill(self, prefix: Ids) -> Any:
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([prefix], device=self.device), use_cache=True)
        return getattr(out, self._cache_arg)

    def _padded(self, rows: list[Ids], before: int = 0) -> tuple[Any, Any, Any]:
        """Left-padded ids, attention mask and position ids: every row's last token is at the end,
        and its positions count from its own first token. ``before``: tokens already in a cache in
        front of every row (the mask covers them, the positions go on from them)."""
        import torch

        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), before + width), dtype=torch.long)
        mask[:, :before] = 1
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, before + width - len(row) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, before:]
        return ids.to(self.device), mask.to(self.device), positions.to(self.device)

    def _scores(self, rows: list[Ids], prefix: Optional[Ids]) -> list[float]:
        """P(unsafe) of each row: one forward pass, over the rows' own tokens after ``prefix`` when
        its cache is kept."""
        import torch

        extra: dict[str, Any]
        if prefix is not None:
            cache = copy.deepcopy(self.prefixes[prefix])  # the forward pass extends it
            cache.batch_repeat_interleave(len(rows))
            extra = {self._cache_arg: cache, "use_cache": True}
            rows = [row[len(prefix) :] for row in rows]
        else:
            extra = {"use_cache": False}
        ids, mask, positions = self._padded(rows, len(prefix or ()))
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1, **extra)
            return self.family.probability(out.logits[:, -1, :], self.answer).cpu().tolist()

    def forward(self, batch: list[Query]) -> list[Score]:
        """One prefill per prompt start in the batch (on the worker thread); the category line of
        unsafe rows."""
        groups: dict[Optional[Ids], list[int]] = {}
        for i, (row, _) in enumerate(batch):
            start = next((p for p in self.prefixes if len(row) > len(p) and row[: len(p)] == p), None)
            groups.setdefault(start, []).append(i)
        scores = [0.0] * len(batch)
        for prefix, members in groups.items():
            for i, score in zip(members, self._scores([batch[i][0] for i in members], prefix)):
                scores[i] = score
        lines: list[Optional[str]] = [None] * len(batch)
        unsafe = [i for i, (score, (_, threshold)) in enumerate(zip(scores, batch)) if score >= threshold]
        if unsafe and self.family.decodes:
            for i, line in zip(unsafe, self.category_lines([batch[i][0] for i in unsafe])):
                lines[i] = line
        return [Score(score, line) for score, line in zip(scores, lines)]

    def category_lines(self, rows: list[Ids]) -> list[str]:
        """Greedy decode of what follows ``unsafe``: the category line."""
        import torch

        ids, mask, _ = self._padded([(*row, self.answer.unsafe) for row in rows])
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=self.category_tokens,
                do_sample=False, pad_token_id=self.pad_id, eos_token_id=self.stop_ids or None,
            )
        self.decodes += len(rows)
        return self.tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)


def _end_of_turn_ids(tokenizer: Any) -> list[Optional[int]]:
    found = []
    for token in _END_OF_TURN:
        i = tokenizer.convert_tokens_to_ids(token)
        found.append(i if isinstance(i, int) and i != tokenizer.unk_token_id else None)
    return found
