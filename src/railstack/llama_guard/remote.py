"""The safety checkpoint on an OpenAI-compatible completions server (vLLM): the prompt goes as
token ids (no second BOS, no re-tokenization), the score is read from the first answer token's
log-probabilities, and the category line is what the server greedily wrote after it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Optional, Sequence

from railstack.engines.clients import PerLoop
from railstack.llama_guard.scoring import EngineSpec, Ids, Query, Score
from railstack.overload.stages import Stage


class RemoteAnswerError(RuntimeError):
    """The remote server's answer does not carry what the score needs."""


class RemoteEngine:
    """``Engine[Query, Score]`` over a completions server serving the same checkpoint."""

    def __init__(self, spec: EngineSpec, stage: Optional[Stage] = None):
        self.family, self.answer = spec.family, spec.answer
        self.stage = stage
        self.settings = spec.settings.remote
        self.timeout_s = spec.settings.timeout_s
        self.category_tokens = spec.settings.category_tokens
        self.served = self.settings.served_model or spec.settings.model
        self._clients = PerLoop(self._new_client)
        # A server names a top token by its id or by its text, as return_tokens_as_token_ids says.
        decode = spec.tokenizer.decode
        self.keys = {
            "unsafe": (f"token_id:{self.answer.unsafe}", decode([self.answer.unsafe])),
            "safe": (f"token_id:{self.answer.safe}", decode([self.answer.safe])),
        }

    def _new_client(self) -> Any:
        import httpx
        from openai import AsyncOpenAI

        limits = httpx.Limits(max_connections=self.settings.max_connections)
        return AsyncOpenAI(
            base_url=self.settings.base_url, api_key=self.settings.api_key, max_retries=0,
            timeout=self.timeout_s, http_client=httpx.AsyncClient(limits=limits),
        )

    def _client(self) -> Any:
        return self._clients.get()

    async def score(self, items: Sequence[Query]) -> list[Score]:
        slot = self.stage.slot() if self.stage is not None else contextlib.nullcontext()
        async with slot:
            return list(await asyncio.gather(*(self._one(ids, threshold) for ids, threshold in items)))

    async def _complete(self, ids: list[int], max_tokens: int, logprobs: Optional[int]) -> Any:
        extra = {"return_tokens_as_token_ids": True} if logprobs else {}
        answer = await self._client().completions.create(
            model=self.served, prompt=ids, max_tokens=max_tokens, temperature=0, logprobs=logprobs, extra_body=extra
        )
        if not answer.choices:
            raise RemoteAnswerError("the completions server returned no choice")
        return answer.choices[0]

    def _logprob(self, top: dict, word: str) -> Optional[float]:
        return next((top[k] for k in self.keys[word] if k in top), None)

    async def _one(self, ids: Ids, threshold: float) -> Score:
        decodes = self.family.decodes
        choice = await self._complete(list(ids), 1 + (self.category_tokens if decodes else 0), self.settings.top_logprobs)
        tops = getattr(choice.logprobs, "top_logprobs", None) if choice.logprobs else None
        if not tops:
            raise RemoteAnswerError("the completions server returned no log-probabilities (is `logprobs` supported?)")
        unsafe, safe = self._logprob(tops[0], "unsafe"), self._logprob(tops[0], "safe")
        if unsafe is None and safe is None:
            raise RemoteAnswerError(
                f"neither {self.family.unsafe!r} nor {self.family.safe!r} is among the first token's top "
                f"{self.settings.top_logprobs}: the server runs another model or prompt format"
            )
        score = self.family.probability_from_logprobs(unsafe, safe)
        if score < threshold or not decodes:
            return Score(score, None)
        if (choice.logprobs.tokens or [""])[0] in self.keys["unsafe"]:
            return Score(score, choice.text)  # "unsafe" and the category line after it
        # A threshold under 0.5 can flag what greedy decoding calls safe: ask for the line after "unsafe".
        rest = await self._complete([*ids, self.answer.unsafe], self.category_tokens, None)
        return Score(score, rest.text)
