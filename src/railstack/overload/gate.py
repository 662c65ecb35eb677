"""The main model behind its config's main stage, for every way NeMo calls it."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import Any, AsyncIterator, Iterator, Optional

from railstack.core import metrics, request
from railstack.core.types import Shed
from railstack.overload.stages import Stage, overloaded_message, stages


def main_stage_name(scope: str) -> str:
    return f"{scope}/main"


def main_stage(runtime: Any) -> Optional[Stage]:
    """The config's main stage (None when backpressure is off); the HTTP layer and the gated
    model of every NeMo instance of the config share it."""
    bp = runtime.settings.backpressure
    return stages.get(main_stage_name(runtime.scope), bp.main, bp) if bp.enabled else None


class MainCalls:
    """The tasks running one request's main-model calls, so that a speculative start or the
    request's deadline can stop them: NeMo streams from a task of its own, which cancelling the
    request does not reach."""

    def __init__(self) -> None:
        self._tasks: "weakref.WeakSet[asyncio.Task]" = weakref.WeakSet()
        self.made = 0  # calls started, finished or not

    def add(self, task: Optional["asyncio.Task"]) -> None:
        self.made += 1
        if task is not None:
            self._tasks.add(task)

    def cancel(self, spare: Optional["asyncio.Task"] = None) -> int:
        """Cancel the calls still running, but one made from ``spare`` (a task its caller cancels
        itself); how many were running."""
        running = [t for t in self._tasks if not t.done()]
        for task in running:
            if task is not spare:
                task.cancel()
        return len(running)


class GatedModel:
    """A config's main model behind its main stage, for calls that do not come through
    railstack's HTTP layer (``generate_async``, ``stream_async``, ``RunnableRails``): a shed call
    answers with a refusal that says why, instead of queueing without bound. It also times
    every main-model call for the metrics. Anything else is the wrapped model's."""

    def __init__(self, inner: Any, stage: Optional[Stage], config: str):
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_stage", stage)
        object.__setattr__(self, "_config", config)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # RunnableRails switches the model's ``streaming`` flag: it must reach the real model.
        setattr(self._inner, name, value)

    @contextlib.contextmanager
    def _noting_failures(self) -> Iterator[None]:
        """What a call raises is also kept for the HTTP layer, which answers the client with the
        main model's own status (NeMo's server says 500 for an unreachable or hung model)."""
        try:
            yield
        except Exception as exc:
            req = request.current()
            if req is not None and req.main_failures is not None:
                req.main_failures.append(exc)
            raise

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[Optional[str]]:
        req = request.current()
        if req is not None and req.main_calls is not None:
            req.main_calls.add(asyncio.current_task())
        stage = self._stage
        # The HTTP layer took the request's slot at the door: do not queue it twice.
        if stage is None or (req is not None and req.held_main == stage.name):
            yield None
            return
        try:
            taken_at = await stage.acquire()
        except Shed as exc:
            yield overloaded_message(exc)
            return
        try:
            yield None
        finally:
            stage.release(taken_at)

    async def generate_async(self, prompt: Any, *, stop: Optional[list] = None, **kwargs: Any) -> Any:
        from railstack.nemo.compat import llm_response

        async with self._turn() as refusal:
            if refusal is not None:
                return llm_response(refusal)
            with self._noting_failures(), metrics.MAIN_MODEL_LATENCY.labels(self._config).time():
                return await self._inner.generate_async(prompt, stop=stop, **kwargs)

    async def stream_async(self, prompt: Any, *, stop: Optional[list] = None, **kwargs: Any) -> AsyncIterator[Any]:
        from railstack.nemo.compat import llm_response_chunk

        async with self._turn() as refusal:
            if refusal is not None:
                yield llm_response_chunk(refusal)
                return
            with self._noting_failures(), metrics.MAIN_MODEL_LATENCY.labels(self._config).time():
                async for chunk in self._inner.stream_async(prompt, stop=stop, **kwargs):
                    yield chunk
