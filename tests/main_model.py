"""An OpenAI-compatible main model on 127.0.0.1 for the tests.

It answers ``/v1/chat/completions`` (streaming and not), counts its calls, keeps the
request bodies, and waits ``latency_s`` before answering (and ``token_delay_s`` between
streamed tokens), so tests can tell whether and how the guarded model was reached.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route


def start_loopback(app: Any, port: int = 0) -> tuple[uvicorn.Server, threading.Thread, int]:
    """Serve an ASGI app on 127.0.0.1 from a daemon thread; returns once it accepts connections."""
    sock = socket.socket()
    # Connections inherit it: without it every answer waits ~40 ms for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("a loopback test server did not start")
        time.sleep(0.01)
    return server, thread, sock.getsockname()[1]


@dataclass
class MainModelDouble:
    reply: str = "Paris is the capital of France."
    latency_s: float = 0.0
    token_delay_s: float = 0.0
    honours_n: bool = True  # answers a request's `n` with that many choices, as OpenAI's API does
    requests: list[dict[str, Any]] = field(default_factory=list)
    _server: Any = None
    _thread: Any = None
    port: int = 0

    @property
    def calls(self) -> int:
        return len(self.requests)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _chat(self, request: Request):
        body = await request.json()
        self.requests.append(body)
        await asyncio.sleep(self.latency_s)
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        model = body.get("model", "main")
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {"index": i, "message": {"role": "assistant", "content": self.reply}, "finish_reason": "stop"}
                        for i in range(int(body.get("n") or 1) if self.honours_n else 1)
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17},
                }
            )

        async def events():
            words = self.reply.split(" ")
            for i, word in enumerate(words):
                piece = word if i == 0 else " " + word
                chunk = {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": piece}, "finish_reason": None}],
                }
                yield f"data: {json.dumps(chunk)}\n\n"
                await asyncio.sleep(self.token_delay_s)
            done = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            }
            yield f"data: {json.dumps(done)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def _models(self, request: Request):
        return JSONResponse({"object": "list", "data": [{"id": "main", "object": "model", "owned_by": "tests"}]})

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )

    def start(self, port: int = 0) -> "MainModelDouble":
        self._server, self._thread, self.port = start_loopback(self.app(), port)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)


if __name__ == "__main__":
    # A stand-in main model for trying railstack without one:
    #   python tests/main_model.py [PORT] [--latency S] [--token-delay S]
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", nargs="?", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before answering")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between streamed tokens")
    args = parser.parse_args()
    double = MainModelDouble(latency_s=args.latency, token_delay_s=args.token_delay).start(args.port)
    print(f"test main model on {double.base_url}; Ctrl-C stops it", flush=True)
    double._thread.join()
