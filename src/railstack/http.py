"""The ASGI layers railstack puts in front of NeMo's server (installed by ``railstack.server``),
for streaming and non-streaming chat requests alike, outermost first:

- ``DecisionsMiddleware``: a request id for the decision log lines, and the request's decision
  records in the response headers;
- ``ValidationMiddleware``: malformed and hostile requests get 400/404/413 before anything
  else reads them (``railstack.validation``);
- ``AdmissionMiddleware``: 429/503 with Retry-After and OpenAI's x-ratelimit-* headers, decided
  before NeMo parses the request, so a refused request costs no rail, classifier or model time;
  an admitted one carries its remaining quota in the response headers, and the ``admission``
  rail inside NeMo sees the decision instead of taking from the buckets again;
- ``BackpressureMiddleware``: an admitted request takes a slot of its config's main stage at
  the door, or is shed with 503 and Retry-After; a client that goes away leaves the queue or
  frees its slot; a request a classifier engine's stage shed also gets 503;
- ``InputRailsMiddleware``: where a config's input flows are railstack's own, its input rails
  run here; a request they pass skips NeMo's input-rail machinery (about 10 ms of Colang CPU
  per request), a blocked one goes on to NeMo, whose flows say the config's refusal from these
  decisions without running the rails again.

``OpsMiddleware``, outermost, serves ``GET /railstack/health`` and ``GET /metrics``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import math
import os
import uuid
from typing import Any, Awaitable, Callable, Optional

from railstack import backpressure, metrics
from railstack.admission import Admission, Quota, client_key
from railstack.backpressure import Shed, Stage, overloaded_message
from railstack.mechanism import (
    Decision,
    Runtime,
    Tier,
    UnknownRails,
    collect_decisions,
    current_decisions,
    one_request,
    request_id,
)
from railstack.settings import ClientKeySettings, RequestLimits
from railstack.text import Unreadable, conversation_text, dialogue_of
from railstack.validation import ConfigRules, Rejected, parse_body, validate

log = logging.getLogger("railstack.http")

# The messages of the request being served, as the client sent them (set once validated).
http_messages: contextvars.ContextVar[Optional[list]] = contextvars.ContextVar("railstack_http_messages", default=None)
# The admission decision the HTTP layer already made for this request.
http_quota: contextvars.ContextVar[Optional[Quota]] = contextvars.ContextVar("railstack_http_quota", default=None)
# The input rails' decisions the HTTP layer already made for a request they blocked.
http_input_decisions: contextvars.ContextVar[Optional[list[Decision]]] = contextvars.ContextVar(
    "railstack_http_input_decisions", default=None
)

CHAT_PATH = "/v1/chat/completions"
CHECKS_PATH = "/v1/checks"  # NeMo's rails-only endpoint: validated too
HEALTH_PATH = "/railstack/health"
METRICS_PATH = "/metrics"


def error_body(message: str, *, error_type: str, code: str, param: Optional[str] = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": error_type, "param": param, "code": code}}).encode()


async def send_json(send: Callable, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def refusal(quota: Quota) -> tuple[int, bytes]:
    if quota.status == 503:
        message = f"Service unavailable: {quota.reason}. Retry after {math.ceil(quota.retry_after_s or 1)} s."
        return 503, error_body(message, error_type="service_unavailable", code="rate_limiter_unavailable")
    if quota.retry_after_s is None:
        return 429, error_body(f"Request too large: {quota.reason}.", error_type="tokens", code="rate_limit_exceeded")
    which = "requests" if quota.reason and quota.reason.startswith("requests") else "tokens"
    message = f"Rate limit reached: {quota.reason}. Retry after {max(1, math.ceil(quota.retry_after_s))} s."
    return 429, error_body(message, error_type=which, code="rate_limit_exceeded")


def _with_headers(send: Callable, extra: Callable[[], list[tuple[str, str]]]) -> Callable:
    """``send`` that appends ``extra()`` to the response's headers when they go out."""

    async def sending(message: dict) -> None:
        if message["type"] == "http.response.start":
            added = [(k.encode(), v.encode()) for k, v in extra()]
            message = {**message, "headers": [*message.get("headers", []), *added]}
        await send(message)

    return sending


