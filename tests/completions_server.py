"""A loopback OpenAI-compatible completions server, as vLLM serves one, backed by a real checkpoint.

``POST /v1/completions`` takes the prompt as token ids (or text), decodes greedily with
transformers, and returns ``logprobs`` the way vLLM does: per generated token its text and the
``top_logprobs`` dict of the k most likely tokens, keyed ``token_id:N`` when the request sets
vLLM's ``return_tokens_as_token_ids``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import torch
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from transformers import AutoModelForCausalLM, AutoTokenizer

from main_model import start_loopback


class CompletionsServer:
    def __init__(self, checkpoint: str, name: str = "guard"):
        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # one generation at a time, as a single-GPU server would
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _key(self, token: int, as_ids: bool) -> str:
        return f"token_id:{token}" if as_ids else self.tokenizer.decode([token])

    def _generate(self, body: dict) -> dict:
        prompt = body["prompt"]
        ids = prompt if isinstance(prompt, list) else self.tokenizer(prompt)["input_ids"]
        k, as_ids = body.get("logprobs"), bool(body.get("return_tokens_as_token_ids"))
        tokens: list[int] = []
        top: list[dict[str, float]] = []
        with self._lock, torch.no_grad():
            for _ in range(int(body.get("max_tokens") or 16)):
                logits = self.model(input_ids=torch.tensor([ids + tokens])).logits[0, -1]
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                token = int(torch.argmax(logprobs))
                if k:
                    values, indices = torch.topk(logprobs, int(k))
                    top.append({self._key(int(i), as_ids): float(v) for v, i in zip(values, indices)})
                tokens.append(token)
                if token == self.tokenizer.eos_token_id:
                    break
        choice: dict[str, Any] = {
            "index": 0,
            "text": self.tokenizer.decode(tokens, skip_special_tokens=True),
            "finish_reason": "stop" if tokens and tokens[-1] == self.tokenizer.eos_token_id else "length",
            "logprobs": None,
        }
        if k:
            choice["logprobs"] = {
                "tokens": [self._key(t, as_ids) for t in tokens],
                "token_logprobs": [entry[self._key(t, as_ids)] for entry, t in zip(top, tokens)],
                "top_logprobs": top,
                "text_offset": [0] * len(tokens),
            }
        usage = {"prompt_tokens": len(ids), "completion_tokens": len(tokens), "total_tokens": len(ids) + len(tokens)}
        return {"id": f"cmpl-{time.monotonic_ns()}", "object": "text_completion", "created": int(time.time()),
                "model": self.name, "choices": [choice], "usage": usage}

    async def _completions(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.requests.append(body)
        if body.get("model") != self.name:
            return JSONResponse({"error": {"message": f"no model {body.get('model')!r}", "code": 404}}, status_code=404)
        return JSONResponse(await asyncio.to_thread(self._generate, body))

    def start(self) -> "CompletionsServer":
        app = Starlette(routes=[Route("/v1/completions", self._completions, methods=["POST"])])
        self._server, self._thread, self.port = start_loopback(app)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
