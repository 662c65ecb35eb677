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

    def _scores(self, rows: list[Ids], prefix: Optional[Ids]) -> tuple[list[float], Any, Any]:
        """P(unsafe) of each row: one forward pass, over the rows' own tokens after ``prefix`` when
        its cache is kept; and, where the format goes on with a category line, the pass's cache and
        attention mask, from which that line is decoded without reading the prompt again."""
        import torch

        keep = self.family.decodes
        extra: dict[str, Any] = {"use_cache": keep}
        if prefix is not None:
            cache = copy.deepcopy(self.prefixes[prefix])  # the forward pass extends it
            cache.batch_repeat_interleave(len(rows))
            extra = {self._cache_arg: cache, "use_cache": True}
            rows = [row[len(prefix) :] for row in rows]
        ids, mask, positions = self._padded(rows, len(prefix or ()))
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1, **extra)
            scores = self.family.probability(out.logits[:, -1, :], self.answer).cpu().tolist()
        return scores, getattr(out, self._cache_arg) if keep else None, mask

    def forward(self, batch: list[Query]) -> list[Score]:
        """One prefill per prompt start in the batch (on the worker thread); the category line of
        unsafe rows."""
        groups: dict[Optional[Ids], list[int]] = {}
        for i, (row, _) in enumerate(batch):
            start = next((p for p in self.prefixes if len(row) > len(p) and row[: len(p)] == p), None)
            groups.setdefault(start, []).append(i)
        scores = [0.0] * len(batch)
        lines: list[Optional[str]] = [None] * len(batch)
        for prefix, members in groups.items():
            found, cache, mask = self._scores([batch[i][0] for i in members], prefix)
            unsafe = [k for k, i in enumerate(members) if found[k] >= batch[i][1]]
            if unsafe and self.family.decodes:
                for k, line in zip(unsafe, self.category_lines(cache, mask, unsafe)):
                    lines[members[k]] = line
            for i, score in zip(members, found):
                scores[i] = score
        return [Score(score, line) for score, line in zip(scores, lines)]

    def category_lines(self, cache: Any, mask: Any, rows: list[int]) -> list[str]:
        """Greedy decode of what follows ``unsafe`` in rows ``rows`` of a scoring pass's ``cache``:
        the category line, at a decode step per token (generate would prefill the prompt again)."""
        import torch

        if len(rows) < mask.shape[0]:
            cache.batch_select_indices(torch.tensor(rows, device=self.device))
            mask = mask[rows]
        token = torch.full((len(rows), 1), self.answer.unsafe, dtype=torch.long, device=self.device)
        stops = torch.tensor(self.stop_ids, dtype=torch.long, device=self.device)
        done = torch.zeros(len(rows), dtype=torch.bool, device=self.device)
        written = []
        with torch.inference_mode():
            for _ in range(self.category_tokens):
                mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
                out = self.model(input_ids=token, attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1,
                                 use_cache=True, logits_to_keep=1, **{self._cache_arg: cache})
                cache = getattr(out, self._cache_arg)
                token = out.logits[:, -1, :].argmax(-1, keepdim=True)
                written.append(token)
                done |= torch.isin(token[:, 0], stops)
                if bool(done.all()):
                    break
        self.decodes += len(rows)
        lines = []
        for row in torch.cat(written, dim=1).tolist():
            end = next((j for j, t in enumerate(row) if t in self.stop_ids), len(row))
            lines.append(self.tokenizer.decode(row[:end], skip_special_tokens=True))
        return lines


def _end_of_turn_ids(tokenizer: Any) -> list[Optional[int]]:
    found = []
    for token in _END_OF_TURN:
        i = tokenizer.convert_tokens_to_ids(token)
        found.append(i if isinstance(i, int) and i != tokenizer.unk_token_id else None)
    return found
