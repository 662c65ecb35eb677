"""An encoder classifier on a text-embeddings-inference (TEI) server: ``POST /predict``.

The rail still cuts its windows here, from token ids, with the checkpoint's tokenizer (the only
part of the checkpoint loaded here); each window goes as its text, which the server tokenizes
again, so a window whose text does not tokenize to its ids is refused before it is sent. The
server returns raw scores (logits), so the rail's own softmax and temperature apply, matched to
the label order ``GET /info`` gives (TEI sorts each answer by score).
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

from railstack.engines.clients import PerLoop
from railstack.engines.loading import CheckpointError
from railstack.engines.sequence import Input


class ServerRefused(CheckpointError):
    """The TEI server cannot serve the rail: the message names the rail, the server, what is
    wrong and the setting to change."""


class PredictError(RuntimeError):
    """A /predict request failed or its answer is not what was asked for."""


class WindowMismatch(ValueError):
    """A window's text does not tokenize to its ids: the server would read another input."""


def refusal(rail: str, settings: Any, problem: str) -> ServerRefused:
    """A start-up error of the rail's TEI engine."""
    return ServerRefused(
        f"{rail}: the TEI server at {settings.remote.base_url} cannot serve it: {problem.rstrip('. ')}. Set "
        f"{rail}.remote.base_url to a TEI server serving {settings.model!r} (whose tokenizer cuts the windows here), "
        f"or {rail}.engine: local."
    )


def _error(response: Any) -> str:
    """What a TEI error answer says: ``{"error": ..., "error_type": ...}``, or its text."""
    try:
        body = response.json()
        return f"{body['error']} ({body.get('error_type', 'no error_type')})"
    except Exception:  # noqa: BLE001 - not TEI's error shape: its text says what it is
        return response.text[:200] or "no body"


class TeiRunner:
    """The checkpoint on a TEI server (``Runner``, with an awaitable ``logits``)."""

    def __init__(self, settings: Any, rail: str, tokenizer: Any):
        self.rail, self.tokenizer = rail, tokenizer
        self.remote, self.timeout_s = settings.remote, settings.timeout_s
        self.headers = {"Authorization": f"Bearer {self.remote.api_key}"} if self.remote.api_key else {}
        info = self._info(settings)
        classifier = (info.get("model_type") or {}).get("classifier")
        if not isinstance(classifier, dict) or not isinstance(classifier.get("id2label"), dict):
            kinds = list(info.get("model_type") or {}) or ["no model_type"]
            raise refusal(rail, settings, f"it serves {info.get('model_id')!r} as {kinds[0]}, not as a sequence classifier")
        id2label = classifier["id2label"]
        try:
            self.labels = tuple(str(id2label[str(i)]) for i in range(len(id2label)))
            self.max_tokens: Optional[int] = int(info["max_input_length"])
            self.max_batch = min(self.remote.max_batch, int(info["max_client_batch_size"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise refusal(rail, settings, f"its /info lacks {exc} (is it a TEI server?)") from exc
        self.device = f"tei {self.remote.base_url} ({info.get('model_id')})"
        self.precision = str(info.get("model_dtype", "unknown"))
        self._clients = PerLoop(self._new_client)

    def _info(self, settings: Any) -> dict:
        """``GET /info``, once, at start-up."""
        import httpx

        url = f"{self.remote.base_url.rstrip('/')}/info"
        try:
            response = httpx.get(url, headers=self.headers, timeout=self.timeout_s or 10.0)
        except httpx.HTTPError as exc:
            raise refusal(self.rail, settings, f"GET {url} failed ({type(exc).__name__}: {exc})") from exc
        if response.status_code == 401:
            raise refusal(self.rail, settings, f"it refused the API key (401): set {self.rail}.remote.api_key to its --api-key")
        if response.status_code != 200:
            raise refusal(self.rail, settings, f"GET {url} answered {response.status_code}: {_error(response)}")
        try:
            info = response.json()
        except ValueError as exc:
            raise refusal(self.rail, settings, f"GET {url} answered no JSON (is it a TEI server?)") from exc
        served = self.remote.served_model
        if not isinstance(info, dict):
            raise refusal(self.rail, settings, f"GET {url} answered {type(info).__name__}, not TEI's info")
        if served is not None and info.get("model_id") != served:
            raise refusal(self.rail, settings, f"it serves {info.get('model_id')!r}, not {served!r} "
                          f"({self.rail}.remote.served_model)")
        return info

    def _new_client(self) -> Any:
        import httpx

        return httpx.AsyncClient(
            base_url=self.remote.base_url, headers=self.headers, timeout=self.timeout_s,
            limits=httpx.Limits(max_connections=self.remote.max_connections),
        )

    def _inputs(self, part: list[Input]) -> list[list[str]]:
        """The texts of each input, each checked to tokenize to its span's ids."""
        spans = [span for item in part for span in item]
        read = self.tokenizer([span.text for span in spans], add_special_tokens=False)["input_ids"]
        for span, ids in zip(spans, read):
            if tuple(ids) != span.ids:
                raise WindowMismatch(f"{self.rail}: a window's text does not tokenize to its {len(span)} token ids; "
                                     "the TEI server would read another input")
        # Each input a list, [text] or [premise, hypothesis]: a bare [a, b] is one pair to TEI.
        return [[span.text for span in item] for item in part]

    async def logits(self, batch: list[Input]) -> list[list[float]]:
        """Each window's logits, in requests of at most ``max_batch`` inputs sent together (the
        client's connection pool bounds how many are in flight)."""
        requests = [batch[i : i + self.max_batch] for i in range(0, len(batch), self.max_batch)]
        answers = await asyncio.gather(*(self._predict(part) for part in requests))
        return [row for answer in answers for row in answer]

    async def _predict(self, part: list[Input]) -> list[list[float]]:
        import httpx

        body = {"inputs": self._inputs(part), "raw_scores": True, "truncate": False}
        try:
            response = await self._clients.get().post("/predict", json=body)
        except httpx.HTTPError as exc:
            raise PredictError(f"{self.rail}: POST /predict failed ({type(exc).__name__}: {exc})") from exc
        if response.status_code != 200:
            raise PredictError(f"{self.rail}: POST /predict answered {response.status_code}: {_error(response)}")
        return self._rows(response, len(part))

    def _rows(self, response: Any, count: int) -> list[list[float]]:
        """Each input's logits in label order, from TEI's ``[[{label, score}, ...], ...]``."""
        try:
            answer = response.json()
            if not isinstance(answer, list) or len(answer) != count:
                raise ValueError(f"{count} inputs sent, {len(answer) if isinstance(answer, list) else 'no list of'} "
                                 "answers back")
            rows = []
            for predictions in answer:
                scores = {str(p["label"]): float(p["score"]) for p in predictions}
                if len(predictions) != len(self.labels) or set(scores) != set(self.labels):
                    raise ValueError(f"labels {sorted(scores)} in an answer, {sorted(self.labels)} in /info")
                rows.append([scores[label] for label in self.labels])
            return rows
        except (ValueError, KeyError, TypeError) as exc:
            raise PredictError(f"{self.rail}: POST /predict answered a malformed body: {exc}") from exc
