"""The main model behind its config's main stage, for every way NeMo calls it, and the end of a
request's (or a stream's) generation when its client or consumer leaves."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import weakref
from typing import Any, AsyncIterator, Callable, Iterator, Optional

from railstack.core import metrics, request
from railstack.core.types import Shed
from railstack.overload.health import CallWindow, dependencies
from railstack.overload.stages import Stage, overloaded_message, stages


def main_stage_name(scope: str) -> str:
    return f"{scope}/main"


def main_stage(runtime: Any) -> Optional[Stage]:
    """The config's main stage (None when backpressure is off); the HTTP layer and the gated
    model of every NeMo instance of the config share it."""
    bp = runtime.settings.backpressure
    return stages.get(main_stage_name(runtime.scope), bp.main, bp) if bp.enabled else None


def main_model_calls(runtime: Any) -> CallWindow:
    """The config's recent main-model calls, as health judges them; its gated model records each."""
    return dependencies.calls("main_model", runtime.scope, runtime.settings.health)


class MainCalls:
    """The tasks doing one request's (or one stream's) generation: NeMo's generation task and
    the tasks that call the main model. NeMo streams from a task of its own, which neither
    cancelling the request nor dropping the stream reaches: whoever ends the request ends them
    here. The calls of a child (a speculative start, one stream) are its parent's too, so that
    ending the request ends them whatever the child did."""

    def __init__(self, parent: Optional["MainCalls"] = None) -> None:
        self._tasks: "weakref.WeakSet[asyncio.Task]" = weakref.WeakSet()
        # The main model's streams, each with the task reading it.
        self._streams: "weakref.WeakKeyDictionary[Any, asyncio.Task]" = weakref.WeakKeyDictionary()
        self._parent = parent
        self._ended = False
        self._expired = False
        self.made = 0  # main-model calls started, finished or not (the deadline's answer says if any)

    @classmethod
    def of_current_request(cls) -> "MainCalls":
        req = request.current()
        return cls(req.main_calls if req is not None else None)

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def expired(self) -> bool:
        """The request's deadline ended it (a child's calls are its parent's request's)."""
        return self._expired or (self._parent is not None and self._parent.expired)

    def expire(self) -> list["asyncio.Task"]:
        """``end``, for the request's deadline: a main-model call it cuts short is one the model
        did not answer in time, unlike one whose client left."""
        self._expired = True
        return self.end()

    def add(self, task: Optional["asyncio.Task"], *, call: bool = False) -> None:
        """A task of the generation; ``call``: one calling the main model."""
        self.made += call
        if task is None:
            return
        self._tasks.add(task)
        if self._parent is not None:
            self._parent.add(task, call=call)
        if self._ended and not task.cancelling():
            # Started after its client left (NeMo's input rails were still running): it must not
            # reach the model. Its next await raises.
            task.cancel()

    def add_stream(self, stream: Any) -> None:
        """A main-model stream the current task opened."""
        task = asyncio.current_task()
        if task is None:
            return
        self._streams[stream] = task
        if self._parent is not None:
            self._parent.add_stream(stream)
        self.add(task)

    def end(self) -> list["asyncio.Task"]:
        """The request is over: cancel its calls still running, and any it starts later, and close
        its main-model streams. Returns what to wait for until they have stopped (a call running
        in the caller's own task has ended already)."""
        self._ended = True
        me = asyncio.current_task()
        running = [t for t in self._tasks if not t.done() and t is not me]
        for task in running:
            if not task.cancelling():
                # Once only: a second cancellation would cut short the clean-up the first one
                # started (closing the HTTP stream to the main model).
                task.cancel()
        open_streams = [(stream, reader) for stream, reader in list(self._streams.items()) if stream.ag_frame is not None]
        return running + [_closing(stream, reader) for stream, reader in open_streams]


# A stream being closed, by whichever MainCalls (a child's, its parent's) asked first.
_closes: "weakref.WeakKeyDictionary[Any, asyncio.Task]" = weakref.WeakKeyDictionary()


def _closing(stream: Any, reader: asyncio.Task) -> "asyncio.Task":
    if stream not in _closes:
        _closes[stream] = asyncio.ensure_future(_close_after(stream, reader))
    return _closes[stream]


async def _close_after(stream: Any, reader: asyncio.Task) -> None:
    """Close a main-model stream once its reader (cancelled) has let go of it. A reader
    cancelled while inside the stream unwinds through it and closes it; one cancelled elsewhere
    (NeMo passing a chunk on) leaves it open, with its HTTP stream to the main model, until the
    stream is garbage-collected: the main model would go on generating into it."""
    if not reader.done() and reader is not asyncio.current_task():
        await asyncio.wait([reader])  # a stream cannot be closed while it runs
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await stream.aclose()


def stream_until_consumer_leaves(start: Callable[[], AsyncIterator[Any]]) -> AsyncIterator[Any]:
    """The stream ``start()`` opens (``LLMRails.stream_async``), ending its generation when its
    consumer does: the generation task NeMo starts for it sees the stream's ``MainCalls``."""
    calls = MainCalls.of_current_request()
    with request.derive(main_calls=calls):
        inner = start()
    return _Stream(inner, calls)


class _Stream:
    """NeMo's stream, read through ``_consumed``. NeMo starts the generation when the stream is
    opened, not at its first read, and a generator never read runs no clean-up: a stream closed
    or dropped unread ends its generation here."""

    def __init__(self, inner: AsyncIterator[Any], calls: MainCalls):
        self._inner, self._calls = inner, calls
        self._reads = _consumed(inner, calls)
        self._read = False

    def __aiter__(self) -> "_Stream":
        return self

    def __anext__(self) -> Any:
        self._read = True
        return self._reads.__anext__()

    async def aclose(self) -> None:
        if not self._read and not self._calls.ended:
            running = self._calls.end()
            if running:
                await asyncio.wait(running)
            await _close(self._inner)
        await self._reads.aclose()

    def __del__(self) -> None:
        if self._read or self._calls.ended:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # dropped outside its event loop's thread: nothing here may touch its tasks
        self._calls.end()


