"""The loopback main model the tests run against (``railstack.tools.loopback``), under the tests' name,
with the faults an endpoint can have.

    python tests/main_model.py [PORT] [--latency S] [--token-delay S]
"""

import json
from dataclasses import dataclass
from typing import Optional

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from railstack.tools.loopback import LoopbackModel, main, start_loopback

__all__ = ["MainModelDouble", "start_loopback"]


class Dropped(Exception):
    """Raised inside the model's answer: its server breaks the connection off there."""


async def _cut_short(scope, receive, send):
    """An answer whose connection breaks off after its first bytes (before them, the server would
    answer 500 itself)."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")]})
    await send({"type": "http.response.body", "body": b'{"id": "c", ', "more_body": True})
    raise Dropped("mid-answer")


@dataclass
class MainModelDouble(LoopbackModel):
    """The loopback model, answering under ``/<name>/v1`` too, so that one server can be a new
    endpoint for each test: NeMo keeps one HTTP client per base URL for the whole process, bound
    to the event loop it was made in, and every test (and every served app) runs a loop of its
    own. ``forget`` in support.py gives the model a new name.

    Faults: ``fail_status`` answers every chat request with that status and an OpenAI error body
    saying ``fail_message`` (and ``retry_after`` as its Retry-After header); ``drop`` breaks the connection off (a stream after its first token);
    ``not_openai`` answers 200 with a web page, as a base_url that names some other server gets;
    a large ``latency_s`` is a model that hangs."""

    name: str = "t0"
    fail_status: Optional[int] = None
    fail_message: str = "the model is not feeling well"
    retry_after: Optional[str] = None
    drop: bool = False
    not_openai: bool = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.name}/v1"

    async def _chat(self, request: Request):
        if self.fail_status is None and not self.drop and not self.not_openai:
            return await super()._chat(request)
        body = await request.json()
        self.requests.append(body)
        if self.not_openai:
            return HTMLResponse("<html><body>Welcome to nginx!</body></html>")
        if self.fail_status is not None:
            error = {"message": self.fail_message, "type": "test_error", "code": "test_fault", "param": None}
            headers = {"retry-after": self.retry_after} if self.retry_after is not None else None
            return JSONResponse({"error": error}, status_code=self.fail_status, headers=headers)
        if not body.get("stream"):
            return _cut_short

        async def first_token_then_gone():
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": body.get("model", "main"),
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Partial"}, "finish_reason": None}]}
            yield f"data: {json.dumps(chunk)}\n\n"
            raise Dropped("mid-stream")

        return StreamingResponse(first_token_then_gone(), media_type="text/event-stream")

    def app(self):
        app = super().app()
        app.router.routes.extend([
            Route("/{name}/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/{name}/v1/models", self._models, methods=["GET"]),
        ])
        return app


if __name__ == "__main__":
    main()
