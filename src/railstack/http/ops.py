"""Operations endpoints: health and Prometheus metrics."""

from __future__ import annotations

import json
from typing import Awaitable, Callable

from railstack.http.asgi import HEALTH_PATH, METRICS_PATH
from railstack.http.errors import send_json
from railstack.overload.stages import stages


class OpsMiddleware:
    """``GET /railstack/health``: healthy / degraded / overloaded (503) with each stage's
    in-flight, queued, admitted and shed counts; ``GET /metrics``: Prometheus text format."""

    def __init__(self, app: Callable[..., Awaitable[None]]):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            if scope["path"].endswith(HEALTH_PATH):
                status, states = stages.health()
                body = json.dumps({"status": status, "stages": states}).encode()
                return await send_json(send, 503 if status == "overloaded" else 200, body, [("cache-control", "no-store")])
            if scope["path"].endswith(METRICS_PATH):
                from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                body = generate_latest()
                raw = [(b"content-type", CONTENT_TYPE_LATEST.encode()), (b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": 200, "headers": raw})
                return await send({"type": "http.response.body", "body": body})
        await self.app(scope, receive, send)
