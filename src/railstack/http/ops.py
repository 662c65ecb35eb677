"""Operations endpoints: health, readiness, liveness and Prometheus metrics; and the label of a
server whose main model is railstack's loopback stand-in (``railstack serve`` started it)."""

from __future__ import annotations

import json
import os
from typing import Awaitable, Callable, Optional

from railstack.core import metrics
from railstack.http.asgi import HEALTH_PATH, LIVE_PATH, METRICS_PATH, READY_PATH, with_headers
from railstack.http.errors import send_json
from railstack.overload.health import dependencies
from railstack.overload.stages import stages

_ORDER = {"healthy": 0, "degraded": 1, "overloaded": 2, "unhealthy": 3}
_DEPENDENCY_LEVEL = {"healthy": 0, "degraded": 1, "unhealthy": 2}
_STAGE_LEVEL = {"healthy": 0, "degraded": 1, "overloaded": 2}
_NO_STORE = [("cache-control", "no-store")]
STAND_IN_ENV = "RAILSTACK_MAIN_MODEL_STAND_IN"  # the stand-in's base URL, set by `railstack serve` only
STAND_IN_HEADER = "x-railstack-stand-in"


def stand_in() -> Optional[str]:
    """What a client is told when the main model is the loopback stand-in, else None."""
    url = os.environ.get(STAND_IN_ENV)
    if not url:
        return None
    return (f"the main model at {url} is railstack's loopback stand-in (one canned reply, and No to self-check questions), not a real model; "
            "serve a real one with MAIN_MODEL_BASE_URL=http://HOST:PORT/v1")


async def report() -> dict:
    """The process's health: the worst of its stages and dependencies, each of them, and the
    dependencies that are not healthy, worst first. Publishes the same states as gauges."""
    stage_status, stage_states = stages.health()
    found = await dependencies.states()
    for state in found:
        metrics.DEPENDENCY_STATE.labels(state.kind, state.name).set(_DEPENDENCY_LEVEL[state.status])
    for name, state in stage_states.items():
        metrics.STAGE_STATE.labels(name).set(_STAGE_LEVEL[state["status"]])
    status = max([stage_status, *(s.status for s in found)], key=_ORDER.__getitem__)
    metrics.READY.set(status != "unhealthy")
    by_kind: dict[str, dict] = {}
    for state in found:
        by_kind.setdefault(state.kind, {})[state.name] = state.body()
    problems = [
        {"dependency": s.kind, "name": s.name, **{k: v for k, v in s.body().items() if k in ("status", "since", "for_s")}}
        for s in sorted(found, key=lambda s: _ORDER[s.status], reverse=True)
        if s.status != "healthy"
    ]
    body = {"status": status, "stages": stage_states, "dependencies": by_kind, "problems": problems}
    label = stand_in()
    if label:
        body["main_model_stand_in"] = {"base_url": os.environ[STAND_IN_ENV], "note": label}
    return body


class OpsMiddleware:
    """``GET /railstack/health``: healthy / degraded / overloaded / unhealthy (the last two 503)
    with each stage's counts and each dependency's state; ``GET /railstack/ready``: 503 while a
    dependency is unhealthy; ``GET /railstack/live``: 200 while the process serves;
    ``GET /metrics``: Prometheus text format. While the main model is the stand-in, every answer
    says so in ``x-railstack-stand-in``."""

    def __init__(self, app: Callable[..., Awaitable[None]]):
        self.app = app
        self.stand_in = stand_in()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if self.stand_in is not None and scope["type"] == "http":
            label = [(STAND_IN_HEADER, self.stand_in)]
            send = with_headers(send, lambda: label)
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            path = scope["path"]
            if path.endswith(HEALTH_PATH):
                body = await report()
                code = 503 if body["status"] in ("overloaded", "unhealthy") else 200
                return await send_json(send, code, json.dumps(body).encode(), _NO_STORE)
            if path.endswith(READY_PATH):
                # Overload is not unreadiness: an overloaded replica sheds its own excess with 503,
                # and taking it out of rotation while every replica is busy would leave none.
                body = await report()
                ready = body["status"] != "unhealthy"
                answer = {"ready": ready, "status": body["status"], "problems": body["problems"]}
                return await send_json(send, 200 if ready else 503, json.dumps(answer).encode(), _NO_STORE)
            if path.endswith(LIVE_PATH):
                return await send_json(send, 200, b'{"status": "alive"}', _NO_STORE)
            if path.endswith(METRICS_PATH):
                from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                await report()  # the state gauges as of this scrape
                body = generate_latest()
                raw = [(b"content-type", CONTENT_TYPE_LATEST.encode()), (b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": 200, "headers": raw})
                return await send({"type": "http.response.body", "body": body})
        await self.app(scope, receive, send)
