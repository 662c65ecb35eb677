"""The admission decision of a config: who the client is, what the request costs, and whether
its buckets allow it; one per config and one bucket store per backing store, for the process."""

from __future__ import annotations

import hashlib
import math
from typing import Any, Mapping, Optional

from railstack.admission.buckets import BucketStore, LocalBuckets, RedisBuckets, redact
from railstack.admission.quota import Limits, Quota
from railstack.admission.settings import AdmissionSettings, ClientKeySettings
from railstack.core import metrics
from railstack.core.text import Unreadable, message_text
from railstack.overload.health import dependencies


class Admission:
    """The admission decision of one config: who the client is, what the request costs, and
    whether the client's buckets allow it."""

    def __init__(self, settings: AdmissionSettings, scope: str, store: Optional[BucketStore] = None):
        self.settings = settings
        self.scope = scope
        self.store = store or admissions.store(settings)  # by default the process's, shared
        self._default_limits = Limits.of(settings.default_tier)
        self._tier_limits = {name: Limits.of(tier) for name, tier in settings.tiers.items()}

    def client_key(self, headers: Mapping[str, str], context: Optional[Mapping[str, Any]]) -> str:
        return client_key(self.settings.client_key, headers, context)

    def cost(self, messages: Any, max_tokens: Any = None) -> int:
        """Estimated prompt tokens plus the completion tokens asked for (``max_tokens`` or
        ``max_completion_tokens``; numeric strings count, as NeMo coerces them)."""
        contents = [m.get("content") if isinstance(m, dict) else m for m in messages] if isinstance(messages, list) else [messages]
        chars = 0
        for content in contents:
            try:
                chars += len(message_text(content))
            except Unreadable:
                chars += len(str(content))
        prompt = math.ceil(chars / self.settings.chars_per_token) + 4 * len(contents)
        try:
            completion = int(max_tokens)
        except (TypeError, ValueError):
            completion = 0
        return prompt + (completion if completion > 0 else self.settings.default_max_tokens)

    def limits_for(self, key: str) -> Limits:
        tier = self.settings.clients.get(key.split(":", 1)[-1])
        return self._tier_limits[tier] if tier else self._default_limits

    async def decide(self, key: str, cost: int) -> Quota:
        quota = await self.store.acquire(f"{self.scope}:{key}", self.limits_for(key), cost)
        result = "admitted" if quota.allowed else ("unavailable" if quota.status == 503 else "limited")
        metrics.ADMISSION.labels(self.scope, result).inc()
        return quota


def client_key(how: ClientKeySettings, headers: Mapping[str, str], context: Optional[Mapping[str, Any]]) -> str:
    """The first source in ``how.sources`` that the request has, else "anonymous"."""
    for source in how.sources:
        credential = normalized_authorization(headers.get("authorization", ""))
        if source == "authorization" and credential:
            return "auth:" + hashlib.sha256(credential.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        if source == "header" and headers.get(how.header.lower()):
            return "id:" + _bounded(headers[how.header.lower()])
        if source == "context" and context and context.get(how.context_field) is not None:
            return "ctx:" + _bounded(str(context[how.context_field]))
    return "anonymous"


def normalized_authorization(value: str) -> str:
    """One spelling per credential: the scheme in lower case, single spaces, nothing around, so
    that trivial variants of one key ("bearer  sk-1 ") share its bucket. The credential itself
    keeps its case: keys are case-sensitive."""
    parts = value.split()
    return " ".join([parts[0].lower(), *parts[1:]]) if parts else ""


def _bounded(value: str) -> str:
    # Client ids become Redis keys and log fields: long ones are hashed, not stored whole.
    if len(value) <= 64 and value.isprintable():
        return value
    return "h:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class Admissions:
    def __init__(self) -> None:
        self._stores: dict[tuple, BucketStore] = {}
        self._admissions: dict[tuple[str, str], Admission] = {}

    def store(self, settings: AdmissionSettings) -> BucketStore:
        """One bucket store per backing store, so every config path shares it."""
        if settings.engine == "redis":
            key: tuple = ("redis", settings.redis_url, settings.redis_timeout_s, settings.redis_outage, settings.key_prefix)
            if key not in self._stores:
                store = self._stores[key] = RedisBuckets(
                    settings.redis_url,
                    settings.redis_timeout_s,
                    settings.redis_outage,
                    settings.key_prefix,
                    settings.max_clients,
                    settings.redis_max_connections,
                )
                dependencies.watch("redis", redact(settings.redis_url), store.health)
            return self._stores[key]
        key = ("local", settings.max_clients)
        if key not in self._stores:
            self._stores[key] = LocalBuckets(settings.max_clients)
        return self._stores[key]

    def get(self, settings: AdmissionSettings, scope: str) -> Admission:
        """The one Admission of a config (``scope``: its id), shared by HTTP and rails."""
        key = (scope, settings.model_dump_json())
        if key not in self._admissions:
            self._admissions[key] = Admission(settings, scope, self.store(settings))
        return self._admissions[key]

    def reset(self) -> None:
        """Forget every store and bucket (tests, and config reloads)."""
        self._stores.clear()
        self._admissions.clear()


admissions = Admissions()
