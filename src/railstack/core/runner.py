"""The cost-ordered runner: the rails a flow names, grouped by tier, cheapest tier first; the
first block skips every later tier. Inside a tier the rails run concurrently (cancel on the
first block) or one by one, as the settings say."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, Callable, Optional

from railstack.core import records
from railstack.core.policy import not_run, run_check
from railstack.core.types import CheckContext, Decision, Rail


class Runner:
    def __init__(self, settings: Any, resource: Callable[[Rail], Any]):
        self.settings = settings
        self.resource = resource  # the rail's per-config resource, built on first use

    async def run(self, rails: list[Rail], text: str, ctx: CheckContext) -> tuple[list[Decision], Optional[Decision]]:
        """Every decision (kept in the records), and the blocking one."""
        decisions: list[Decision] = []
        rails = [r for r in rails if self.settings.enabled(r.name)]
        blocker: Optional[Decision] = None
        for tier in sorted({r.tier for r in rails}):
            members = [r for r in rails if r.tier == tier]
            if blocker is not None:
                decisions += [not_run(r, ctx.source, "skipped") for r in members]
                continue
            done = len(decisions)
            blocker = await self._tier(members, text, ctx, decisions)
            # What a tier found hidden, the dearer tiers judge too.
            revealed = tuple(r for d in decisions[done:] for r in d.revealed)
            if revealed:
                ctx = replace(ctx, revealed=ctx.revealed + revealed)
        for decision in decisions:
            records.keep(decision)
        return decisions, blocker

    def skipped(self, rails: list[Rail], source: str, reason: Optional[str] = None) -> list[Decision]:
        """The decisions of ``rails`` that a cheaper tier's block (or ``reason``) left unrun."""
        decisions = [not_run(r, source, "skipped", reason) for r in rails if self.settings.enabled(r.name)]
        for decision in decisions:
            records.keep(decision)
        return decisions

    def _one(self, rail: Rail, text: str, ctx: CheckContext) -> "asyncio.Future[Decision]":
        timeout, on_failure = self.settings.policy(rail.name)
        return run_check(rail, text, ctx, timeout, on_failure, lambda: self.resource(rail))

    async def _tier(self, members: list[Rail], text: str, ctx: CheckContext, decisions: list[Decision]) -> Optional[Decision]:
        if not self.settings.concurrent_tiers or len(members) == 1:
            for i, r in enumerate(members):
                decision = await self._one(r, text, ctx)
                decisions.append(decision)
                if decision.verdict == "block":
                    decisions += [not_run(rest, ctx.source, "skipped") for rest in members[i + 1 :]]
                    return decision
            return None

        tasks = {asyncio.ensure_future(self._one(r, text, ctx)): r for r in members}
        blocker: Optional[Decision] = None
        try:
            for next_done in asyncio.as_completed(tasks):
                decision = await next_done
                if decision.verdict == "block":
                    blocker = decision
                    break
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        # Checks that finished in the same loop turn as the blocker keep their own verdict.
        for task, r in tasks.items():
            decisions.append(not_run(r, ctx.source, "cancelled") if task.cancelled() else task.result())
        return blocker
