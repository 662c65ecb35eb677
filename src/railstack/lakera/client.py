"""Lakera Guard's screening endpoint, as its API reference documents it.

Source: Lakera's API reference, "Screen content for threats"
(https://docs.lakera.ai/api-reference/api/endpoints/guard/screen-content): ``POST /v2/guard`` with ``Authorization: Bearer
<key>``; the body holds ``messages`` (the interaction in OpenAI chat-completions format; roles
system, user, assistant, and tool in the current reference), optional ``project_id`` (its policy
screens; else Lakera's default policy), ``breakdown`` (list the detectors run and whether each
detected), ``payload`` (match locations: the matched text itself, so railstack never asks for it),
``metadata`` (free key-value tags) and ``dev_info``. The answer holds ``flagged`` and, when asked,
``breakdown``: ``[{project_id, policy_id, detector_id, detector_type, detected, message_id}]``,
plus ``metadata.request_uuid`` (the breakdown's fields and the request id as Lakera's own demo
client, lakeraai/guard-demo-client ``designdocs/LAKERA_MAPPING.md``, shows an answer).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Optional

from railstack.core import Misconfigured
from railstack.engines.clients import PerLoop
from railstack.lakera.settings import KEY_SETTING, LakeraSettings
from railstack.overload.stages import Stage

# What of a breakdown entry a decision record keeps: identifiers only, never matched text.
DETECTOR_FIELDS = ("detector_type", "detector_id", "policy_id", "project_id", "message_id")


class LakeraError(RuntimeError):
    """Lakera Guard gave no screening result (a status other than 200, or an answer of another
    shape): the rail's failure policy decides."""


class LakeraRateLimited(LakeraError):
    """HTTP 429: the key's quota is spent for now."""


class LakeraUnavailable(LakeraError):
    """HTTP 5xx, or the connection failed."""


class LakeraBadAnswer(LakeraError):
    """HTTP 200, but not the documented answer."""


class LakeraKeyRefused(Misconfigured):
    """HTTP 401/403: a wrong, revoked or unauthorised key is a setting to change, never a reason to
    let turns through unscreened."""


@dataclass(frozen=True)
class Screening:
    flagged: bool
    detected: list[dict]  # the breakdown's entries that detected, their identifiers
    detectors_run: Optional[int]  # entries in the breakdown; None when none was asked for or given
    request_uuid: Optional[str]


class LakeraClient:
    """One config's Lakera Guard: an HTTP connection pool per event loop, its calls through the
    bounded stage (and health) of the API it reaches."""

    def __init__(self, settings: LakeraSettings, timeout_s: float, stage: Optional[Stage] = None):
        if not settings.api_key:
            raise Misconfigured(
                f"the lakera rail is enabled but has no API key: set {KEY_SETTING}, or lakera.enabled: false"
            )
        self.settings = settings
        self.url = settings.base_url.rstrip("/") + "/v2/guard"
        self.timeout_s = timeout_s
        self.stage = stage
        self._clients = PerLoop(self._new_client)

    def _new_client(self) -> Any:
        import httpx

        return httpx.AsyncClient(headers={"Authorization": f"Bearer {self.settings.api_key}"},
                                 timeout=httpx.Timeout(self.timeout_s))

    def _client(self) -> Any:
        return self._clients.get()

    def body(self, messages: list[dict], request_id: Optional[str] = None) -> dict:
        body: dict[str, Any] = {"messages": messages, "breakdown": self.settings.breakdown}
        if self.settings.project_id:
            body["project_id"] = self.settings.project_id
        if request_id:
            # Lakera's request log then names the railstack request it screened.
            body["metadata"] = {"railstack_request_id": request_id}
        return body

    async def screen(self, messages: list[dict], request_id: Optional[str] = None) -> Screening:
        import httpx

        slot = self.stage.slot() if self.stage is not None else contextlib.nullcontext()
        async with slot:
            try:
                answer = await self._client().post(self.url, json=self.body(messages, request_id))
            except httpx.TimeoutException:
                raise  # the rail's timeout says it
            except httpx.HTTPError as exc:
                raise LakeraUnavailable(f"{self.url} could not be reached ({type(exc).__name__})") from exc
            status = answer.status_code
            if status in (401, 403):
                raise LakeraKeyRefused(f"Lakera Guard refused the API key (HTTP {status}): check {KEY_SETTING}")
            if status == 429:
                raise LakeraRateLimited("Lakera Guard rate-limited the key (HTTP 429)")
            if status >= 500:
                raise LakeraUnavailable(f"Lakera Guard answered HTTP {status}")
            if status != 200:
                raise LakeraError(f"Lakera Guard answered HTTP {status}")
            return parse(answer.content)


def parse(content: bytes) -> Screening:
    """The documented answer, or LakeraBadAnswer: a guard verdict is never guessed from a partial one."""
    import json

    try:
        answer = json.loads(content)
    except ValueError:
        raise LakeraBadAnswer("Lakera Guard's answer is not JSON") from None
    flagged = answer.get("flagged") if isinstance(answer, dict) else None
    if not isinstance(flagged, bool):
        raise LakeraBadAnswer("Lakera Guard's answer has no boolean `flagged`")
    breakdown = answer.get("breakdown")
    if breakdown is not None and not (
        isinstance(breakdown, list) and all(isinstance(e, dict) and isinstance(e.get("detected"), bool) for e in breakdown)
    ):
        raise LakeraBadAnswer("Lakera Guard's `breakdown` is not a list of detector results")
    detected = [{k: e[k] for k in DETECTOR_FIELDS if k in e} for e in breakdown or [] if e["detected"]]
    meta = answer.get("metadata")
    uuid = meta.get("request_uuid") if isinstance(meta, dict) else None
    return Screening(flagged, detected, len(breakdown) if breakdown is not None else None,
                     uuid if isinstance(uuid, str) else None)
