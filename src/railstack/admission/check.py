"""The admission rail: the request's quota, as the HTTP layer decided it or, without that layer,
decided here."""

from __future__ import annotations

import math
from typing import Any

from railstack.core import CheckContext, Runtime, Verdict, request


def admission(runtime: Runtime) -> Any:
    from railstack.admission.service import admissions

    return admissions.get(runtime.settings.admission, runtime.scope)


async def check(text: str, ctx: CheckContext) -> Verdict:
    req = request.current()
    quota = req.quota if req is not None else None
    if quota is None:
        # Not behind railstack's HTTP layer (generate_async, RunnableRails, single-config
        # server): decide here, from the request headers NeMo kept, if any, and the context.
        from railstack.nemo.compat import request_headers

        adm = ctx.resource
        quota = await adm.decide(adm.client_key(request_headers(), ctx.nemo_context), adm.cost(text, None))
    facts = {"remaining_requests": math.floor(quota.remaining_requests), "remaining_tokens": math.floor(quota.remaining_tokens)}
    if quota.allowed:
        return Verdict.allow(**facts)
    when = f"; retry after {max(1, math.ceil(quota.retry_after_s))} s" if quota.retry_after_s is not None else ""
    return Verdict.block(f"{quota.reason}{when}", retry_after_s=quota.retry_after_s, **facts)
