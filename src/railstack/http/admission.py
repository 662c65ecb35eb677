"""Admission at the door: a request over its client's limits gets 429 before NeMo runs."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Optional

from railstack.admission.quota import Quota
from railstack.admission.service import Admission
from railstack.core import tracing
from railstack.core.request import derive
from railstack.core.settings import Policy
from railstack.http.asgi import REQUEST_KEY, config_id_of, context, headers, is_chat, max_tokens, with_headers
from railstack.http.errors import quota_refusal, send_json

log = logging.getLogger("railstack.http")


class AdmissionMiddleware:
    """429/503 with Retry-After and OpenAI's x-ratelimit-* headers, decided before NeMo parses the
    request, so a refused request costs no rail, classifier or model time; an admitted one
    carries its remaining quota in the response headers. Sits inside ``ValidationMiddleware``
    and reads the body it parsed."""

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        admissions: dict[str, tuple[Admission, Policy]],
        default_config_id: Callable[[], Optional[str]],
    ):
        self.app = app
        self.admissions = admissions  # config id -> its Admission, and the admission rail's policy
        self.default_config_id = default_config_id

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if not is_chat(scope):
            return await self.app(scope, receive, send)
        body = scope[REQUEST_KEY]
        entry = self.admissions.get(config_id_of(body, self.default_config_id))
        if entry is None:
            return await self.app(scope, receive, send)
        admission, (timeout, on_failure) = entry

        key = admission.client_key(headers(scope), context(body))
        try:
            async with asyncio.timeout(timeout):
                quota = await admission.decide(key, admission.cost(body.get("messages"), max_tokens(body)))
        except Exception as exc:  # noqa: BLE001 - the failure policy decides, never a 500
            log.warning("admission decision failed (%s); policy: fail-%s", type(exc).__name__, on_failure)
            if on_failure == "open":
                return await self.app(scope, receive, send)
            quota = Quota(False, None, retry_after_s=1.0, reason="the admission check failed", status=503)

        if not quota.allowed:
            status, payload = quota_refusal(quota)
            tracing.outcome(
                "admission", config=config_id_of(body, self.default_config_id),
                result="limited" if status == 429 else "unavailable", status=status, reason=quota.reason,
                retry_after_s=quota.retry_after_s,
            )
            return await send_json(send, status, payload, quota.headers())

        tracing.outcome("admission", config=config_id_of(body, self.default_config_id), result="admitted",
                        remaining_requests=quota.remaining_requests, remaining_tokens=quota.remaining_tokens)
        # The admission rail inside NeMo sees this decision instead of taking from the buckets again.
        with derive(quota=quota):
            await self.app(scope, receive, with_headers(send, quota.headers))
