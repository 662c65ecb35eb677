"""What every model rail's settings say about its checkpoint and engine."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from railstack.core.settings import RailPolicy, Strict


class ClassifierSettings(RailPolicy):
    """A local classifier checkpoint and the engine that runs it (shared by the model rails)."""

    model: str = Field(min_length=1, description="Hugging Face hub id or local directory")
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = "auto"
    # None: 8 on a CPU, where bigger padded batches lose (scripts/bench_prompt_guard.py), 64 on a GPU.
    max_batch: Optional[int] = Field(default=None, gt=0, le=512, description="inputs per forward pass")
    max_delay_ms: float = Field(default=2.0, ge=0, le=1000, description="how long a batch waits to fill")
    cache_size: int = Field(default=10_000, ge=0, description="scores kept per model; 0 turns the cache off")


class TEISettings(Strict):
    """A text-embeddings-inference server serving the same checkpoint (``engines/tei``)."""

    base_url: str = Field(default="http://127.0.0.1:8002", min_length=1, description="Prompt Guard's; the NLI model's :8003")
    api_key: Optional[str] = Field(default=None, description="the server's --api-key, sent as a Bearer token")
    served_model: Optional[str] = Field(default=None, description="checked against the server's model_id when given")
    max_connections: int = Field(default=64, gt=0)
    # TEI's --max-client-batch-size default; the server's own, when smaller, wins.
    max_batch: int = Field(default=32, gt=0, le=4096, description="inputs per /predict request")


class EncoderSettings(ClassifierSettings):
    """An encoder classifier (Prompt Guard, the NLI model): the checkpoint, and where its forward
    pass runs (``engines/sequence.runner``): here (``local``, on ``runtime``), or on a TEI server
    (``remote``: only the checkpoint's tokenizer is loaded here, to cut the windows)."""

    engine: Literal["local", "remote"] = "local"
    remote: TEISettings = Field(default_factory=TEISettings)

    # auto: ONNX Runtime on a CPU when the `onnx` extra is installed (faster there:
    # scripts/bench_prompt_guard.py), torch on a GPU (``engines/onnx.runtime_of``).
    runtime: Literal["auto", "torch", "onnx"] = Field(default="auto", description="what runs the forward pass")

    @model_validator(mode="after")
    def _onnx_precision(self) -> "EncoderSettings":
        if self.runtime == "onnx" and self.precision in ("bf16", "fp16"):
            raise ValueError(f"precision {self.precision} does not run with runtime: onnx (ONNX Runtime takes fp32, "
                             "int8 or auto): set precision to one of those, or runtime to torch")
        return self
