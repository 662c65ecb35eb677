"""The first layer a chat request meets: malformed and hostile requests get 400/404/408/413
before anything else reads them (``railstack.http.rules``)."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Optional

from railstack.admission.service import client_key
from railstack.admission.settings import ClientKeySettings
from railstack.core import tracing
from railstack.core.request import derive, one_request, request_id
from railstack.http.asgi import CHECKS_PATH, REQUEST_KEY, buffer, config_id_of, context, headers, is_chat, requested_config_id
from railstack.http.errors import error_body, send_json
from railstack.http.rules import ConfigRules, Rejected, parse_body, validate
from railstack.http.settings import RequestLimits

log = logging.getLogger("railstack.http")


class ValidationMiddleware:
    """Refuses malformed and hostile chat requests before anything else reads them (see
    ``railstack.http.rules``); a valid one goes on with its parsed body in the scope."""

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
        if not (is_chat(scope) or checks):
            return await self.app(scope, receive, send)
        body: dict = {}
        try:
            declared = dict(scope.get("headers", [])).get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body:
                raise Rejected(413, f"The request body is over {self.max_body} bytes.", code="too_large")
            try:
                async with asyncio.timeout(self.body_timeout):  # unlike wait_for, no task per request
                    raw, receive = await buffer(receive, self.max_body)
            except asyncio.TimeoutError:
                raise Rejected(408, f"The request body did not arrive within {self.body_timeout:g} s.", code="timeout") from None
            body = parse_body(raw)
            validate(body, self.rules.get, config_id_of({}, self.default_config_id) or None, user_last=not checks)
        except Rejected as exc:
            r = exc.rejection
            # Name the client the way its config's admission would, where the body says which.
            how = self.client_keys.get(requested_config_id(body) or "", ClientKeySettings())
            log.info(
                "request=%s client=%s rejected status=%d param=%s reason=%s",
                request_id(), client_key(how, headers(scope), context(body)),
                r.status, r.param or "-", r.message,
            )
            tracing.outcome("validation", status=r.status, code=r.code, param=r.param, reason=r.message)
            error_type = {413: "request_too_large", 404: "not_found", 408: "timeout"}.get(r.status, "invalid_request_error")
            return await send_json(send, r.status, error_body(r.message, error_type=error_type, code=r.code, param=r.param), [])
        with derive(messages=body["messages"]), one_request():  # the latency budgets count from here
            await self.app({**scope, REQUEST_KEY: body}, receive, send)
