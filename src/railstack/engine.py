"""Classifier engines: a model loaded once per process, fed by a micro-batcher.

Every model rail (Prompt Guard, Llama Guard, the NLI hallucination check) scores through a
``Batcher``: the inputs of concurrent requests are collected for at most ``max_delay_ms`` or
until ``max_batch`` are waiting, sorted by length so that a batch pads little, and run as one
forward pass on the model's own worker thread (torch releases the GIL, so the event loop keeps
serving); each request gets its own results back. In front of it sits the engine's bounded
stage, so a slow model backs up its own queue and sheds its own overload.

An engine is anything with ``async score(items) -> results`` (one result per item): ``Batcher``
over a local model here; a client of a remote server (vLLM) offers the same call.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Optional, Sequence, TypeVar

from railstack.backpressure import Stage

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Pending(Generic[Item, Result]):
    item: Item
    future: "asyncio.Future[Result]"


@dataclass
class _Queue:
    """What one event loop has waiting for the model (sync ``generate()`` calls run their own loops)."""

    pending: list = field(default_factory=list)
    full: asyncio.Event = field(default_factory=asyncio.Event)
    dispatcher: Optional[asyncio.Task] = None


class Batcher(Generic[Item, Result]):
    """Cross-request micro-batching in front of ``forward(batch) -> results`` (one per item)."""

    def __init__(
        self,
        name: str,
        forward: Callable[[list[Item]], list[Result]],
        *,
        length: Callable[[Item], int],
        max_batch: int,
        max_delay_s: float,
        stage: Optional[Stage] = None,
    ):
        self.name = name
        self.forward = forward
        self.length = length
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.stage = stage
        self.batches = 0  # forward passes run (for tests and benchmarks)
        # One worker thread: forward passes of every loop run one at a time, each on all cores.
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"railstack-{name}")
        self._queues: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Queue]" = weakref.WeakKeyDictionary()

    async def score(self, items: Sequence[Item]) -> list[Result]:
        if not items:
            return []
        slot = self.stage.slot() if self.stage is not None else contextlib.nullcontext()
        async with slot:
            loop = asyncio.get_running_loop()
            queue = self._queues.setdefault(loop, _Queue())
            if queue.dispatcher is None or queue.dispatcher.done():
                queue.dispatcher = loop.create_task(self._dispatch(queue))
            pending = [_Pending(item, loop.create_future()) for item in items]
            queue.pending += pending
            if len(queue.pending) >= self.max_batch:
                queue.full.set()
            try:
                return list(await asyncio.gather(*(p.future for p in pending)))
            except BaseException:
                for p in pending:  # a cancelled request's items are not run
                    p.future.cancel()
                raise

    async def _dispatch(self, queue: _Queue) -> None:
        loop = asyncio.get_running_loop()
        while queue.pending:
            if len(queue.pending) < self.max_batch:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(queue.full.wait(), self.max_delay_s)
            queue.full.clear()
            taken = [p for p in queue.pending if not p.future.done()]
            queue.pending = []
            taken.sort(key=lambda p: self.length(p.item))
            for start in range(0, len(taken), self.max_batch):
                batch = [p for p in taken[start : start + self.max_batch] if not p.future.done()]
                if not batch:
                    continue
                try:
                    results = await loop.run_in_executor(self._worker, self.forward, [p.item for p in batch])
                    self.batches += 1
                except Exception as exc:  # noqa: BLE001 - each waiting check fails under its own policy
                    for p in batch:
                        if not p.future.done():
                            p.future.set_exception(exc)
                    continue
                for p, result in zip(batch, results):
                    if not p.future.done():
                        p.future.set_result(result)


class ScoreCache(Generic[Result]):
    """A bounded LRU of a model's results, keyed by a digest of the exact text it scored, so a
    threshold change never reuses a stale verdict."""

    def __init__(self, size: int):
        self.size = size
        self._entries: OrderedDict[bytes, Result] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def key(text: str) -> bytes:
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def get(self, text: str) -> Optional[Result]:
        if not self.size:
            return None
        key = self.key(text)
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return found

    def put(self, text: str, value: Result) -> None:
        if not self.size:
            return
        key = self.key(text)
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


_engines: dict[tuple, Any] = {}
_building = threading.Lock()


def shared(key: tuple, build: Callable[[], Result]) -> Result:
    """The process's one engine for ``key`` (a checkpoint and how it runs): configs that name
    the same one share its weights, batcher and cache."""
    with _building:
        if key not in _engines:
            _engines[key] = build()
        return _engines[key]


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where it beats fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} is configured but torch sees no CUDA device")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """``auto``: bf16 on a GPU that has it (else fp16); on a CPU bf16 where it is native, else fp32."""
    import torch

    if precision != "auto":
        if precision == "int8" and device != "cpu":
            raise RuntimeError("int8 dynamic quantization runs on the CPU only")
        if precision == "fp16" and device == "cpu":
            raise RuntimeError("fp16 is for GPUs; on a CPU use fp32, bf16 or int8")
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def torch_dtype(precision: str) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def quantize_int8(model: Any) -> Any:
    import torch

    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def load_checkpoint(
    settings: Any, rail: str, model_class: Any, tokenizer: Any = None
) -> tuple[Any, Any, str, str]:
    """The tokenizer (``tokenizer`` when the caller has loaded it) and model of ``settings.model``
    (a classifier's settings), the model in eval mode on its device and in its precision (int8:
    dynamically quantized, on the CPU), and the device and precision chosen. A checkpoint that
    cannot be loaded is an error naming it."""
    import torch
    from transformers import AutoTokenizer

    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, device)
    try:
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(settings.model)
        dtype = torch.float32 if precision == "int8" else torch_dtype(precision)
        model = model_class.from_pretrained(settings.model, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"{rail}: {missing_model_message(settings.model, exc)}") from exc
    model = quantize_int8(model) if precision == "int8" else model.to(device)
    return tokenizer, model.eval(), device, precision


def missing_model_message(model: str, exc: BaseException) -> str:
    where = "a local directory" if os.path.isabs(model) or model.startswith((".", "~")) else "a Hugging Face hub id"
    return (
        f"cannot load model {model!r} ({where}): {type(exc).__name__}: {exc}. Provide it as a local directory "
        f"with its config, weights and tokenizer, or as a hub id this machine can download (gated models need "
        f"their license accepted and HF_TOKEN set); override the path with a RAILSTACK__... environment variable."
    )
