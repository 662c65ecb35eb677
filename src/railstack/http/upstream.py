"""The request's deadline, and the main model's failures said with their real status.

NeMo's server answers an unreachable or hung main model with 500 (after its client's timeout
on every try), a main model's 5xx with that status as if it were railstack's, and its 404 as a
404 that reads like railstack's own route is missing. This layer, just inside validation, gives
each chat request ``limits.request_timeout_s`` in all (504 when it passes: the main-model calls
are cancelled and the layers under it free the request's backpressure slot), and answers a
failed main-model call (``railstack.overload.gate`` keeps what it raised) as a gateway does:

- unreachable, connection broken, an answer that is no OpenAI answer: 502 ``bad_gateway``;
- timed out: 504 ``gateway_timeout``;
- a 4xx of the main model: that status, with its message; a 5xx: 502.

A stream that has not started gets the same status; one that has gets an SSE error event of the
same body in place of NeMo's, then ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional
from urllib.parse import urlsplit

from railstack.core.request import derive, request_id
from railstack.http.asgi import REQUEST_KEY, config_id_of, is_chat
from railstack.http.errors import error_body, send_json
from railstack.nemo.compat import MainModelFailure, main_model_failure
from railstack.overload.gate import MainCalls

log = logging.getLogger("railstack.http")

# OpenAI's error types by status, for a main model's 4xx that names none.
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
          422: "invalid_request_error", 429: "rate_limit_error"}
MAX_UPSTREAM_MESSAGE = 500  # a wrong base_url can answer a whole HTML page


@dataclass(frozen=True)
class MainModel:
    """A config's main model as its clients are told of it, and the config's request deadline."""

    name: str
    base_url: Optional[str]  # None: its provider's own
    deadline_s: float

    @property
    def host(self) -> str:
        if self.base_url is None:
            return "its provider's endpoint"
        return urlsplit(self.base_url).netloc or self.base_url

    def described(self) -> str:
        return f"The main model '{self.name}' at {self.host}"


@dataclass(frozen=True)
class Answer:
    """An error answer: status, OpenAI error body, extra headers."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    def event(self) -> bytes:
        return b"data: " + self.body + b"\n\n"


def failure_answer(model: MainModel, failure: MainModelFailure) -> Answer:
    who = model.described()
    if failure.kind == "timeout":
        return Answer(504, error_body(f"{who} did not answer in time: {failure.message}.",
                                      error_type="gateway_timeout", code="main_model_timeout"))
    if failure.kind != "status":
        what = {"unreachable": "is unreachable", "connection_lost": "broke off its answer",
                "bad_response": "sent an answer that is not OpenAI's chat format"}[failure.kind]
        return Answer(502, error_body(f"{who} {what}: {failure.message}", error_type="bad_gateway",
                                      code=f"main_model_{failure.kind}"))
    said = failure.message.strip()[:MAX_UPSTREAM_MESSAGE] or "no message"
    message = f"{who} answered HTTP {failure.status}: {said}"
    if failure.status >= 500:
        return Answer(502, error_body(message, error_type="bad_gateway", code="main_model_error"))
    if failure.status == 404:
        message += " (railstack's own route exists: check the main model's name and base_url, which ends in /v1 " \
                   "for an OpenAI-compatible server)"
    headers = ()
    if failure.retry_after_s is not None:
        headers = (("retry-after", str(max(1, math.ceil(failure.retry_after_s)))),)
    error_type = failure.error_type or _TYPES.get(failure.status, "invalid_request_error")
    return Answer(failure.status, error_body(message, error_type=error_type, code=failure.code or "main_model_rejected",
                                             param=failure.param), headers)


def deadline_answer(model: MainModel, reached: bool) -> Answer:
    where = "it had reached" if reached else "it had not reached"
    message = (f"The request did not finish within its deadline of {model.deadline_s:g} s (limits.request_timeout_s); "
               f"{where} the main model '{model.name}' at {model.host}.")
    return Answer(504, error_body(message, error_type="gateway_timeout", code="request_timeout"))


def _is_stream(start: dict) -> bool:
    return any(k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in start.get("headers", []))


