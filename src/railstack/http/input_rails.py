"""The input rails of a config, run before NeMo; speculative start of the main model."""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Awaitable, Callable, Optional

from railstack.core import Decision, Runtime, Tier, UnknownRails, fields, metrics
from railstack.core.request import derive
from railstack.core.text import Unreadable
from railstack.http.asgi import REQUEST_KEY, config_id_of, context, is_chat, replaying, with_body
from railstack.http.params import forwarded, passed
from railstack.overload.gate import MainCalls


class InputRailsMiddleware:
    """Where a config's input flows are railstack's own, its input rails run here, on every field
    of the request the main model reads: a request they pass skips NeMo's input-rail machinery
    (about 5 ms of Colang CPU per request on 2 cores: scripts/bench_overheads.py), a blocked one
    goes on to NeMo, whose flows say the config's refusal from these decisions without running
    the rails again. Either way NeMo gets
    the request with its parameters where it passes them to the main model (``forwarded``)."""

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        input_rails: dict[str, tuple[Runtime, list[str]]],
        default_config_id: Callable[[], Optional[str]],
    ):
        self.app = app
        self.input_rails = input_rails  # config id -> (its runtime, the rails of its input flows)
        self.default_config_id = default_config_id
        self.ready: set[str] = set()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if not is_chat(scope):
            return await self.app(scope, receive, send)
        body = scope[REQUEST_KEY]
        await receive()  # the body the client sent: NeMo gets ``nemo`` instead
        nemo = forwarded(body)
        config_id = config_id_of(body, self.default_config_id)
        entry = self.input_rails.get(config_id)
        if entry is None:
            return await self._nemo_rails(scope, receive, send, nemo, None)
        runtime, names = entry
        if config_id not in self.ready:
            try:
                runtime.prepare(names)
            except UnknownRails:  # defined by the config's own actions, which NeMo has not loaded yet
                return await self._nemo_rails(scope, receive, send, nemo, None)
            self.ready.add(config_id)
        try:
            check = fields.input_check(runtime, body["messages"], [(where, value) for _, where, value in passed(body)], context(body))
        except Unreadable:  # NeMo's flows refuse it with the reason
            return await self._nemo_rails(scope, receive, send, nemo, None)
        speculate = runtime.settings.latency.speculative_start
        cheap = [n for n in names if not speculate or runtime.tier_of(n) <= Tier.CHEAP]
        dear = [n for n in names if n not in cheap]
        decisions, blocker = await check(cheap)
        if blocker is None and dear:
            return await self._speculate(scope, receive, send, nemo, functools.partial(check, dear), decisions)
        if blocker is not None:
            decisions += runtime.skipped(dear, "input")
            return await self._nemo_rails(scope, receive, send, nemo, decisions)
        await self.app(*_sending(scope, _without_input_rails(nemo), receive), send)

    async def _nemo_rails(self, scope: dict, receive: Callable, send: Callable, nemo: dict, decisions: Optional[list[Decision]]) -> None:
        """NeMo runs with its input rails on: its flows say the refusal the input rails reached
        here (``decisions``; no main-model call), or decide themselves (None)."""
        with derive(input_decisions=decisions):
            await self.app(*_sending(scope, nemo, receive), send)

    async def _speculate(
        self,
        scope: dict,
        receive: Callable,
        send: Callable,
        nemo: dict,
        dear: Callable[[], Awaitable[tuple[list[Decision], Optional[Decision]]]],
        decisions: list[Decision],
    ) -> None:
        """The cheap tiers passed: NeMo (and the main model) start now, while the classifier tiers
        decide. Its response is held back until they pass; a block cancels the main-model calls and
        NeMo, and the client gets the refusal instead, never a byte of the answer."""
        held = _Held(send)
        # The speculative calls only: a block ends them, and the refusal NeMo says next is not one.
        calls = MainCalls.of_current_request()
        with derive(main_calls=calls):  # NeMo's task, and the main-model calls it starts, see it
            nemo_task = asyncio.ensure_future(self.app(*_sending(scope, _without_input_rails(nemo), receive), held.send))
        try:
            more, blocker = await dear()
        except BaseException:
            calls.end()
            nemo_task.cancel()
            await asyncio.gather(nemo_task, return_exceptions=True)
            raise
        if blocker is None:
            await held.release()
            return await nemo_task
        calls.end()
        nemo_task.cancel()
        await asyncio.gather(nemo_task, return_exceptions=True)
        metrics.SPECULATIVE_CANCELLED.inc()
        await self._nemo_rails(scope, receive, send, nemo, decisions + more)


class _Held:
    """A response's ASGI messages, held until ``release`` sends them, in order; after it, sent
    straight through."""

    def __init__(self, send: Callable):
        self._send = send
        self._held: list[dict] = []
        self._open = False

    async def send(self, message: dict) -> None:
        if self._open:
            return await self._send(message)
        self._held.append(message)

    async def release(self) -> None:
        while self._held:
            await self._send(self._held.pop(0))
        self._open = True


def _without_input_rails(body: dict) -> dict:
    """The request with NeMo's input rails turned off (they ran here)."""
    guardrails = body.get("guardrails") or {}
    options = {**(guardrails.get("options") or {}), "rails": {"input": False}}
    return {**body, "guardrails": {**guardrails, "options": options}}


def _sending(scope: dict, body: dict, receive: Callable) -> tuple[dict, Callable]:
    """The scope and receive of the request with ``body`` in place of the one the client sent
    (already read from ``receive``)."""
    raw = json.dumps(body).encode()
    return with_body(scope, raw), replaying(raw, receive)
