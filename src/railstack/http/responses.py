"""What an OpenAI client (the ``openai`` SDK, LangChain's ``ChatOpenAI``) sees of a guarded turn,
said the way OpenAI's API says it. NeMo 0.24's server answers a refused turn like any other, ends
a stream without a finish_reason and drops the main model's token counts; this layer, just
inside the one that names the request, rewrites each chat response so that

- a turn a rail refused (a ``block`` decision of the request, input or output) ends with
  ``finish_reason: "content_filter"``: on each choice of an answer, on the last chunk of a
  stream. The refusal text and railstack's headers stay as they are. NeMo's
  ``guardrails_violation`` error event (a streamed answer an output rail stopped), which the
  ``openai`` SDK raises as an ``APIError``, becomes that last chunk, NeMo's error kept in it under
  ``guardrails.error``;
- every stream ends with a chunk that says its finish_reason, before ``data: [DONE]``;
- every response says ``x-request-id`` (the value of ``x-railstack-request-id``), the header
  OpenAI's SDKs read the request id from;
- ``usage`` holds the main model's token counts when it reported them: in the answer, and in a
  last chunk of no choices when the request's ``stream_options.include_usage`` asks, as OpenAI
  sends it.

A stream is rewritten one SSE event at a time as it arrives, never held whole. Anything this does
not recognise (a body that is not JSON or SSE, an event it cannot read, a rewrite that fails)
goes to the client unchanged: a refusal stays a refusal, and never becomes a 500.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import uuid
from typing import Any, Awaitable, Callable, Iterator, Optional

# NeMo internals: imported here, when the server installs this layer, so that a NeMo release
# that moved them stops the server at start-up instead of failing every chat request.

from railstack.core import request
from railstack.nemo import compat
from railstack.http.asgi import is_chat

log = logging.getLogger("railstack.http")

FILTERED = "content_filter"
# An event longer than this is no chat chunk: the rest of that stream goes through as it is,
# rather than growing a buffer without bound while the client waits.
MAX_EVENT_BYTES = 1 << 20
EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class ResponsesMiddleware:
    def __init__(self, app: Callable[..., Awaitable[None]]):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if not is_chat(scope):
            return await self.app(scope, receive, send)
        turn = Turn(request.current())
        with turn.counting_tokens():
            await self.app(scope, turn.reading(receive), Response(turn, send).send)


class Turn:
    """What the rewrites need to know of one chat request: its decisions, the body its client
    sent (seen as the layers under this one read it) and the main model's calls."""

    def __init__(self, req: Optional[request.RequestContext]):
        self.req = req
        self._body: list[bytes] = []
        self._request: Optional[dict] = None
        self._calls = compat.LLMCallLog()  # the main model's calls, once NeMo has made them

    @property
    def request_id(self) -> Optional[str]:
        return self.req.request_id if self.req is not None else None

    @property
    def refused(self) -> bool:
        return self.req is not None and any(d.verdict == "block" for d in self.req.decisions)

    def reading(self, receive: Callable) -> Callable:
        async def read() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                self._body.append(message.get("body", b""))
            return message

        return read

    def request(self) -> dict:
        """The body as the client sent it. Validation refused it unless it is a JSON object; the
        layers under it may send NeMo another (input rails turned off), this is the client's."""
        if self._request is None:
            try:
                parsed = json.loads(b"".join(self._body))
            except (ValueError, RecursionError):
                parsed = None
            self._request = parsed if isinstance(parsed, dict) else {}
        return self._request

    def include_usage(self) -> bool:
        options = self.request().get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True

    def model(self) -> str:
        model = self.request().get("model")
        return model if isinstance(model, str) else "unknown"  # NeMo's name for none

    @contextlib.contextmanager
    def counting_tokens(self) -> Iterator[None]:
        """The call log set here is the request's own (``compat.LLMCallLog``), and reaches the task
        NeMo streams from, which starts inside this one."""
        with self._calls.recording():
            yield

    def usage(self, model: Optional[str]) -> Optional[dict[str, int]]:
        """The tokens of this turn's calls to the main model (the one the request names: NeMo makes
        it the main model), None when it reported none (a turn refused before it ran, a model
        that does not count)."""
        calls = [c for c in self._calls.calls() if c.llm_model_name == model and c.total_tokens]
        if not calls:
            return None
        prompt = sum(c.prompt_tokens or 0 for c in calls)
        completion = sum(c.completion_tokens or 0 for c in calls)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": sum(c.total_tokens for c in calls)}