def _headers(scope: dict) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _context(request: dict) -> Optional[dict]:
    guardrails = request.get("guardrails")
    context = guardrails.get("context") if isinstance(guardrails, dict) else None
    return context if isinstance(context, dict) else None


def _is_chat(scope: dict) -> bool:
    return scope["type"] == "http" and scope["method"] == "POST" and scope["path"].endswith(CHAT_PATH)


class DecisionsMiddleware:
    """Keeps each chat request's decision records and says them in the response headers:
    ``x-railstack-request-id`` (also in every decision log line) and ``x-railstack-decisions``
    (``rail=verdict`` for each rail that had decided when the headers went out: all input rails,
    since NeMo answers only after them, and the output rails of an answer that is not streamed),
    and ``Server-Timing`` (``input.heuristics;dur=0.42``: each of those rails' milliseconds)."""

    def __init__(self, app: Callable[..., Awaitable[None]]):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if not _is_chat(scope):
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")
        rid = given if 0 < len(given) <= 64 and given.isprintable() else uuid.uuid4().hex
        token = request_id.set(rid)
        try:
            with collect_decisions() as decisions:

                def headers() -> list[tuple[str, str]]:
                    out = [("x-railstack-request-id", rid)]
                    if decisions:
                        out.append(("x-railstack-decisions", ",".join(f"{d.rail}={d.verdict}" for d in decisions)))
                    ran = [d for d in decisions if d.verdict in ("allow", "block")]
                    if ran:
                        timing = ", ".join(f"{d.source}.{d.rail};dur={d.latency_ms:.2f}" for d in ran)
                        out.append(("server-timing", timing))
                    return out

                await self.app(scope, receive, _with_headers(send, headers))
        finally:
            request_id.reset(token)


REQUEST_KEY = "railstack.request"  # the parsed, validated body, left in the ASGI scope


class ValidationMiddleware:
    """Refuses malformed and hostile chat requests before anything else reads them (see
    ``railstack.validation``); a valid one goes on with its parsed body in the scope."""

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        rules: dict[str, ConfigRules],
        client_keys: dict[str, ClientKeySettings],
        default_config_id: Callable[[], Optional[str]],
    ):
        self.app = app
        self.rules = rules
        self.client_keys = client_keys
        self.default_config_id = default_config_id
        every = [r.limits for r in rules.values()] or [RequestLimits()]
        self.max_body = max(lim.max_body_bytes for lim in every)
        self.body_timeout = max(lim.body_timeout_s for lim in every)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        checks = scope["type"] == "http" and scope["method"] == "POST" and scope["path"].endswith(CHECKS_PATH)
        if not (_is_chat(scope) or checks):
            return await self.app(scope, receive, send)
        request: dict = {}
        try:
            declared = dict(scope.get("headers", [])).get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body:
                raise Rejected(413, f"The request body is over {self.max_body} bytes.", code="too_large")
            try:
                async with asyncio.timeout(self.body_timeout):  # unlike wait_for, no task per request
                    body, receive = await _buffer(receive, self.max_body)
            except asyncio.TimeoutError:
                raise Rejected(408, f"The request body did not arrive within {self.body_timeout:g} s.", code="timeout") from None
            request = parse_body(body)
            validate(request, self.rules.get, _default_config_id(self.default_config_id), user_last=not checks)
        except Rejected as exc:
            r = exc.rejection
            # Name the client the way its config's admission would, where the body says which.
            how = self.client_keys.get(_config_id(request) or "", ClientKeySettings())
            log.info(
                "request=%s client=%s rejected status=%d param=%s reason=%s",
                request_id.get(), client_key(how, _headers(scope), _context(request)),
                r.status, r.param or "-", r.message,
            )
            error_type = {413: "request_too_large", 404: "not_found", 408: "timeout"}.get(r.status, "invalid_request_error")
            return await send_json(send, r.status, error_body(r.message, error_type=error_type, code=r.code, param=r.param), [])
        scope = {**scope, REQUEST_KEY: request}
        token = http_messages.set(request["messages"])
        try:
            with one_request():  # the latency budgets count from here
                await self.app(scope, receive, send)
        finally:
            http_messages.reset(token)