class _Response:
    """The ``send`` of one chat request: NeMo's error answer for a failed main-model call (before
    the stream starts: the response; after: its error event) becomes this layer's."""

    def __init__(self, send: Callable, model: MainModel):
        self._send = send
        self.model = model
        self.failures: list[BaseException] = []  # the gate appends what the main model's calls raised
        self.started = False
        self.stream = False
        self.finished = False  # the last body message went out: nothing more may

    def failed(self) -> Optional[Answer]:
        for exc in self.failures:
            failure = main_model_failure(exc)
            if failure is not None:
                return failure_answer(self.model, failure)
        return None

    async def send(self, message: dict) -> None:
        if self.finished:
            return  # the rest of an answer this layer replaced
        if message["type"] == "http.response.start":
            answer = self.failed()
            if answer is not None and (message.get("status", 200) >= 400 or _is_stream(message)):
                return await self.answer(answer)
            self.started, self.stream = True, _is_stream(message)
            return await self._send(message)
        if message["type"] == "http.response.body":
            body = message.get("body", b"")
            answer = self.failed() if self.stream else None
            if answer is not None and body.lstrip().startswith(b'data: {"error"'):
                # NeMo's error event, sent as one message: the one event railstack words itself.
                self._log(answer)
                message = {**message, "body": answer.event()}
            self.finished = not message.get("more_body", False)
        await self._send(message)

    async def answer(self, answer: Answer) -> None:
        """``answer`` in place of whatever is left of the response."""
        if self.finished:
            return
        self._log(answer)
        self.finished = True
        if not self.started:
            return await send_json(self._send, answer.status, answer.body, list(answer.headers))
        # A stream ends with the error as an event; an answer not streamed cannot change its status.
        end = answer.event() + b"data: [DONE]\n\n" if self.stream else b""
        await self._send({"type": "http.response.body", "body": end, "more_body": False})

    def _log(self, answer: Answer) -> None:
        error = json.loads(answer.body)["error"]
        log.warning("request=%s status=%d code=%s %s", request_id(), answer.status, error["code"], error["message"])


class UpstreamMiddleware:
    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        models: dict[str, MainModel],
        default_config_id: Callable[[], Optional[str]],
    ):
        self.app = app
        self.models = models  # config id -> its main model and deadline
        self.default_config_id = default_config_id

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        model = self.models.get(config_id_of(scope[REQUEST_KEY], self.default_config_id)) if is_chat(scope) else None
        if model is None:
            return await self.app(scope, receive, send)
        response = _Response(send, model)
        calls = MainCalls()
        task = asyncio.current_task()
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            # NeMo streams from a task of its own and, cancelled, waits for that task to end: its
            # main-model call is stopped at once, not after the model's own timeout. The request's
            # own task first, so that ending the calls does not cancel it a second time.
            task.cancel()
            calls.expire()

        timer = asyncio.get_running_loop().call_later(model.deadline_s, expire)
        try:
            with derive(main_failures=response.failures, main_calls=calls):
                await self.app(scope, receive, response.send)
        except asyncio.CancelledError:
            if not expired:
                raise
            task.uncancel()
            # The layers under this one have unwound: the backpressure slot is free.
            await response.answer(deadline_answer(model, calls.made > 0))
        finally:
            timer.cancel()


PROBE_TIMEOUT_S = 3.0


def probe_problem(base_url: str, api_key: Optional[str], timeout_s: float = PROBE_TIMEOUT_S) -> Optional[str]:
    """What is wrong with a main model's endpoint, by ``GET {base_url}/models`` (which every
    OpenAI-compatible server answers); None when it looks right."""
    import httpx

    missing_v1 = not urlsplit(base_url).path.rstrip("/").endswith("/v1")
    hint = "; an OpenAI-compatible base_url ends in /v1: add /v1 to it" if missing_v1 else ""
    url = base_url.rstrip("/") + "/models"
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        res = httpx.get(url, headers=headers, timeout=timeout_s)
    except httpx.TransportError as exc:
        return f"GET {url} failed ({type(exc).__name__}: {str(exc) or 'no answer'}){hint}"
    if res.status_code in (401, 403):
        return None  # there, and OpenAI-like enough to want a key: the requests will tell
    try:
        listed = res.json() if res.status_code == 200 else None
    except ValueError:
        listed = None
    if not (isinstance(listed, dict) and isinstance(listed.get("data"), list)):
        said = f"HTTP {res.status_code}" + ("" if res.status_code != 200 else ", not a list of models")
        return f"GET {url} answered {said}: it does not look OpenAI-compatible{hint}"
    return None


def probe_main_models(models: dict[str, tuple[MainModel, Optional[str]]], timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Ask each config's main model for its models once, side by side, and log a warning for each
    that is unreachable or not OpenAI-compatible. A warning, not a refusal: the model may come up
    after railstack. Start-up waits ``timeout_s`` at most."""
    import concurrent.futures

    endpoints: dict[tuple[str, Optional[str]], list[str]] = {}
    for config_id, (model, api_key) in models.items():
        if model.base_url is not None:
            endpoints.setdefault((model.base_url, api_key), []).append(config_id)
    if not endpoints:
        return
    pool = concurrent.futures.ThreadPoolExecutor(len(endpoints), thread_name_prefix="railstack-probe")
    asked = {pool.submit(probe_problem, url, key, timeout_s): (url, ids) for (url, key), ids in endpoints.items()}
    done, late = concurrent.futures.wait(asked, timeout=timeout_s + 1)
    pool.shutdown(wait=False)
    for future in asked:
        url, ids = asked[future]
        problem = future.result() if future in done else f"GET {url.rstrip('/')}/models did not answer within {timeout_s:g} s"
        if problem is not None:
            log.warning("main model of config(s) %s at %s: %s. Requests to it will fail (502/504) until it answers.",
                        ", ".join(ids), url, problem)
