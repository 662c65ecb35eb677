"""One check under its timeout, latency budget and failure policy: whatever happens, a Decision."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any, Callable, Optional

from railstack.core.settings import OnFailure
from railstack.core.types import CheckContext, Decision, Misconfigured, Outcome, Rail, Shed, Verdict

log = logging.getLogger("railstack.decisions")

def not_run(rail: Rail, ctx_source: str, verdict: Outcome, reason: Optional[str] = None) -> Decision:
    return Decision(rail.name, rail.tier.name.lower(), ctx_source, verdict, reason, None, 0.0)  # type: ignore[arg-type]


def failed(rail: Rail, ctx: CheckContext, failure: str, on_failure: OnFailure, start: float, metadata: dict) -> Decision:
    return Decision(
        rail=rail.name,
        tier=rail.tier.name.lower(),
        source=ctx.source,
        verdict="block" if on_failure == "closed" else "allow",
        reason=f"the check {failure} (fail-{on_failure})",
        score=None,
        latency_ms=(time.perf_counter() - start) * 1000,
        failed=True,
        metadata=metadata,
    )


async def run_check(
    rail: Rail, text: str, ctx: CheckContext, timeout: float, on_failure: OnFailure, resource: Callable[[], Any]
) -> Decision:
    """``resource()`` gives the rail's per-config resource; one that cannot be built fails the check."""
    metadata: dict[str, Any] = {}
    start = time.perf_counter()
    cut_by_budget = False
    deadline = ctx.deadline
    if deadline is not None:
        left = deadline.at - start
        if left <= 0:
            return failed(rail, ctx, f"was not run: the {ctx.source} latency budget ({deadline.budget_s:g} s) "
                          "was spent", on_failure, start, {"budget_s": deadline.budget_s})
        cut_by_budget, timeout = left < timeout, min(left, timeout)
    try:
        ctx = replace(ctx, resource=resource())
        async with asyncio.timeout(timeout):  # unlike wait_for, no task per check
            verdict = await rail.check(text, ctx)
        if time.perf_counter() - start > timeout:
            # Work that never yields to the loop cannot be interrupted; it still must not count
            # as a verdict given in time.
            raise asyncio.TimeoutError
        if not isinstance(verdict, Verdict):
            raise TypeError(f"rail {rail.name} returned {type(verdict).__name__}, not a Verdict")
    except asyncio.TimeoutError:
        if cut_by_budget:
            failure = f"did not finish within the {ctx.source} latency budget ({deadline.budget_s:g} s)"
            metadata = {"budget_s": deadline.budget_s}
        else:
            failure = f"did not finish within {timeout:g} s"
    except Shed as exc:
        # Its engine's queue is full: over HTTP this becomes a 503 with Retry-After.
        failure = f"was shed ({exc})"
        metadata = {"shed": exc.stage, "shed_reason": exc.reason, "retry_after_s": exc.retry_after_s}
    except Misconfigured as exc:
        log.error("rail %s cannot run as configured: %s", rail.name, exc)
        failure, on_failure = f"failed: {exc}", "closed"
    except Exception as exc:  # noqa: BLE001 - any failure of a check is a policy decision
        log.debug("rail %s raised", rail.name, exc_info=True)
        failure = f"raised {type(exc).__name__}"
    else:
        return Decision(
            rail=rail.name,
            tier=rail.tier.name.lower(),
            source=ctx.source,
            verdict="block" if verdict.blocked else "allow",
            reason=verdict.reason,
            score=verdict.score,
            latency_ms=(time.perf_counter() - start) * 1000,
            metadata=verdict.metadata,
            revealed=verdict.revealed,
        )
    return failed(rail, ctx, failure, on_failure, start, metadata)
