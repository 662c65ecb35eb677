"""OpenTelemetry spans for railstack's rail decisions and HTTP outcomes, once a config turns on
NeMo's tracing with its OpenTelemetry adapter; until then nothing here imports OpenTelemetry
or makes a span.

NeMo 0.24 makes its spans after the generation, from its generation log, so a decision cannot
be a live child of NeMo's request span: each request keeps its decisions (and when each was
made) until NeMo exports its ``guardrails.request`` span, and they become child spans of it
then, with their own times; a decision made after that export (a late output check) becomes
one at once. Spans carry the decision record's fields, never the message text: a record's
reason names the rule, not what matched. The spans go to the process's tracer provider, which
the application sets up, as it does for NeMo's."""

from __future__ import annotations

import time
from typing import Any, Optional

from railstack.core.types import Decision

_tracer: Any = None  # opentelemetry.trace.Tracer once a config traces


def enable() -> None:
    """Called when a config with NeMo's OpenTelemetry tracing loads."""
    global _tracer
    if _tracer is None:
        from importlib.metadata import version

        from opentelemetry import trace

        _tracer = trace.get_tracer("railstack", version("railstack"))


def enabled() -> bool:
    return _tracer is not None


class RequestTrace:
    """One request's decisions waiting for NeMo's request span, then that span's context."""

    __slots__ = ("pending", "parent")

    def __init__(self) -> None:
        self.pending: list[tuple[Decision, int]] = []
        self.parent: Any = None


def new_request() -> Optional[RequestTrace]:
    return RequestTrace() if _tracer is not None else None


def decided(trace: Optional[RequestTrace], decision: Decision) -> None:
    if trace is None:
        return
    if trace.parent is None:
        trace.pending.append((decision, time.time_ns()))
    else:
        _decision_span(trace.parent, decision, time.time_ns())


def under_nemo_span(trace: Optional[RequestTrace], nemo_span: Any) -> None:
    """NeMo exported its request span: the request's decisions so far become its children."""
    if trace is None or _tracer is None:
        return
    from opentelemetry.trace import set_span_in_context

    trace.parent = set_span_in_context(nemo_span)
    pending, trace.pending = trace.pending, []
    for decision, end_ns in pending:
        _decision_span(trace.parent, decision, end_ns)


def _decision_span(parent: Any, d: Decision, end_ns: int) -> None:
    attributes: dict[str, Any] = {
        "railstack.rail": d.rail,
        "railstack.tier": d.tier,
        "railstack.source": d.source,
        "railstack.verdict": d.verdict,
        "railstack.latency_ms": d.latency_ms,
        "railstack.failed": d.failed,
    }
    if d.score is not None:
        attributes["railstack.score"] = d.score
    if d.reason:
        attributes["railstack.reason"] = d.reason
    start_ns = end_ns - int(d.latency_ms * 1_000_000)
    span = _tracer.start_span("railstack.rail", context=parent, start_time=start_ns, attributes=attributes)
    if d.failed:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, d.reason or "the check failed"))
    span.end(end_time=end_ns)


def outcome(layer: str, **attributes: Any) -> None:
    """What an HTTP layer decided (``layer``: validation, admission, backpressure), as a span
    under the current OpenTelemetry context: the HTTP server span where the app is instrumented."""
    if _tracer is None:
        return
    kept = {f"railstack.{key}": value for key, value in attributes.items() if value is not None}
    _tracer.start_span(f"railstack.http.{layer}", attributes=kept).end()