async def _consumed(inner: AsyncIterator[Any], calls: MainCalls) -> AsyncIterator[Any]:
    # NeMo's iterator ends by awaiting its generation task. Read in the consumer's own task, a
    # consumer's cancellation would land in that wait and stall it until the whole answer was
    # generated; each read runs in a task of its own (one context for all of them, as a
    # generator in one task would have), so the cancellation reaches this frame first, and the
    # generation is cancelled before NeMo's iterator is.
    from railstack.nemo.compat import ends_stream

    context = contextvars.copy_context()
    step: Optional[asyncio.Task] = None
    try:
        while True:
            step = asyncio.create_task(_next(inner, calls), context=context)
            chunk = await asyncio.shield(step)
            if chunk is _END:
                return
            if ends_stream(chunk):
                # An output rail blocked the answer (or the generation failed): nothing follows,
                # and the rest of the answer must not be generated for nobody.
                calls.end()
            yield chunk
    finally:
        running = calls.end()
        cut = step if step is not None and not step.done() else None
        if cut is not None:
            cut.cancel()
            running.append(cut)
        # Waited for, never cancelled again: a second cancellation (anyio's cancel scopes deliver
        # one at every await) would cut the main-model call's clean-up short and leave its HTTP
        # stream open, the main model still generating into it.
        if running:
            await asyncio.wait(running)
        if cut is not None and not cut.cancelled():
            cut.exception()  # retrieved: nobody reads how a read its consumer left ended
        await asyncio.wait([asyncio.create_task(_close(inner), context=context)])


_END = object()


async def _next(inner: AsyncIterator[Any], calls: MainCalls) -> Any:
    try:
        return await inner.__anext__()
    except StopAsyncIteration:
        return _END
    except asyncio.CancelledError:
        if not calls.ended or asyncio.current_task().cancelling():
            raise  # this read itself was cut
        # NeMo's iterator re-raised the end of the generation task a stream-ending chunk cancelled.
        return _END


async def _close(inner: AsyncIterator[Any]) -> None:
    close = getattr(inner, "aclose", None)
    # NeMo's iterator re-raises the end of the generation task we cancelled: expected here.
    with contextlib.suppress(Exception, asyncio.CancelledError):
        if close is not None:
            await close()


def _the_requests_fault(exc: Exception) -> bool:
    from railstack.nemo.compat import main_model_failure

    failure = main_model_failure(exc)
    return failure is not None and failure.kind == "status" and failure.status in (400, 413, 422)


class GatedModel:
    """A config's main model behind its main stage, for calls that do not come through
    railstack's HTTP layer (``generate_async``, ``stream_async``, ``RunnableRails``): a shed call
    answers with a refusal that says why, instead of queueing without bound. It also times
    every main-model call for the metrics. Anything else is the wrapped model's."""

    def __init__(self, inner: Any, stage: Optional[Stage], config: str, calls: Callable[[], CallWindow]):
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_stage", stage)
        object.__setattr__(self, "_config", config)
        object.__setattr__(self, "_calls", calls)

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

    @contextlib.contextmanager
    def _observed(self) -> Iterator[None]:
        """The call, recorded in the window health reports (looked up per call: the registry's,
        whatever replaced it since). A call the request's deadline cut short is the model not
        answering in time: without it a model that hangs every request stays healthy. A request
        the model refused as malformed or too long is the model answering: counted as failures,
        a few such requests of one client would take the replica out of rotation."""
        window = self._calls()
        try:
            yield
        except (asyncio.CancelledError, GeneratorExit):
            req = request.current()
            if req is not None and req.main_calls is not None and req.main_calls.expired:
                window.record(TimeoutError("no answer within the request's deadline"))
            raise
        except Exception as exc:
            window.record(None if _the_requests_fault(exc) else exc)
            raise
        window.record(None)

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[Optional[str]]:
        req = request.current()
        if req is not None and req.main_calls is not None:
            req.main_calls.add(asyncio.current_task(), call=True)
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
            with self._noting_failures(), metrics.MAIN_MODEL_LATENCY.labels(self._config).time(), self._observed():
                return await self._inner.generate_async(prompt, stop=stop, **kwargs)

    def stream_async(self, prompt: Any, *, stop: Optional[list] = None, **kwargs: Any) -> AsyncIterator[Any]:
        stream = self._stream(prompt, stop, kwargs)
        req = request.current()
        if req is not None and req.main_calls is not None:
            req.main_calls.add_stream(stream)  # ending the request closes it, wherever NeMo left it
        return stream

    async def _stream(self, prompt: Any, stop: Optional[list], kwargs: dict) -> AsyncIterator[Any]:
        from railstack.nemo.compat import llm_response_chunk

        async with self._turn() as refusal:
            if refusal is not None:
                yield llm_response_chunk(refusal)
                return
            inner = self._inner.stream_async(prompt, stop=stop, **kwargs)
            try:
                with self._noting_failures(), metrics.MAIN_MODEL_LATENCY.labels(self._config).time(), self._observed():
                    async for chunk in inner:
                        yield chunk
            finally:
                # Closed here, before the slot goes back: a stream left at a chunk is not closed
                # by the loop that read it, and keeps its HTTP stream to the main model open.
                close = getattr(inner, "aclose", None)
                if close is not None:
                    await close()
