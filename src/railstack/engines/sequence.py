"""A sequence classifier's forward pass, wherever it runs (Prompt Guard, the NLI model).

The rail's engine owns the tokenizer: it cuts an input into windows of token ids, batches them
and caches scores. A *runner* turns a batch of windows into logits: torch in this process (here),
ONNX Runtime in this process, or a TEI server. Each window carries its token ids and a string the
checkpoint's tokenizer turns into exactly those ids, so every runner reads the same windows and
their scores agree wherever they are computed.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Sequence

log = logging.getLogger("railstack.engines")


@dataclass(frozen=True)
class Span:
    """Token ids without special tokens, and a string that tokenizes to them."""

    ids: tuple[int, ...]
    text: str

    def __len__(self) -> int:
        return len(self.ids)


Input = tuple[Span, ...]  # one text, or (premise, hypothesis)


def length(item: Input) -> int:
    return sum(map(len, item))


@dataclass(frozen=True)
class Tokenized:
    """A text's token ids (no special tokens) with each token's character offsets, and whether it
    begins a word (as the tokenizer's pre-tokenizer splits the text)."""

    text: str
    ids: tuple[int, ...]
    offsets: tuple[tuple[int, int], ...]
    starts: tuple[bool, ...]

    def span(self, start: int, end: int) -> Span:
        """Tokens ``start:end`` (as a slice takes them): their ids, and the text they were read from."""
        end = min(end, len(self.ids))
        if start >= end:
            return Span((), "")
        return Span(self.ids[start:end], self.text[self.offsets[start][0] : self.offsets[end - 1][1]])

    def word_start(self, at: int, after: int) -> int:
        """The last token at or before ``at`` that begins a word (the text's end counts as one)
        and lies past ``after``; ``at`` itself when no word begins there (a word longer than the
        whole stretch)."""
        i = at
        while after < i < len(self.ids) and not self.starts[i]:
            i -= 1
        return i if i > after else at

    def __len__(self) -> int:
        return len(self.ids)


def tokenize(tokenizer: Any, text: str) -> Tokenized:
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    words = encoded.word_ids()
    starts = tuple(i == 0 or words[i] != words[i - 1] for i in range(len(words)))
    return Tokenized(text, tuple(encoded["input_ids"]), tuple(map(tuple, encoded["offset_mapping"])), starts)


def window(tokenizer: Any, tokens: Tokenized, start: int, most: int) -> tuple[Span, int]:
    """At most ``most`` tokens from token ``start``, cut where a word begins, and the token it ends
    before. A SentencePiece piece cut in mid-word reads as a new word (it gains the word-start
    marker), so only a word longer than ``most`` is cut inside; that window (and any other whose
    text does not re-tokenize to its slice of ids) carries its text's own ids, so that every
    runner, sending ids or text, reads the same window."""
    end = tokens.word_start(min(start + most, len(tokens)), start)
    while True:
        span = tokens.span(start, end)
        ids = tuple(tokenizer(span.text, add_special_tokens=False)["input_ids"])
        if ids == span.ids:
            return span, end
        if len(ids) <= most or end - 1 <= start:
            return Span(ids, span.text), end
        end -= 1


def windows(tokenizer: Any, tokens: Tokenized, most: int, overlap: int = 0) -> list[Span]:
    """Windows (``window``) of at most ``most`` tokens that cover the text's tokens in order,
    neighbours sharing at least ``overlap`` of them; none for an empty text."""
    found: list[Span] = []
    start = 0
    while start < len(tokens):
        span, end = window(tokenizer, tokens, start, most)
        found.append(span)
        if end >= len(tokens):
            break
        start = tokens.word_start(max(end - overlap, start + 1), start)
    return found


@dataclass(frozen=True)
class Layout:
    """What the tokenizer puts around one text ([CLS] a [SEP]) and around and between a pair
    ([CLS] a [SEP] b [SEP] for BERT/DeBERTa, <s> a </s></s> b </s> for RoBERTa), and each part's
    token type."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    pair_prefix: tuple[int, ...]
    pair_middle: tuple[int, ...]
    pair_suffix: tuple[int, ...]
    pair_types: tuple[int, ...]  # of: prefix, a, middle, b, suffix

    def specials(self, segments: int) -> int:
        """How many special tokens an input of ``segments`` texts carries."""
        if segments == 1:
            return len(self.prefix) + len(self.suffix)
        return len(self.pair_prefix) + len(self.pair_middle) + len(self.pair_suffix)

    def row(self, item: Input) -> tuple[list[int], list[int]]:
        """The model's input ids of one window, and their token types."""
        if len(item) == 1:
            ids = [*self.prefix, *item[0].ids, *self.suffix]
            return ids, [0] * len(ids)
        (a, b), kinds = item, self.pair_types
        parts = (self.pair_prefix, a.ids, self.pair_middle, b.ids, self.pair_suffix)
        return [t for part in parts for t in part], [kinds[k] for k, part in enumerate(parts) for _ in part]


class LayoutError(ValueError):
    """The tokenizer's special tokens cannot be told apart from a text's own."""


def layout(tokenizer: Any) -> Layout:
    a = tokenizer("a", add_special_tokens=False)["input_ids"]
    b = tokenizer("b", add_special_tokens=False)["input_ids"]
    single = tokenizer("a")["input_ids"]
    at = _find(single, a, 0)
    if at is None:
        raise LayoutError("cannot tell the tokenizer's special tokens apart")
    prefix, suffix = single[:at], single[at + len(a) :]
    encoded = tokenizer("a", "b", return_token_type_ids=True)
    full = encoded["input_ids"]
    kinds = encoded.get("token_type_ids") or [0] * len(full)
    i = _find(full, a, 0)
    j = _find(full, b, i + len(a)) if i is not None else None
    if j is None:
        raise LayoutError("cannot tell how the tokenizer joins a pair of texts")
    cuts = (0, i, i + len(a), j, j + len(b), len(full))
    parts = [tuple(full[cuts[k] : cuts[k + 1]]) for k in range(5)]
    types = tuple(kinds[min(cuts[k], len(full) - 1)] for k in range(5))
    return Layout(tuple(prefix), tuple(suffix), parts[0], parts[2], parts[4], types)


def _find(seq: list[int], part: list[int], start: int) -> Optional[int]:
    return next((i for i in range(start, len(seq) - len(part) + 1) if seq[i : i + len(part)] == part), None)


def padded(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> tuple[Any, Any, Any]:
    """Input ids, attention mask and token types of a batch as int64 arrays, right-padded."""
    import numpy as np

    width = max(len(ids) for ids, _ in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    types = np.zeros((len(rows), width), dtype=np.int64)
    for i, (row, kinds) in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
        types[i, : len(row)] = kinds
    return ids, mask, types


class Runner(Protocol):
    """Where a checkpoint's forward pass runs."""

    labels: tuple[str, ...]  # id2label, in index order
    device: str
    precision: str
    max_tokens: Optional[int]  # the longest input it takes, special tokens included (None: no limit known)
    max_batch: int  # inputs per forward pass unless the settings say

    def logits(self, batch: list[Input]) -> list[list[float]]:
        """The logits of each window (a blocking call: the batcher runs it on its worker thread),
        or a coroutine function returning them, for a runner that waits on the network."""
        ...


class InProcess:
    """What a runner in this process reads off the checkpoint's config and tokenizer, and how it
    lays out a batch (the torch and ONNX Runtime runners)."""

    def describe(self, config: Any, tokenizer: Any, device: str) -> None:
        self.labels = tuple(str(config.id2label[i]) for i in range(config.num_labels))
        self.max_tokens = getattr(config, "max_position_embeddings", None)
        self.max_batch = 64 if device.startswith("cuda") else 8
        self.layout = layout(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.uses_types = "token_type_ids" in tokenizer.model_input_names and (
            getattr(config, "type_vocab_size", 0) or 0) > 1

    def arrays(self, batch: list[Input]) -> dict[str, Any]:
        """The model's inputs of a batch, as int64 numpy arrays by name."""
        ids, mask, types = padded([self.layout.row(i) for i in batch], self.pad_id)
        return {"input_ids": ids, "attention_mask": mask} | ({"token_type_ids": types} if self.uses_types else {})

    def warm_up(self, tokenizer: Any) -> None:
        """The first forward pass, off the request path."""
        text = tokenize(tokenizer, "warm-up")
        self.logits([(text.span(0, len(text)),)])

    def logits(self, batch: list[Input]) -> list[list[float]]:
        raise NotImplementedError


class TorchRunner(InProcess):
    """The checkpoint in this process, with transformers on torch."""

    def __init__(self, settings: Any, rail: str, tokenizer: Any):
        from transformers import AutoModelForSequenceClassification

        from railstack.engines.loading import load_checkpoint

        _, self.model, self.device, self.precision = load_checkpoint(
            settings, rail, AutoModelForSequenceClassification, tokenizer
        )
        self.describe(self.model.config, tokenizer, self.device)
        self.warm_up(tokenizer)

    def logits(self, batch: list[Input]) -> list[list[float]]:
        import torch

        inputs = {name: torch.from_numpy(a).to(self.device) for name, a in self.arrays(batch).items()}
        with torch.inference_mode():
            return self.model(**inputs).logits.float().cpu().tolist()


def runner(settings: Any, rail: str, tokenizer: Any) -> Runner:
    """The runner the rail's settings choose."""
    if settings.engine == "remote":
        from railstack.engines.tei import TeiRunner

        return TeiRunner(settings, rail, tokenizer)
    from railstack.engines.onnx import OnnxRunner, Unexportable, runtime_of

    if runtime_of(settings) == "onnx":
        try:
            return OnnxRunner(settings, rail, tokenizer)
        except Unexportable as exc:
            if settings.runtime == "onnx":
                raise
            # auto chose ONNX Runtime only for speed: torch gives the same scores.
            log.warning("%s; %s.runtime is auto, so torch runs it", exc, rail)
    return TorchRunner(settings, rail, tokenizer)


def forward(runner: Runner, transform: Callable[[list[float]], list[float]]) -> Callable:
    """A batcher's forward pass over ``runner``: each window's logits through ``transform``,
    blocking or awaitable as the runner is."""
    if inspect.iscoroutinefunction(runner.logits):
        async def scored(batch: list[Input]) -> list[list[float]]:
            return [transform(row) for row in await runner.logits(batch)]
    else:
        def scored(batch: list[Input]) -> list[list[float]]:
            return [transform(row) for row in runner.logits(batch)]
    return scored


def softmax(logits: list[float], temperature: float = 1.0) -> list[float]:
    import math

    top = max(logits)
    exp = [math.exp((x - top) / temperature) for x in logits]
    total = sum(exp)
    return [e / total for e in exp]
