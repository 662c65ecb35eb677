"""A sequence classifier's forward pass on ONNX Runtime (``runtime: onnx``; ``auto`` on a CPU).

- The checkpoint is exported once, with torch.onnx's TorchScript exporter (about a second for a
  small model, where the dynamo exporter took ~20 s on a tiny one here), into
  ``$RAILSTACK_CACHE_DIR/onnx`` (default ``~/.cache/railstack/onnx``). An entry's key is the
  sha256 of the checkpoint's config and weight files, the exporter (torch's version, the opset,
  the graph's inputs) and, for int8, ONNX Runtime's version: other weights or another exporter
  is another entry, never a stale graph.
- int8 is the fp32 export dynamically quantized by ``onnxruntime.quantization`` (the body's
  matrix products: weights int8 per output channel, activations quantized per batch).
- An entry is written in a scratch directory beside its place and renamed into it, its files'
  sha256 recorded last, so processes starting together never read a half-written graph; a load
  checks the recorded hashes, and an entry that fails the check is moved aside and rebuilt.
- A fresh export must reproduce torch's logits on probe windows of other lengths and batch
  sizes than the traced ones (the trace fixes what Python decided), else it is refused.
- One session per engine, with as many intra-op threads as torch uses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any

from railstack.engines.encoder import cache_root, sha256_of
from railstack.engines.loading import _ORDINARY, check_tokenizer, load_checkpoint, resolve_device, source
from railstack.engines.sequence import InProcess, Input, tokenize

log = logging.getLogger("railstack.onnx")

OPSET = 17
RECIPE = 1  # bumped when the export below changes what it writes
MANIFEST = "railstack-manifest.json"
GRAPH = "model.onnx"
# What a checkpoint's graph is made of: its config and weights (the tokenizer runs outside it).
CHECKPOINT_FILES = ["config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin",
                    "pytorch_model.bin.index.json"]
# Agreement of a fresh export with torch, both fp32: rounding differences are ~1e-6 of a logit.
EXPORT_TOLERANCE = 1e-3


class OnnxError(RuntimeError):
    """The rail cannot run on ONNX Runtime: the message names the rail, what is wrong and the setting to change."""


def installed() -> bool:
    """Whether the ``onnx`` extra is there: ONNX Runtime, and onnx for int8 quantization."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def runtime_of(settings: Any) -> str:
    """``torch`` or ``onnx``. ``auto``: ONNX Runtime on a CPU (faster there, scripts/bench_prompt_guard.py)
    when the extra is installed and the precision is one it runs; torch elsewhere."""
    if settings.runtime != "auto":
        return settings.runtime
    if settings.precision in ("bf16", "fp16") or resolve_device(settings.device) != "cpu":
        return "torch"
    return "onnx" if installed() else "torch"


def _error(rail: str, problem: str) -> OnnxError:
    return OnnxError(f"{rail}: {problem}")


class Unexportable(OnnxError):
    """The checkpoint does not export to a graph ONNX Runtime runs as torch does."""


def _unexportable(settings: Any, rail: str, problem: str) -> Unexportable:
    return Unexportable(f"{rail}: model {settings.model!r} cannot run on ONNX Runtime: {problem}. Set {rail}.runtime: "
                        f"torch (or give another checkpoint with {rail}.model)")


