"""The one per-request context every layer reads: set by whoever starts a request (the HTTP
layer, a ``generate_async`` call, ``railstack check``), read by the rails through the NeMo
adapter. A layer that learns something about the request derives a new context for the work
under it (``derive``); the decision list and the budget clock are shared by reference."""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Optional

from railstack.core import tracing
from railstack.core.budget import BudgetClock
from railstack.core.types import Decision


@dataclass(frozen=True)
class RequestContext:
    request_id: str = "-"
    messages: Optional[list] = None  # as the client sent them, once the HTTP layer validated them
    quota: Any = None  # the admission decision the HTTP layer made (railstack.admission.Quota)
    decisions: list[Decision] = field(default_factory=list)  # every record made for the request
    # The input rails' decisions the HTTP layer made before NeMo, for a request they blocked.
    input_decisions: Optional[list[Decision]] = None
    clock: Optional[BudgetClock] = None  # the latency budgets of this request
    held_main: Optional[str] = None  # the main stage whose slot the HTTP layer holds for it
    main_calls: Any = None  # railstack.overload.gate.MainCalls: what ending the request (or its stream) cancels
    # What the main model's calls raised, for the HTTP layer to answer with the upstream's status.
    main_failures: Optional[list[BaseException]] = None
    # Why the admission tier does not run for this request (``railstack check``: an audit of
    # many rows from one process is no client's traffic, and rate-limiting it would block most rows).
    unmetered: Optional[str] = None
    trace: Optional[tracing.RequestTrace] = None  # set only while some config traces


_current: contextvars.ContextVar[Optional[RequestContext]] = contextvars.ContextVar("railstack_request", default=None)


def current() -> Optional[RequestContext]:
    return _current.get()


@contextlib.contextmanager
def derive(**changes: Any) -> Iterator[RequestContext]:
    """The current request (or a new one) with ``changes``, for the block and the tasks it starts."""
    base = _current.get() or RequestContext()
    ctx = replace(base, **changes)
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


@contextlib.contextmanager
def collect_decisions() -> Iterator[list[Decision]]:
    """Keep every decision made inside the block (and the tasks it starts) for one request."""
    with derive(decisions=[]) as ctx:
        yield ctx.decisions


@contextlib.contextmanager
def one_request() -> Iterator[None]:
    """Count the latency budgets (and trace the decisions) from here, unless an outer layer
    already does for this request."""
    ctx = _current.get()
    if ctx is not None and ctx.clock is not None:
        yield
        return
    with derive(clock=BudgetClock(), trace=tracing.new_request()):
        yield


def current_decisions() -> list[Decision]:
    """The decisions made so far for the request being served."""
    ctx = _current.get()
    return list(ctx.decisions) if ctx is not None else []


def request_id() -> str:
    """The current request's id, for log lines ("-" outside a request)."""
    ctx = _current.get()
    return ctx.request_id if ctx is not None else "-"