class AdmissionMiddleware:
    """Sits inside ``ValidationMiddleware`` and reads the body it parsed."""

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        admissions: dict[str, tuple[Admission, float, str]],
        default_config_id: Callable[[], Optional[str]],
    ):
        self.app = app
        # config id -> (its Admission, decision timeout in s, failure policy)
        self.admissions = admissions
        self.default_config_id = default_config_id

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if not _is_chat(scope):
            return await self.app(scope, receive, send)
        request = scope[REQUEST_KEY]
        entry = self.admissions.get(_config_id(request) or _default_config_id(self.default_config_id) or "")
        if entry is None:
            return await self.app(scope, receive, send)
        admission, timeout, on_failure = entry

        key = admission.client_key(_headers(scope), _context(request))
        try:
            async with asyncio.timeout(timeout):
                quota = await admission.decide(key, admission.cost(request.get("messages"), _max_tokens(request)))
        except Exception as exc:  # noqa: BLE001 - the failure policy decides, never a 500
            log.warning("admission decision failed (%s); policy: fail-%s", type(exc).__name__, on_failure)
            if on_failure == "open":
                return await self.app(scope, receive, send)
            quota = Quota(False, None, retry_after_s=1.0, reason="the admission check failed", status=503)

        if not quota.allowed:
            status, payload = refusal(quota)
            return await send_json(send, status, payload, quota.headers())

        token = http_quota.set(quota)
        try:
            await self.app(scope, receive, _with_headers(send, quota.headers))
        finally:
            http_quota.reset(token)


def shed_response(exc: Shed) -> tuple[bytes, list[tuple[str, str]]]:
    body = error_body(overloaded_message(exc), error_type="service_unavailable", code="overloaded")
    return body, [("retry-after", str(max(1, math.ceil(exc.retry_after_s))))]


def _rail_shed_as_503(send: Callable) -> Callable:
    """``send`` that answers 503 instead of the refusal when a rail blocked because its engine's
    stage shed it. Input rails have all decided before NeMo starts a response, streaming too."""
    replaced = False

    async def sending(message: dict) -> None:
        nonlocal replaced
        if replaced:
            return
        if message["type"] == "http.response.start":
            shed = next((d for d in current_decisions() if d.verdict == "block" and "shed" in d.metadata), None)
            if shed is not None:
                replaced = True
                exc = Shed(shed.metadata["shed"], shed.metadata["shed_reason"], shed.metadata["retry_after_s"])
                body, headers = shed_response(exc)
                return await send_json(send, 503, body, headers)
        await send(message)

    return sending


class BackpressureMiddleware:
    """Sits inside ``AdmissionMiddleware``: only requests their client's quota admits queue."""

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        stages: dict[str, Stage],
        default_config_id: Callable[[], Optional[str]],
    ):
        self.app = app
        self.stages = stages  # config id -> its main stage
        self.default_config_id = default_config_id

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if not _is_chat(scope):
            return await self.app(scope, receive, send)
        send = _rail_shed_as_503(send)
        request = scope[REQUEST_KEY]
        stage = self.stages.get(_config_id(request) or _default_config_id(self.default_config_id) or "")
        if stage is None:
            return await self.app(scope, receive, send)

        body = await receive()  # replayed by the validation layer: the watcher must not take it
        gone = asyncio.Event()
        answered = asyncio.Event()
        request_task = asyncio.current_task()
        watcher = asyncio.ensure_future(_watch_disconnect(receive, gone, answered, request_task))
        taken_at: Optional[float] = None

        async def sending(message: dict) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                answered.set()  # servers report a disconnect once the answer is complete

        async def until_gone() -> dict:  # what the app hears after the body
            await gone.wait()
            return {"type": "http.disconnect"}

        try:
            taken_at = await stage.acquire()
            token = backpressure.held_main.set(stage.name)
            try:
                await self.app(scope, _replaying(body.get("body", b""), until_gone), sending)
            finally:
                backpressure.held_main.reset(token)
        except Shed as exc:
            log.info("request=%s shed by %s: %s", request_id.get(), exc.stage, exc.reason)
            payload, headers = shed_response(exc)
            await send_json(send, 503, payload, headers)
        except asyncio.CancelledError:
            if not gone.is_set():
                raise
            request_task.uncancel()  # the watcher's doing: the client went away, nothing to answer
            where = "queued for" if taken_at is None else "in"
            log.info("request=%s client went away %s %s", request_id.get(), where, stage.name)
        finally:
            watcher.cancel()
            if taken_at is not None:
                stage.release(taken_at)


