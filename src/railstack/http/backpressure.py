"""Backpressure at the door: the config's main stage, taken before NeMo runs, or 503."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Optional

from railstack.core import tracing
from railstack.core.request import current_decisions, derive, request_id
from railstack.core.types import Shed
from railstack.http.asgi import REQUEST_KEY, config_id_of, is_chat, replaying
from railstack.http.errors import send_json, shed_response
from railstack.overload.gate import MainCalls
from railstack.overload.stages import Stage

log = logging.getLogger("railstack.http")


def _rail_shed_as_503(send: Callable) -> Callable:
    """``send`` that answers 503 instead of the refusal when a rail blocked because its engine's
    stage shed it. Input rails have all decided before NeMo starts a response, streaming too."""
    replaced = False

    async def sending(message: dict) -> None:
        nonlocal replaced
        if replaced:
            return
        if message["type"] == "http.response.start":
            shed = next((d for d in current_decisions() if d.verdict == "block" and "shed" in d.metadata), None)
            if shed is not None:
                replaced = True
                exc = Shed(shed.metadata["shed"], shed.metadata["shed_reason"], shed.metadata["retry_after_s"])
                body, extra = shed_response(exc)
                return await send_json(send, 503, body, extra)
        await send(message)

    return sending


class BackpressureMiddleware:
    """An admitted request takes a slot of its config's main stage at the door, or is shed with
    503 and Retry-After; a request a classifier engine's stage shed also gets 503. A client that
    goes away leaves the queue, or has its generation cancelled: the request's NeMo work and
    every main-model call it started (NeMo streams from a task of its own, which cancelling the
    request does not reach). Its slot goes back once those calls have stopped, not when the
    client left: the stage bounds what the main model runs. Sits inside ``AdmissionMiddleware``:
    only requests their client's quota admits queue."""

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        stages: dict[str, Stage],
        default_config_id: Callable[[], Optional[str]],
    ):
        self.app = app
        self.stages = stages  # config id -> its main stage
        self.default_config_id = default_config_id

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if not is_chat(scope):
            return await self.app(scope, receive, send)
        send = _rail_shed_as_503(send)
        stage = self.stages.get(config_id_of(scope[REQUEST_KEY], self.default_config_id))

        body = await receive()  # replayed by the validation layer: the watcher must not take it
        gone = asyncio.Event()
        answered = asyncio.Event()
        request_task = asyncio.current_task()
        watcher = asyncio.ensure_future(_watch_disconnect(receive, gone, answered, request_task))
        calls = MainCalls.of_current_request()  # the deadline's, when it ends them, ends these too
        taken_at: Optional[float] = None

        async def sending(message: dict) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                answered.set()  # servers report a disconnect once the answer is complete

        async def until_gone() -> dict:  # what the app hears after the body
            await gone.wait()
            return {"type": "http.disconnect"}

        try:
            if stage is not None:
                taken_at = await stage.acquire()
            with derive(held_main=stage.name if stage is not None else None, main_calls=calls):
                await self.app(scope, replaying(body.get("body", b""), until_gone), sending)
        except Shed as exc:
            log.info("request=%s shed by %s: %s", request_id(), exc.stage, exc.reason)
            tracing.outcome("backpressure", status=503, stage=exc.stage, reason=exc.reason, retry_after_s=exc.retry_after_s)
            payload, extra = shed_response(exc)
            await send_json(send, 503, payload, extra)
        except asyncio.CancelledError:
            if not gone.is_set():
                raise
            request_task.uncancel()  # the watcher's doing: the client went away, nothing to answer
            if stage is None:
                where = "during its answer"
            else:
                where = f"queued for {stage.name}" if taken_at is None else f"in {stage.name}"
            log.info("request=%s client went away %s", request_id(), where)
        finally:
            watcher.cancel()
            # Whatever ended the request, nothing of its generation may run on: a stream NeMo
            # still feeds, a main-model call its client no longer waits for.
            running = calls.end()
            if running or taken_at is not None:
                # Shielded: the slot must go back once they have stopped, even if this task is
                # cancelled while it waits.
                await asyncio.shield(_release_when_stopped(running, stage, taken_at))


async def _release_when_stopped(running: list[asyncio.Task], stage: Optional[Stage], taken_at: Optional[float]) -> None:
    if running:
        await asyncio.wait(running)
    if stage is not None and taken_at is not None:
        stage.release(taken_at)


async def _watch_disconnect(
    receive: Callable, gone: asyncio.Event, answered: asyncio.Event, request_task: asyncio.Task
) -> None:
    """Cancel the request's work (its wait in the queue, or the app) when its client goes away
    before its answer is complete."""
    while (await receive())["type"] != "http.disconnect":
        pass
    if not answered.is_set():
        gone.set()
        request_task.cancel()