class Response:
    """The ``send`` of one chat response: a 200 JSON answer is held until its body is whole and
    rewritten; a stream goes out event by event; anything else goes through."""

    def __init__(self, turn: Turn, send: Callable):
        self.turn = turn
        self._send = send
        self.mode = "pass"
        self.start: Optional[dict] = None
        self.held: list[bytes] = []
        self.events: Optional[Events] = None

    async def send(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            return await self._started(message)
        if message["type"] != "http.response.body" or self.mode == "pass":
            return await self._send(message)
        body, final = message.get("body", b""), not message.get("more_body", False)
        if self.mode == "answer":
            self.held.append(body)
            if final:
                await self._answer()
            return
        out = self.events.feed(body) + (self.events.flush() if final else b"")
        await self._send({**message, "body": out})

    async def _started(self, message: dict) -> None:
        headers = list(message.get("headers", []))
        if self.turn.request_id is not None and not any(k.lower() == b"x-request-id" for k, _ in headers):
            headers.append((b"x-request-id", self.turn.request_id.encode("latin-1")))
        message = {**message, "headers": headers}
        kind = dict((k.lower(), v) for k, v in headers).get(b"content-type", b"")
        if message.get("status", 200) == 200 and kind.startswith(b"application/json"):
            self.mode, self.start = "answer", message
            return
        if kind.startswith(b"text/event-stream"):
            self.mode, self.events = "stream", Events(self.turn)
        await self._send(message)

    async def _answer(self) -> None:
        raw = b"".join(self.held)
        try:
            body = rewrite_answer(raw, self.turn)
        except Exception:  # the answer goes out as NeMo wrote it, refusal text and all
            log.exception("request=%s answer not rewritten", self.turn.request_id)
            body = raw
        headers = [(k, v) for k, v in self.start["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self._send({**self.start, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})


def rewrite_answer(raw: bytes, turn: Turn) -> bytes:
    try:
        answer = json.loads(raw)
    except (ValueError, RecursionError):
        return raw
    if not (isinstance(answer, dict) and answer.get("object") == "chat.completion" and isinstance(answer.get("choices"), list)):
        return raw
    changed = False
    if turn.refused:
        for choice in answer["choices"]:
            if isinstance(choice, dict):
                choice["finish_reason"], changed = FILTERED, True
    usage = turn.usage(answer.get("model")) if answer.get("usage") is None else None
    if usage is not None:
        answer["usage"], changed = usage, True
    # Compact, as NeMo's own JSON responses are.
    return json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode() if changed else raw


class Events:
    """One stream's SSE events, rewritten as each completes; a partial one waits for the rest of
    its bytes. Events it does not rewrite go out byte for byte."""

    def __init__(self, turn: Turn):
        self.turn = turn
        self.pending = b""
        self.last: Optional[dict] = None  # the last chunk: the chunks added reuse its id, created, model
        self.finished = False  # a chunk has said the finish_reason
        self.usage_sent = False
        self.ended = False  # an error event ended the stream: nothing is added after it
        self.passing = False  # the rest of the stream goes through as it is

    def feed(self, data: bytes) -> bytes:
        if self.passing:
            return data
        self.pending += data
        out = []
        while (end := EVENT_END.search(self.pending)) is not None:
            raw, self.pending = self.pending[: end.end()], self.pending[end.end() :]
            try:
                out.append(self.rewrite(raw))
            except Exception:  # this event and the rest go out as NeMo wrote them
                log.exception("request=%s stream not rewritten from here on", self.turn.request_id)
                self.passing = True
                out.append(raw + self.pending)
                self.pending = b""
                return b"".join(out)
        if len(self.pending) > MAX_EVENT_BYTES:
            log.warning(
                "request=%s an SSE event over %d bytes: the stream goes on unrewritten", self.turn.request_id, MAX_EVENT_BYTES
            )
            self.passing = True
            out.append(self.pending)
            self.pending = b""
        return b"".join(out)

    def flush(self) -> bytes:
        """What is left at the end of the stream: an event cut short goes out as it came."""
        rest, self.pending = self.pending, b""
        return rest

    def rewrite(self, raw: bytes) -> bytes:
        data = data_of(raw)
        if data is None:
            return raw
        if data.strip() == "[DONE]":
            return self.closing() + raw
        try:
            chunk = json.loads(data)
        except (ValueError, RecursionError):
            return raw
        if not isinstance(chunk, dict):
            return raw
        error = chunk.get("error")
        if isinstance(error, dict):
            if error.get("type") != "guardrails_violation":
                self.ended = True
                return raw
            self.finished = True
            return event(self.finish_chunk(FILTERED, guardrails={"error": error}))
        if chunk.get("usage"):
            self.usage_sent = True
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return raw
        self.last = chunk
        said = [c for c in choices if isinstance(c, dict) and c.get("finish_reason")]
        if not said:
            return raw
        self.finished = True
        if not self.turn.refused:
            return raw
        for choice in said:
            choice["finish_reason"] = FILTERED
        return event(chunk)

    def closing(self) -> bytes:
        """The chunks that go before ``data: [DONE]``: the finish_reason, unless one was said;
        the usage, when the client asked for it."""
        if self.ended:
            return b""
        out = b""
        if not self.finished:
            self.finished = True
            out += event(self.finish_chunk(FILTERED if self.turn.refused else "stop"))
        if self.turn.include_usage() and not self.usage_sent:
            usage = self.turn.usage(self.base()["model"])
            if usage is not None:
                self.usage_sent = True
                out += event({**self.base(), "choices": [], "usage": usage})
        return out

    def base(self) -> dict:
        if self.last is None:  # no chunk came before: the chunks added share one made-up id
            self.last = {"id": f"chatcmpl-{uuid.uuid4()}", "created": int(time.time()), "model": self.turn.model()}
        last = self.last
        return {
            "id": last.get("id") or f"chatcmpl-{uuid.uuid4()}",
            "object": "chat.completion.chunk",
            "created": last.get("created") or int(time.time()),
            "model": last.get("model") or self.turn.model(),
        }

    def finish_chunk(self, reason: str, **extra: Any) -> dict:
        return {**self.base(), "choices": [{"index": 0, "delta": {}, "finish_reason": reason}], **extra}


def data_of(raw: bytes) -> Optional[str]:
    """The data of an event made of ``data:`` lines only (None for any other)."""
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        return None
    values = []
    for line in lines:
        if not line:
            continue
        if not line.startswith("data:"):
            return None
        values.append(line[6:] if line.startswith("data: ") else line[5:])
    return "\n".join(values) if values else None


def event(chunk: dict) -> bytes:
    # As NeMo's server writes its chunks.
    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()
