"""Where decision records go: the ``railstack.decisions`` log (no message text), the metrics,
the current request's list, and its trace when tracing is on."""

from __future__ import annotations

import logging

from railstack.core import metrics, request, tracing
from railstack.core.types import Decision

log = logging.getLogger("railstack.decisions")


def keep(decision: Decision) -> None:
    log.info(
        "request=%s rail=%s source=%s verdict=%s score=%s latency_ms=%.2f failed=%s reason=%s",
        request.request_id(),
        decision.rail,
        decision.source,
        decision.verdict,
        "-" if decision.score is None else f"{decision.score:.4f}",
        decision.latency_ms,
        decision.failed,
        decision.reason or "-",
    )
    metrics.RAIL_DECISIONS.labels(decision.rail, decision.source, decision.verdict, str(decision.failed).lower()).inc()
    if decision.verdict in ("allow", "block"):
        metrics.RAIL_LATENCY.labels(decision.rail, decision.source).observe(decision.latency_ms / 1000)
    ctx = request.current()
    if ctx is not None:
        ctx.decisions.append(decision)
        tracing.decided(ctx.trace, decision)