async def _watch_disconnect(
    receive: Callable, gone: asyncio.Event, answered: asyncio.Event, request_task: asyncio.Task
) -> None:
    """Cancel the request's work (its wait in the queue, or the app) when its client goes away
    before its answer is complete."""
    while (await receive())["type"] != "http.disconnect":
        pass
    if not answered.is_set():
        gone.set()
        request_task.cancel()


class InputRailsMiddleware:
    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        input_rails: dict[str, tuple[Runtime, list[str]]],
        default_config_id: Callable[[], Optional[str]],
    ):
        self.app = app
        self.input_rails = input_rails  # config id -> (its runtime, the rails of its input flows)
        self.default_config_id = default_config_id
        self.ready: set[str] = set()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if not _is_chat(scope):
            return await self.app(scope, receive, send)
        request = scope[REQUEST_KEY]
        config_id = _config_id(request) or _default_config_id(self.default_config_id) or ""
        entry = self.input_rails.get(config_id)
        if entry is None:
            return await self.app(scope, receive, send)
        runtime, names = entry
        if config_id not in self.ready:
            try:
                runtime.prepare(names)
            except UnknownRails:  # defined by the config's own actions, which NeMo has not loaded yet
                return await self.app(scope, receive, send)
            self.ready.add(config_id)
        try:
            text = conversation_text(request["messages"])
            dialogue = dialogue_of(request["messages"])
        except Unreadable:  # NeMo's flows refuse it with the reason
            return await self.app(scope, receive, send)
        context = {**(_context(request) or {}), "user_message": text}
        check = functools.partial(runtime.decide, source="input", text=text, nemo_context=context, dialogue=dialogue)
        speculate = runtime.settings.latency.speculative_start
        cheap = [n for n in names if not speculate or runtime.tier_of(n) <= Tier.CHEAP]
        dear = [n for n in names if n not in cheap]
        decisions, blocker = await check(cheap)
        if blocker is None and dear:
            return await self._speculate(scope, receive, send, request, functools.partial(check, dear), decisions)
        if blocker is not None:
            decisions += runtime.skipped(dear, "input")
            return await self._refuse(scope, receive, send, decisions)
        await receive()  # the original body, replaced by the one that turns NeMo's input rails off
        await self.app(*_without_input_rails(scope, request, receive), send)

    async def _refuse(self, scope: dict, receive: Callable, send: Callable, decisions: list[Decision]) -> None:
        """NeMo's flows say the refusal the input rails reached here (no main-model call)."""
        token = http_input_decisions.set(decisions)
        try:
            await self.app(scope, receive, send)
        finally:
            http_input_decisions.reset(token)

    async def _speculate(
        self,
        scope: dict,
        receive: Callable,
        send: Callable,
        request: dict,
        dear: Callable[[], Awaitable[tuple[list[Decision], Optional[Decision]]]],
        decisions: list[Decision],
    ) -> None:
        """The cheap tiers passed: NeMo (and the main model) start now, while the classifier tiers
        decide. Its response is held back until they pass; a block cancels the main-model calls and
        NeMo, and the client gets the refusal instead, never a byte of the answer."""
        await receive()
        held = _Held(send)
        calls = backpressure.MainCalls()
        token = backpressure.main_calls.set(calls)
        try:
            nemo = asyncio.ensure_future(self.app(*_without_input_rails(scope, request, receive), held.send))
        finally:
            backpressure.main_calls.reset(token)
        try:
            more, blocker = await dear()
        except BaseException:
            calls.cancel()
            nemo.cancel()
            await asyncio.gather(nemo, return_exceptions=True)
            raise
        if blocker is None:
            await held.release()
            return await nemo
        calls.cancel()
        nemo.cancel()
        await asyncio.gather(nemo, return_exceptions=True)
        metrics.SPECULATIVE_CANCELLED.inc()
        body = json.dumps(request).encode()
        await self._refuse(_with_body(scope, body), _replaying(body, receive), send, decisions + more)


