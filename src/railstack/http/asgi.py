"""ASGI plumbing the layers share: which requests are chat requests, the parsed body in the
scope, replaying a body already read, adding headers to a response."""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

from railstack.http.rules import Rejected

CHAT_PATH = "/v1/chat/completions"
CHECKS_PATH = "/v1/checks"  # NeMo's rails-only endpoint: validated too
HEALTH_PATH = "/railstack/health"
READY_PATH = "/railstack/ready"
LIVE_PATH = "/railstack/live"
METRICS_PATH = "/metrics"
REQUEST_KEY = "railstack.request"  # the parsed, validated body, left in the ASGI scope


def with_headers(send: Callable, extra: Callable[[], list[tuple[str, str]]]) -> Callable:
    """``send`` that appends ``extra()`` to the response's headers when they go out."""

    async def sending(message: dict) -> None:
        if message["type"] == "http.response.start":
            added = [(k.encode(), v.encode()) for k, v in extra()]
            message = {**message, "headers": [*message.get("headers", []), *added]}
        await send(message)

    return sending


def headers(scope: dict) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def context(request: dict) -> Optional[dict]:
    guardrails = request.get("guardrails")
    context = guardrails.get("context") if isinstance(guardrails, dict) else None
    return context if isinstance(context, dict) else None


def is_chat(scope: dict) -> bool:
    return scope["type"] == "http" and scope["method"] == "POST" and scope["path"].endswith(CHAT_PATH)


def with_body(scope: dict, body: bytes) -> dict:
    headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
    return {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}


def replaying(body: bytes, receive: Callable) -> Callable:
    given = False

    async def replay() -> dict[str, Any]:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def max_tokens(request: dict) -> Any:
    given = request.get("max_tokens")
    return given if given is not None else request.get("max_completion_tokens")


def config_id_of(body: dict, server_default: Callable[[], Optional[str]]) -> str:
    """The config a request asks for, in the order NeMo resolves it: the body's id, else the
    ``DEFAULT_CONFIG_ID`` environment variable, else the server's default ("" when none)."""
    return requested_config_id(body) or os.getenv("DEFAULT_CONFIG_ID") or server_default() or ""


def requested_config_id(request: dict) -> Optional[str]:
    guardrails = request.get("guardrails")
    if not isinstance(guardrails, dict):
        return None
    if isinstance(guardrails.get("config_id"), str):
        return guardrails["config_id"]
    ids = guardrails.get("config_ids")
    return ids[0] if isinstance(ids, list) and ids and isinstance(ids[0], str) else None


async def buffer(receive: Callable, limit: int) -> tuple[bytes, Callable]:
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
    return body, replaying(body, receive)
