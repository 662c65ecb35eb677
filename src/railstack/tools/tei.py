"""A loopback text-embeddings-inference (TEI) server over a local sequence-classification
checkpoint, for the tests and the benchmarks of the encoder rails' remote engine.

It answers TEI's ``GET /info`` and ``POST /predict`` as TEI's router does: ``inputs`` a string, a
pair ``[a, b]`` or a batch ``[[a], [a, b], ...]``; each input tokenized here from its text (with
the special tokens, as TEI does, never from railstack's ids) and refused with 413 when longer
than ``max_input_length`` unless ``truncate``; a batch over ``max_client_batch_size`` refused
with 413; ``raw_scores`` the logits, else softmax (sigmoid for one label); each answer's
``{score, label}`` sorted by score, highest first; errors as ``{"error", "error_type"}``; with an
``api_key``, requests without ``Authorization: Bearer <key>`` refused with 401. For the tests it
waits ``delay_s`` before answering, answers ``fail`` (a status and JSON body) instead when set,
and keeps each /predict body in ``requests``.

    with tei_server("path/to/checkpoint") as tei:   # tei.base_url: http://127.0.0.1:<free port>
        ...

    python -m railstack.tools.tei CHECKPOINT [PORT] [--max-client-batch-size N] [--api-key KEY]
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from railstack.tools.loopback import start_loopback


class _Refused(Exception):
    def __init__(self, status: int, error: str, error_type: str):
        super().__init__(error)
        self.status, self.error_type = status, error_type


def _sequences(inputs: Any) -> list[list[str]]:
    """TEI's reading of ``inputs``: one string, one pair of strings, or a batch of 1- and 2-lists."""
    if isinstance(inputs, str):
        return [[inputs]]
    if isinstance(inputs, list) and inputs and all(isinstance(x, str) for x in inputs) and len(inputs) <= 2:
        return [inputs]  # ["a"] is one text, ["a", "b"] one pair
    if isinstance(inputs, list) and inputs and all(
        isinstance(x, list) and len(x) in (1, 2) and all(isinstance(t, str) for t in x) for x in inputs
    ):
        return inputs
    raise _Refused(422, "inputs: expected a string, a pair of strings [string, string] or a batch of mixed "
                   "strings and pairs [[string], [string, string], ...]", "validation")


@dataclass
class TeiLoopback:
    """TEI's classifier API over the checkpoint at ``model``, on 127.0.0.1 once started."""

    model: str
    max_client_batch_size: int = 32
    api_key: Optional[str] = None
    delay_s: float = 0.0
    fail: Optional[tuple[int, Any]] = None  # (status, JSON body) answered to /predict instead
    info_overrides: dict = field(default_factory=dict)  # /info fields replaced, for start-up checks
    device: str = "cpu"
    requests: list = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.model)
        self.classifier = AutoModelForSequenceClassification.from_pretrained(self.model).to(self.device).eval()
        self._lock = threading.Lock()  # one forward pass at a time, as one TEI backend runs them

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def info(self) -> dict:
        config = self.classifier.config
        id2label = {str(i): str(config.id2label[i]) for i in range(config.num_labels)}
        return {
            "model_id": self.model, "model_sha": None, "model_dtype": "float32",
            "model_type": {"classifier": {"id2label": id2label, "label2id": {v: int(k) for k, v in id2label.items()}}},
            "max_concurrent_requests": 512, "max_input_length": int(config.max_position_embeddings),
            "max_batch_tokens": 16384, "max_batch_requests": None, "max_client_batch_size": self.max_client_batch_size,
            "auto_truncate": False, "tokenization_workers": 1, "version": "loopback", "sha": None, "docker_label": None,
        } | self.info_overrides

    def _authorized(self, request: Request) -> bool:
        return self.api_key is None or request.headers.get("authorization") == f"Bearer {self.api_key}"

    async def _info(self, request: Request) -> Any:
        if not self._authorized(request):
            return JSONResponse(None, status_code=401)
        return JSONResponse(self.info())

    async def _predict(self, request: Request) -> Any:
        if not self._authorized(request):
            return JSONResponse(None, status_code=401)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body is not JSON", "error_type": "validation"}, status_code=422)
        self.requests.append(body)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            return JSONResponse(self.fail[1], status_code=self.fail[0])
        try:
            if not isinstance(body, dict) or "inputs" not in body:
                raise _Refused(422, "missing field `inputs`", "validation")
            sequences = _sequences(body["inputs"])
            if len(sequences) > self.max_client_batch_size:
                raise _Refused(413, f"batch size {len(sequences)} > maximum allowed batch size "
                               f"{self.max_client_batch_size}", "validation")
            answers = await run_in_threadpool(self._scores, sequences, bool(body.get("truncate")),
                                              bool(body.get("raw_scores")))
        except _Refused as exc:
            return JSONResponse({"error": str(exc), "error_type": exc.error_type}, status_code=exc.status)
        single = isinstance(body["inputs"], str) or all(isinstance(x, str) for x in body["inputs"])
        return JSONResponse(answers[0] if single else answers)

    def _scores(self, sequences: list[list[str]], truncate: bool, raw: bool) -> list[list[dict]]:
        import torch

        limit = int(self.info()["max_input_length"])
        encoded = []
        for sequence in sequences:
            if not any(sequence):
                raise _Refused(413, "`inputs` cannot be empty", "validation")
            ids = self.tokenizer(*sequence, truncation=truncate, max_length=limit, return_tensors="pt")
            if ids["input_ids"].shape[1] > limit:
                raise _Refused(413, f"`inputs` must have less than {limit} tokens. Given: {ids['input_ids'].shape[1]}",
                               "validation")
            encoded.append(ids)
        labels = self.classifier.config.id2label
        answers = []
        with self._lock, torch.inference_mode():
            for ids in encoded:  # one input at a time: no padding to differ from TEI's own passes
                logits = self.classifier(**ids.to(self.device)).logits[0].float()
                scores = logits if raw else (logits.sigmoid() if len(logits) == 1 else logits.softmax(-1))
                ranked = sorted(enumerate(scores.tolist()), key=lambda p: p[1], reverse=True)
                answers.append([{"score": s, "label": str(labels[i])} for i, s in ranked])
        return answers

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/info", self._info, methods=["GET"]),
                                 Route("/predict", self._predict, methods=["POST"])])

    def start(self) -> "TeiLoopback":
        self._server, self._thread, self.port = start_loopback(self.app(), self.port)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)


@contextlib.contextmanager
def tei_server(model: str, **knobs: Any) -> Iterator[TeiLoopback]:
    """A started ``TeiLoopback(model, **knobs)`` (its ``base_url`` on a free port), stopped after."""
    server = TeiLoopback(str(model), **knobs).start()
    try:
        yield server
    finally:
        server.stop()


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="a loopback TEI server over a local sequence classifier")
    parser.add_argument("model", help="a sequence-classification checkpoint directory or hub id")
    parser.add_argument("port", nargs="?", type=int, default=8002)
    parser.add_argument("--max-client-batch-size", type=int, default=32)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    server = TeiLoopback(args.model, args.max_client_batch_size, args.api_key, device=args.device, port=args.port).start()
    print(f"loopback TEI server for {args.model} on {server.base_url}; Ctrl-C stops it", flush=True)
    server._thread.join()


if __name__ == "__main__":
    main()
