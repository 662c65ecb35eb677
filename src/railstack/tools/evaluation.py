"""Ranking metrics for the evaluation scripts (no numpy or scikit-learn needed)."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Sequence


def roc_auc(positives: list[float], negatives: list[float]) -> float:
    """P(a random positive scores above a random negative), ties counting half (Mann-Whitney U)."""
    ranked = sorted([(s, 1) for s in positives] + [(s, 0) for s in negatives])
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        mean_rank = (i + 1 + j) / 2
        rank_sum += mean_rank * sum(label for _, label in ranked[i:j])
        i = j
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def threshold_at_fpr(negatives: list[float], fpr: float) -> float:
    """The lowest threshold (score >= t flags) that flags at most ``fpr`` of the negatives."""
    ordered = sorted(negatives, reverse=True)
    allowed = int(fpr * len(ordered))
    return ordered[allowed] + 1e-9 if allowed < len(ordered) else 0.0


async def in_batches(items: Sequence[Any], run: Callable[[Any], Awaitable[Any]], size: int, desc: str, unit: str) -> list:
    """``run`` on every item, ``size`` at a time (together, so that they share the engine's
    forward passes), in order, with a progress bar."""
    from tqdm import tqdm

    out: list = []
    with tqdm(total=len(items), desc=desc, unit=unit) as bar:
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            out += await asyncio.gather(*(run(item) for item in chunk))
            bar.update(len(chunk))
    return out
