"""A loopback OpenAI-compatible main model, for the tests, the benchmarks and ``railstack profile``.

It answers ``/v1/chat/completions`` (streaming and not, ``n`` choices, ``usage`` in the answer and,
when ``stream_options.include_usage`` asks, in a last chunk of its own) with ``reply``, or the
reply ``replies`` scripts for a prompt (a test whose calls each want their own answer, as NeMo's
self-check prompts want "Yes" or "No"), counts its calls, keeps the request bodies and arrival times, waits ``latency_s`` before the first token (watching for
the client leaving) and ``token_delay_s`` between streamed tokens, counts the answers their
client abandoned and the generations under way (requests whose answer it is still waiting on or
writing; ``active``, and ``peak_active`` the most at once), so callers can tell whether, when and
how the guarded model was reached, and whether it goes on working for a client that left.

    python -m railstack.tools.loopback [PORT] [--latency S] [--token-delay S]
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
from starlette.responses import JSONResponse, Response, StreamingResponse
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
            raise RuntimeError("a loopback server did not start in 10 s")
        time.sleep(0.01)
    return server, thread, sock.getsockname()[1]


async def _disconnect(request: Request) -> None:
    """Returns when the client has gone away (its body was read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# NeMo's self-check prompts end with this question; NeMo reads any answer but "No" as "block", so
# under the canned reply a config with self checks (configs/seed) would refuse every turn.
SELF_CHECK_QUESTION = "(Yes or No)?"
STAND_IN_REPLIES = {SELF_CHECK_QUESTION: "No"}

_SETTLE_TURNS = 20  # event-loop turns: enough for a closed connection's answer to unwind


@dataclass
class LoopbackModel:
    reply: str = "Paris is the capital of France."
    # The reply to a request whose last message contains the key (the first key that matches).
    replies: dict[str, str] = field(default_factory=dict)
    latency_s: float = 0.0
    token_delay_s: float = 0.0
    honours_n: bool = True  # answers a request's `n` with that many choices, as OpenAI's API does
    usage: dict[str, int] = field(default_factory=lambda: {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17})
    requests: list[dict[str, Any]] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)  # time.monotonic() of each request
    abandoned: int = 0  # requests whose client went away before the whole answer was sent
    abandoned_tokens: int = 0  # tokens those answers had streamed by then: generated for nothing
    active: int = 0  # chat requests under way: from arrival until their answer is written or abandoned
    peak_active: int = 0  # the most of them at once
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
        self.arrived.append(time.monotonic())
        if self.latency_s > 0:  # the time to the first token, watching for the client leaving
            try:
                # Told at once, not at the next poll: a client that left is no longer counted active.
                await asyncio.wait_for(_disconnect(request), self.latency_s)
                self.abandoned += 1
                return Response(status_code=499)
            except asyncio.TimeoutError:
                pass
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        model = body.get("model", "main")
        reply = self.reply_to(body)
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {"index": i, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
                        for i in range(int(body.get("n") or 1) if self.honours_n else 1)
                    ],
                    "usage": self.usage,
                }
            )

        async def events():
            sent, tokens = False, 0
            try:
                async for frame in frames():
                    yield frame
                    tokens += 1
                sent = True
            finally:
                if not sent:  # Starlette stops the generator when the client goes away
                    self.abandoned += 1
                    self.abandoned_tokens += tokens

        async def frames():
            words = reply.split(" ")
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
            if (body.get("stream_options") or {}).get("include_usage"):
                # As OpenAI sends it: after the finish, a chunk of no choices that holds the usage.
                yield f"data: {json.dumps({**done, 'choices': [], 'usage': self.usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    def reply_to(self, body: dict) -> str:
        last = (body.get("messages") or [{}])[-1].get("content")
        text = last if isinstance(last, str) else json.dumps(last)
        return next((reply for key, reply in self.replies.items() if key in text), self.reply)

    async def _models(self, request: Request):
        return JSONResponse({"object": "list", "data": [{"id": "main", "object": "model", "owned_by": "tests"}]})

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )

    def _counting(self, app: Any) -> Any:
        """``app``, counting the chat requests under way. Counted around the whole ASGI call, not
        in the answer's generator: Starlette never starts (nor finalizes) the generator of an
        answer whose client left before its first byte."""

        async def counted(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] != "http" or not scope["path"].endswith("/chat/completions"):
                return await app(scope, receive, send)
            # A client that let a generation go before sending this request has closed its
            # connection already, but this server may read that close after the new request
            # (the event loop serves ready sockets in their own order): let what is pending run
            # first, so that the count is of generations under way, not of this server's lag.
            for _ in range(_SETTLE_TURNS):
                await asyncio.sleep(0)
            self.active += 1  # only the server's own thread (one event loop) changes it
            self.peak_active = max(self.peak_active, self.active)
            try:
                await app(scope, receive, send)
            finally:
                self.active -= 1

        return counted

    def start(self, port: int = 0) -> "LoopbackModel":
        self._server, self._thread, self.port = start_loopback(self._counting(self.app()), port)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="a loopback OpenAI-compatible main model")
    parser.add_argument("port", nargs="?", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before the first token")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between streamed tokens")
    parser.add_argument("--stand-in", action="store_true",
                        help=f"answer NeMo's self-check prompts (ending {SELF_CHECK_QUESTION!r}) with No, as `railstack serve`'s stand-in does")
    args = parser.parse_args()
    replies = dict(STAND_IN_REPLIES) if args.stand_in else {}
    model = LoopbackModel(replies=replies, latency_s=args.latency, token_delay_s=args.token_delay).start(args.port)
    print(f"loopback main model on {model.base_url}; Ctrl-C stops it", flush=True)
    model._thread.join()


if __name__ == "__main__":
    main()
