"""Loading a checkpoint onto its device in its precision, whole or not at all."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

# Ordinary words a working tokenizer tells apart (a tokenizer whose files are missing can load
# as a handful of special tokens and map every word to the same unknown id).
_ORDINARY = "the quick brown fox jumps over the lazy dog while people ask about weather music and travel"


class CheckpointError(RuntimeError):
    """A model rail's checkpoint cannot be used: the message names the rail, the model, what is
    wrong and the setting that chooses another."""


def is_local(model: str) -> bool:
    """Whether ``model`` names a directory rather than a hub id (``name`` or ``owner/name``)."""
    return os.path.isabs(model) or model.startswith((".", "~")) or model.count("/") > 1 or "\\" in model


def checkpoint_error(rail: str, model: str, problem: str) -> CheckpointError:
    local = is_local(model)
    if local and not os.path.isdir(os.path.expanduser(model)):
        problem = "directory not found"
    problem = problem.removeprefix(f"{rail}: ").rstrip(". ")
    where = "a local directory" if local else "a Hugging Face hub id"
    return CheckpointError(
        f"{rail}: cannot load model {model!r} ({where}): {problem}. Give a complete checkpoint of the right kind "
        f"(config, weights and tokenizer; a hub id needs this machine to reach the hub, and gated models their "
        f"license accepted and HF_TOKEN set) with {rail}.model under custom_data.railstack or the environment "
        f"variable RAILSTACK__{rail.upper()}__MODEL."
    )


def _offline() -> bool:
    from huggingface_hub import constants

    # Read now too: the hub library reads it once, when it is first imported.
    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _hub_unreachable() -> Optional[str]:
    """Why the hub does not answer, after one try within ``HF_HUB_ETAG_TIMEOUT`` seconds; None
    when it answers. Without it, an unreachable hub costs every file of a checkpoint its five
    retries (about 50 s) before the same failure."""
    import httpx
    from huggingface_hub import constants

    try:
        httpx.head(constants.ENDPOINT, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except httpx.HTTPError as exc:
        return f"{constants.ENDPOINT} did not answer one try of HF_HUB_ETAG_TIMEOUT={constants.HF_HUB_ETAG_TIMEOUT} s: " \
               f"{type(exc).__name__}: {exc}"
    return None


@dataclass(frozen=True)
class Source:
    """Where a rail's checkpoint is read from: ``kwargs`` for ``from_pretrained``, and the
    refusal of a load that failed."""

    rail: str
    model: str
    unreachable: Optional[str] = None  # why the hub was skipped: only the local cache was read
    # HF_HUB_OFFLINE set after huggingface_hub was imported: the hub library would still go online.
    offline: bool = False

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"local_files_only": True} if self.unreachable or self.offline else {}

    def failure(self, exc: Exception) -> CheckpointError:
        if self.unreachable:
            return checkpoint_error(self.rail, self.model, f"the hub is unreachable ({self.unreachable}) and the model is "
                                    "not in the local Hugging Face cache (HF_HOME); set HF_HUB_OFFLINE=1 to skip the hub, "
                                    f"or, for a local directory, give its path (./{self.model} or an absolute one)")
        return checkpoint_error(self.rail, self.model, f"{type(exc).__name__}: {exc}")


def source(rail: str, model: str) -> Source:
    """Where ``model`` loads from, refusing a local directory that does not exist before any
    download is tried (transformers would take it for a malformed hub id), and trying an
    unreachable hub once, not for every file (``HF_HUB_OFFLINE`` set: not at all)."""
    if os.path.isdir(os.path.expanduser(model)):
        return Source(rail, os.path.expanduser(model))
    if is_local(model):
        raise checkpoint_error(rail, model, "directory not found")
    if _offline():
        return Source(rail, model, offline=True)
    return Source(rail, model, _hub_unreachable())


def check_tokenizer(rail: str, model_id: str, tokenizer: Any, rows: int) -> None:
    """The tokenizer belongs to the model: its ids fit the embedding table (of ``rows`` rows), and
    it tells ordinary words apart."""
    if len(tokenizer) > rows:
        raise checkpoint_error(rail, model_id, f"its tokenizer has {len(tokenizer)} tokens, its embedding table {rows} rows: "
                               "they do not belong together")
    words = _ORDINARY.split()
    ids = [tuple(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in dict.fromkeys(words)]
    unknown = tokenizer.unk_token_id
    if len(set(ids)) < len(ids) * 0.9 or all(set(i) <= {unknown} for i in ids):
        raise checkpoint_error(rail, model_id, f"its tokenizer ({len(tokenizer)} tokens) does not tell ordinary words apart "
                               "(its tokenizer files are missing or broken)")


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


def load_tokenizer(rail: str, model: str) -> Any:
    """The tokenizer of checkpoint ``model`` alone (an engine whose model runs elsewhere)."""
    from transformers import AutoTokenizer

    where = source(rail, model)
    try:
        return AutoTokenizer.from_pretrained(where.model, **where.kwargs)
    except Exception as exc:  # noqa: BLE001 - missing or broken files: the same refusal
        raise where.failure(exc) from exc


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
    where = source(rail, settings.model)
    try:
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(where.model, **where.kwargs)
        dtype = torch.float32 if precision == "int8" else torch_dtype(precision)
        model, info = model_class.from_pretrained(where.model, dtype=dtype, output_loading_info=True, **where.kwargs)
    except Exception as exc:  # noqa: BLE001 - missing, truncated, corrupt, wrong kind: each is the same refusal
        raise where.failure(exc) from exc
    if info.get("missing_keys"):
        # Weights the checkpoint lacks are initialized at random: a checkpoint of another kind
        # (or task) would score with a random head and look normal.
        missing = sorted(info["missing_keys"])
        raise checkpoint_error(
            rail, settings.model, f"it is not a {model_class.__name__.removeprefix('AutoModelFor')} checkpoint of a kind this "
            f"rail runs: {len(missing)} weights it needs are missing ({', '.join(missing[:3])}, ...)"
        )
    check_tokenizer(rail, settings.model, tokenizer, model.get_input_embeddings().num_embeddings)
    model = quantize_int8(model) if precision == "int8" else model.to(device)
    return tokenizer, model.eval(), device, precision
