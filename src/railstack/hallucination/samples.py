"""More answers from the main model, for the self-consistency check."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from railstack.nemo import compat
from railstack.nemo.conversations import ConversationCache


class Samples:
    """Answers sampled from the main model, kept per conversation (at most ``size``, none past
    ``ttl_s``: they hold the model's text about it), so the checks of one streamed answer's
    chunks share one set."""

    def __init__(self, size: int = 256, ttl_s: float = 600.0):
        self._kept = ConversationCache(size, ttl_s)
        self._pending: dict[str, asyncio.Future] = {}

    async def get(self, key: str, draw: Any) -> tuple[list[str], int]:
        """The samples for ``key`` and how many main-model calls this call made."""
        kept = self._kept.get(key)
        if kept is not None:
            return kept, 0
        if key in self._pending:
            return await asyncio.shield(self._pending[key]), 0
        future = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            samples, calls = await draw()
        except BaseException as exc:
            # Waiters fail under their own policy; a cancelled draw must not cancel their requests.
            failure = exc if isinstance(exc, Exception) else RuntimeError("the request drawing the samples went away")
            future.set_exception(failure)
            future.exception()  # marked retrieved: the waiters get it, if there are any
            raise
        finally:
            self._pending.pop(key, None)
        future.set_result(samples)
        self._kept[key] = samples
        return samples, calls


async def sample_answers(llm: Any, messages: list[dict], k: int, temperature: float) -> tuple[list[str], int]:
    """k more answers to ``messages`` from the main model, and the number of calls it took: one
    with ``n`` when the model is an OpenAI-compatible endpoint that honours it, else k at once."""
    if llm is None:
        raise RuntimeError("self-consistency needs the main model, and NeMo passed none to the rail")
    samples: list[str] = []
    calls = 0
    endpoint = compat.chat_endpoint(llm)
    if endpoint is not None and k > 1:
        turn = getattr(llm, "_turn", None)  # the main model's backpressure stage, when railstack gates it
        async with (turn() if turn is not None else contextlib.nullcontext()) as refusal:
            if refusal is not None:
                raise RuntimeError(refusal)
            samples = (await compat.chat_choices(endpoint, messages, n=k, temperature=temperature))[:k]
        calls += 1
    chat = compat.chat_messages(messages)
    rest = await asyncio.gather(*(llm.generate_async(chat, temperature=temperature) for _ in range(k - len(samples))))
    calls += len(rest)
    return samples + [r.content for r in rest], calls