class _Held:
    """A response's ASGI messages, held until ``release`` sends them, in order; after it, sent
    straight through."""

    def __init__(self, send: Callable):
        self._send = send
        self._held: list[dict] = []
        self._open = False

    async def send(self, message: dict) -> None:
        if self._open:
            return await self._send(message)
        self._held.append(message)

    async def release(self) -> None:
        while self._held:
            await self._send(self._held.pop(0))
        self._open = True


def _with_body(scope: dict, body: bytes) -> dict:
    headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
    return {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}


def _without_input_rails(scope: dict, request: dict, receive: Callable) -> tuple[dict, Callable]:
    """The scope and receive of the request with NeMo's input rails turned off (they ran here)."""
    guardrails = request.get("guardrails") or {}
    options = {**(guardrails.get("options") or {}), "rails": {"input": False}}
    body = json.dumps({**request, "guardrails": {**guardrails, "options": options}}).encode()
    return _with_body(scope, body), _replaying(body, receive)


def _replaying(body: bytes, receive: Callable) -> Callable:
    given = False

    async def replay() -> dict[str, Any]:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class OpsMiddleware:
    """``GET /railstack/health``: healthy / degraded / overloaded (503) with each stage's
    in-flight, queued, admitted and shed counts; ``GET /metrics``: Prometheus text format."""

    def __init__(self, app: Callable[..., Awaitable[None]]):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            if scope["path"].endswith(HEALTH_PATH):
                status, stages = backpressure.health()
                body = json.dumps({"status": status, "stages": stages}).encode()
                return await send_json(send, 503 if status == "overloaded" else 200, body, [("cache-control", "no-store")])
            if scope["path"].endswith(METRICS_PATH):
                from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                body = generate_latest()
                raw = [(b"content-type", CONTENT_TYPE_LATEST.encode()), (b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": 200, "headers": raw})
                return await send({"type": "http.response.body", "body": body})
        await self.app(scope, receive, send)


def _max_tokens(request: dict) -> Any:
    given = request.get("max_tokens")
    return given if given is not None else request.get("max_completion_tokens")


def _default_config_id(server_default: Callable[[], Optional[str]]) -> Optional[str]:
    # The order NeMo resolves a request without a config id in.
    return os.getenv("DEFAULT_CONFIG_ID") or server_default()


def _config_id(request: dict) -> Optional[str]:
    guardrails = request.get("guardrails")
    if not isinstance(guardrails, dict):
        return None
    if isinstance(guardrails.get("config_id"), str):
        return guardrails["config_id"]
    ids = guardrails.get("config_ids")
    return ids[0] if isinstance(ids, list) and ids and isinstance(ids[0], str) else None


async def _buffer(receive: Callable, limit: int) -> tuple[bytes, Callable]:
    """Read the whole request body (refusing one over ``limit`` bytes as soon as it is), and
    give the app a receive that replays it."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            raise Rejected(413, f"The request body is over {limit} bytes.", code="too_large")
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    return body, _replaying(body, receive)