class OnnxRunner(InProcess):
    """The checkpoint exported to ONNX, run by one ONNX Runtime session on the CPU."""

    def __init__(self, settings: Any, rail: str, tokenizer: Any):
        if not installed():
            raise _error(rail, f"{rail}.runtime: onnx needs the `onnx` extra (onnxruntime and onnx), which is not "
                         f"installed: pip install 'railstack[onnx]', or set {rail}.runtime: torch")
        self.device = resolve_device(settings.device)
        if self.device != "cpu":
            raise _error(rail, f"{rail}.runtime: onnx runs on the CPU, and {rail}.device is {settings.device!r} "
                         f"({self.device}): set {rail}.device: cpu, or {rail}.runtime: torch (or auto) for the GPU")
        from transformers import AutoConfig

        if settings.precision in ("bf16", "fp16"):  # settings copied past their validation
            raise _error(rail, f"{rail}.precision: {settings.precision} does not run on ONNX Runtime: set fp32, int8 or "
                         f"auto, or {rail}.runtime: torch")
        self.settings, self.rail, self.tokenizer = settings, rail, tokenizer
        # auto is fp32: int8 moved a random-weight PG2-86M's logit margins by up to 1.04 from fp32's
        # (scripts/bench_prompt_guard.py) and its drift on trained weights is unmeasured; int8 is asked for by name.
        self.precision = "fp32" if settings.precision == "auto" else settings.precision
        where, directory = _checkpoint_dir(settings, rail)
        try:
            config = AutoConfig.from_pretrained(str(directory))
        except Exception as exc:  # noqa: BLE001 - missing or broken config: the same refusal as torch's
            raise where.failure(exc) from exc
        self.describe(config, tokenizer, self.device)
        check_tokenizer(rail, settings.model, tokenizer, int(getattr(config, "vocab_size", len(tokenizer))))
        self.names = ("input_ids", "attention_mask") + (("token_type_ids",) if self.uses_types else ())
        self.graph = self._entry(directory, self.precision == "int8")
        try:
            self.session = self._session(self.graph)
        except Exception as exc:  # noqa: BLE001 - a graph this onnxruntime does not take
            raise _unexportable(settings, rail, f"ONNX Runtime cannot load its export {self.graph} "
                                f"({type(exc).__name__}: {exc})") from exc
        self.warm_up(tokenizer)

    def logits(self, batch: list[Input]) -> list[list[float]]:
        return self.session.run(["logits"], self.arrays(batch))[0].tolist()

    @staticmethod
    def _session(graph: Path) -> Any:
        import onnxruntime as ort
        import torch

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # its warnings about unused initializers are not the user's business
        return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])

    def _entry(self, directory: Path, int8: bool) -> Path:
        """The cached graph of the checkpoint at ``directory``, exported (and quantized) if missing or damaged."""
        entry = cache_root() / "onnx" / f"{_slug(self.settings.model)}-{self._key(directory, int8)[:24]}"
        if _intact(entry):
            return entry / GRAPH
        if entry.exists():
            log.warning("%s: the ONNX cache entry %s is damaged (its files do not match their recorded sha256): "
                        "rebuilding it", self.rail, entry)
            _discard(entry)
        entry.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=entry.parent))
        try:
            if int8:
                self._quantize(self._entry(directory, False), scratch / GRAPH)
            else:
                self._export(scratch / GRAPH)
            files = {p.name: sha256_of(p) for p in scratch.iterdir()}
            (scratch / MANIFEST).write_text(json.dumps({"model": self.settings.model, "files": files}))
            try:
                scratch.rename(entry)
            except OSError:  # another process got there first
                if not _intact(entry):
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return entry / GRAPH

    def _key(self, directory: Path, int8: bool) -> str:
        import torch

        digest = hashlib.sha256()
        made = f"recipe {RECIPE}; torch {torch.__version__}; opset {OPSET}; inputs {','.join(self.names)}"
        if int8:
            import onnxruntime

            made += f"; int8 by onnxruntime {onnxruntime.__version__}"
        digest.update(made.encode())
        for path in _checkpoint_files(directory, self.settings, self.rail):
            digest.update(f"\n{path.name} {sha256_of(path)}".encode())
        return digest.hexdigest()

    def _probe(self, sizes: tuple[int, ...], pair: bool) -> dict[str, Any]:
        """Model inputs of windows of ``sizes`` tokens (text pairs if ``pair``)."""
        words = tokenize(self.tokenizer, " ".join([_ORDINARY] * 40))
        limit = (self.max_tokens or 512) - self.layout.specials(2 if pair else 1)
        windows = []
        for n in sizes:
            n = min(n, limit)
            if pair:
                windows.append((words.span(0, n - n // 3), words.span(n, n + n // 3)))
            else:
                windows.append((words.span(0, n),))
        return self.arrays(windows)

    def _export(self, graph: Path) -> None:
        import numpy as np
        import torch
        from transformers import AutoModelForSequenceClassification

        fp32 = self.settings.model_copy(update={"device": "cpu", "precision": "fp32"})
        _, model, _, _ = load_checkpoint(fp32, self.rail, AutoModelForSequenceClassification, self.tokenizer)
        names = self.names

        class Logits(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, *inputs):
                return self.model(**dict(zip(names, inputs))).logits

        traced = self._probe((12, 5), pair=False)
        axes = {name: {0: "batch", 1: "tokens"} for name in names} | {"logits": {0: "batch"}}
        try:
            # The tracer warns of every Python value it fixes; the probes below check what it fixed.
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(Logits().eval(), tuple(torch.from_numpy(traced[n]) for n in names), str(graph),
                                  dynamo=False, input_names=list(names), output_names=["logits"],
                                  dynamic_axes=axes, opset_version=OPSET)
        except Exception as exc:  # noqa: BLE001 - an operator or construct the exporter does not take
            raise _unexportable(self.settings, self.rail, f"the ONNX export failed ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
        session = self._session(graph)
        for probe in (self._probe((40, 9, 23), pair=False), self._probe((30, 64), pair=True)):
            with torch.no_grad():
                expected = model(**{n: torch.from_numpy(probe[n]) for n in names}).logits.numpy()
            found = session.run(["logits"], probe)[0]
            gap = float(np.abs(found - expected).max())
            if not gap <= EXPORT_TOLERANCE * max(1.0, float(np.abs(expected).max())):
                raise _unexportable(self.settings, self.rail, f"its exported graph does not reproduce the checkpoint "
                                    f"(logits {gap:.3g} apart from torch's on inputs of other shapes than the traced)")

    def _quantize(self, fp32: Path, graph: Path) -> None:
        import onnx as onnx_format
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # The matrix products, each output channel with its own scale (a third of the error of one
        # scale per tensor on the tiny test models); the head (pooler, classifier) stays fp32: it
        # costs nothing beside the body, and its rounding would move the logits directly.
        head = [node.name for node in onnx_format.load(str(fp32), load_external_data=False).graph.node
                if "/pooler/" in node.name or "/classifier/" in node.name]
        try:
            quantize_dynamic(str(fp32), str(graph), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul"], nodes_to_exclude=head)
        except Exception as exc:  # noqa: BLE001 - a graph the quantizer does not take
            raise _unexportable(self.settings, self.rail, f"int8 quantization failed ({type(exc).__name__}: {exc}); "
                                f"{self.rail}.precision: fp32 runs it unquantized") from exc


def _checkpoint_dir(settings: Any, rail: str) -> tuple[Any, Path]:
    """Where the checkpoint loads from, and the local directory of its files (a hub id: its
    snapshot in the Hugging Face cache)."""
    where = source(rail, settings.model)
    if os.path.isdir(where.model):
        return where, Path(where.model)
    from huggingface_hub import snapshot_download

    try:
        return where, Path(snapshot_download(where.model, allow_patterns=CHECKPOINT_FILES,
                                             local_files_only=bool(where.unreachable)))
    except Exception as exc:  # noqa: BLE001 - unreachable, gated, no such model: the same refusal as torch's
        raise where.failure(exc) from exc


def _checkpoint_files(directory: Path, settings: Any, rail: str) -> list[Path]:
    found = sorted(p for pattern in CHECKPOINT_FILES for p in directory.glob(pattern) if p.is_file())
    if not any(p.name != "config.json" for p in found) or not (directory / "config.json").is_file():
        from railstack.engines.loading import checkpoint_error

        raise checkpoint_error(rail, settings.model, f"{directory} holds no config.json and weights "
                               "(*.safetensors or pytorch_model*.bin)")
    return found


def _intact(entry: Path) -> bool:
    try:
        files = json.loads((entry / MANIFEST).read_text())["files"]
        return bool(files) and GRAPH in files and all(sha256_of(entry / name) == digest for name, digest in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _discard(entry: Path) -> None:
    aside = entry.with_name(f".damaged-{uuid.uuid4().hex}")
    try:
        entry.rename(aside)
    except OSError:  # another process moved it first
        return
    shutil.rmtree(aside, ignore_errors=True)


def _slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name or model)[:48]
