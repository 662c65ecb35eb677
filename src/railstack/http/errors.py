"""One place for what railstack's HTTP answers look like: OpenAI-style error bodies, 429/503
with Retry-After."""

from __future__ import annotations

import json
import math
from typing import Callable, Optional

from railstack.admission.quota import Quota
from railstack.core.types import Shed
from railstack.overload.stages import overloaded_message


def error_body(message: str, *, error_type: str, code: str, param: Optional[str] = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": error_type, "param": param, "code": code}}).encode()


async def send_json(send: Callable, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def quota_refusal(quota: Quota) -> tuple[int, bytes]:
    if quota.status == 503:
        message = f"Service unavailable: {quota.reason}. Retry after {math.ceil(quota.retry_after_s or 1)} s."
        return 503, error_body(message, error_type="service_unavailable", code="rate_limiter_unavailable")
    if quota.retry_after_s is None:
        return 429, error_body(f"Request too large: {quota.reason}.", error_type="tokens", code="rate_limit_exceeded")
    which = "requests" if quota.reason and quota.reason.startswith("requests") else "tokens"
    message = f"Rate limit reached: {quota.reason}. Retry after {max(1, math.ceil(quota.retry_after_s))} s."
    return 429, error_body(message, error_type=which, code="rate_limit_exceeded")


def shed_response(exc: Shed) -> tuple[bytes, list[tuple[str, str]]]:
    body = error_body(overloaded_message(exc), error_type="service_unavailable", code="overloaded")
    return body, [("retry-after", str(max(1, math.ceil(exc.retry_after_s))))]
