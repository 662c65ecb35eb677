"""The request id and the decision records of each chat request, in its response headers:
``x-railstack-request-id`` (also in every decision log line), ``x-railstack-decisions``
(``rail=verdict`` for each rail that had decided when the headers went out: all input rails,
since NeMo answers only after them, and the output rails of an answer that is not streamed),
and ``Server-Timing`` (``input.heuristics;dur=0.42``: each of those rails' milliseconds)."""

from __future__ import annotations

import re
import uuid
from typing import Awaitable, Callable

from railstack.core.request import derive
from railstack.http.asgi import is_chat, with_headers


# A client's id is echoed into headers and log lines: only characters that can neither split a
# log field ("x rail=admission verdict=allow") nor a header are kept as given.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class DecisionsMiddleware:
    def __init__(self, app: Callable[..., Awaitable[None]]):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if not is_chat(scope):
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _SAFE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        # The request's context starts here: every layer under it derives from this one.
        with derive(request_id=rid, decisions=[]) as req:
            decisions = req.decisions

            def extra() -> list[tuple[str, str]]:
                out = [("x-railstack-request-id", rid)]
                if decisions:
                    out.append(("x-railstack-decisions", ",".join(f"{d.rail}={d.verdict}" for d in decisions)))
                ran = [d for d in decisions if d.verdict in ("allow", "block")]
                if ran:
                    out.append(("server-timing", ", ".join(f"{d.source}.{d.rail};dur={d.latency_ms:.2f}" for d in ran)))
                return out

            await self.app(scope, receive, with_headers(send, extra))
