"""Admission tier: per-client token buckets (requests and tokens per minute)."""

import math

from railstack.mechanism import CheckContext, Runtime, Tier, Verdict, rail


def _admission(runtime: Runtime):
    from railstack.admission import admission_for

    return admission_for(runtime.settings.admission, runtime.scope)


@rail("admission", Tier.ADMISSION, resource=_admission)
async def admission(text: str, ctx: CheckContext) -> Verdict:
    from railstack.http import http_quota

    quota = http_quota.get()
    if quota is None:
        # Not behind railstack's HTTP layer (generate_async, RunnableRails, single-config
        # server): decide here, from the request headers NeMo kept, if any, and the context.
        adm = ctx.resource
        quota = await adm.decide(adm.client_key(_request_headers(), ctx.nemo_context), adm.cost(text, None))
    facts = {"remaining_requests": math.floor(quota.remaining_requests), "remaining_tokens": math.floor(quota.remaining_tokens)}
    if quota.allowed:
        return Verdict.allow(**facts)
    when = f"; retry after {max(1, math.ceil(quota.retry_after_s))} s" if quota.retry_after_s is not None else ""
    return Verdict.block(f"{quota.reason}{when}", retry_after_s=quota.retry_after_s, **facts)


def _request_headers() -> dict:
    import sys

    # Only NeMo's server keeps request headers; outside it there are none to read.
    api = sys.modules.get("nemoguardrails.server.api")
    headers = api.api_request_headers.get(None) if api is not None else None
    return {k.lower(): v for k, v in headers.items()} if headers is not None else {}
