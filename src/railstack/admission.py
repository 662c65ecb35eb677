"""Admission: per-client token buckets for requests and tokens, in-process or shared via Redis.

A request is admitted only if both of its client's buckets hold enough: one request, and its
estimated prompt tokens plus its ``max_tokens`` (how OpenAI counts at admission). Nothing is
taken from either bucket when the request is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Protocol

from aiolimiter import AsyncLimiter

from railstack import metrics
from railstack.settings import AdmissionSettings, ClientKeySettings, RateTier
from railstack.text import Unreadable, message_text

log = logging.getLogger("railstack.admission")


@dataclass(frozen=True)
class Limits:
    request_burst: int
    requests_per_s: float
    token_burst: int
    tokens_per_s: float

    @classmethod
    def of(cls, tier: RateTier) -> "Limits":
        return cls(
            request_burst=tier.request_burst or max(1, math.floor(tier.requests_per_minute)),
            requests_per_s=tier.requests_per_minute / 60,
            token_burst=tier.token_burst or max(1, math.floor(tier.tokens_per_minute)),
            tokens_per_s=tier.tokens_per_minute / 60,
        )


@dataclass(frozen=True)
class Quota:
    """An admission decision with the client's quota after it (OpenAI's x-ratelimit-* headers)."""

    allowed: bool
    limits: Optional[Limits]
    remaining_requests: float = 0.0
    remaining_tokens: float = 0.0
    retry_after_s: Optional[float] = None  # None: waiting will not help (or nothing to wait for)
    reason: Optional[str] = None
    status: int = 200  # what HTTP says when refused: 429 over the limit, 503 limiter unavailable

    def reset_requests_s(self) -> float:
        return max(0.0, (self.limits.request_burst - self.remaining_requests) / self.limits.requests_per_s)

    def reset_tokens_s(self) -> float:
        return max(0.0, (self.limits.token_burst - self.remaining_tokens) / self.limits.tokens_per_s)

    def headers(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.limits is not None:
            out += [
                ("x-ratelimit-limit-requests", str(self.limits.request_burst)),
                ("x-ratelimit-remaining-requests", str(math.floor(self.remaining_requests))),
                ("x-ratelimit-reset-requests", _duration(self.reset_requests_s())),
                ("x-ratelimit-limit-tokens", str(self.limits.token_burst)),
                ("x-ratelimit-remaining-tokens", str(math.floor(self.remaining_tokens))),
                ("x-ratelimit-reset-tokens", _duration(self.reset_tokens_s())),
            ]
        if not self.allowed and self.retry_after_s is not None:
            out.append(("retry-after", str(max(1, math.ceil(self.retry_after_s)))))
        return out


def _duration(seconds: float) -> str:
    """OpenAI's reset format: '1s', '6m0s', '250ms'."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, secs = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _refusal(limits: Limits, remaining_requests: float, remaining_tokens: float, cost: int) -> Quota:
    if cost > limits.token_burst:
        return Quota(
            False, limits, remaining_requests, remaining_tokens, None,
            f"the request needs about {cost} tokens, over this client's burst of {limits.token_burst}", 429,
        )
    wait = max((1 - remaining_requests) / limits.requests_per_s, (cost - remaining_tokens) / limits.tokens_per_s, 0.0)
    which = "requests" if remaining_requests < 1 else "tokens"
    return Quota(False, limits, remaining_requests, remaining_tokens, wait, f"{which} per minute limit reached", 429)


class Engine(Protocol):
    async def acquire(self, key: str, limits: Limits, cost: int) -> Quota: ...


class LocalEngine:
    """One pair of aiolimiter buckets per client key, in this process only.

    At most ``max_clients`` keys are kept: the least recently seen is dropped first, and a
    key idle long enough to have refilled is dropped anyway (forgetting a full bucket loses
    nothing). So a flood of distinct client ids costs bounded memory.
    """

    def __init__(self, max_clients: int):
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[AsyncLimiter, AsyncLimiter, Limits, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    async def acquire(self, key: str, limits: Limits, cost: int) -> Quota:
        now = asyncio.get_running_loop().time()  # the clock aiolimiter reads
        entry = self._buckets.pop(key, None)
        if entry is None or entry[2] != limits:
            requests = AsyncLimiter(limits.request_burst, limits.request_burst / limits.requests_per_s)
            tokens = AsyncLimiter(limits.token_burst, limits.token_burst / limits.tokens_per_s)
        else:
            requests, tokens = entry[0], entry[1]
        self._buckets[key] = (requests, tokens, limits, now)
        self._evict(now)

        fits = requests.has_capacity(1) & tokens.has_capacity(cost)  # both leak, so both levels are current
        if fits:
            # Neither acquire can wait: both buckets were just seen to hold enough, and no
            # await runs between the checks and the takes.
            await requests.acquire(1)
            await tokens.acquire(cost)
            return Quota(True, limits, _left(requests), _left(tokens))
        return _refusal(limits, _left(requests), _left(tokens), cost)

    def _evict(self, now: float) -> None:
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        while self._buckets:
            oldest_key, (_, _, limits, seen) = next(iter(self._buckets.items()))
            refill_s = max(limits.request_burst / limits.requests_per_s, limits.token_burst / limits.tokens_per_s)
            if now - seen < refill_s:
                break
            del self._buckets[oldest_key]


def _left(bucket: AsyncLimiter) -> float:
    # aiolimiter exposes capacity checks but not the level; has_capacity() has just leaked it.
    return bucket.max_rate - bucket._level  # noqa: SLF001


# One atomic decision per request. Time is Redis's own clock, so replicas need not agree on
# theirs. State: one hash per client with both bucket levels and the time they were taken.
_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local rq_cap, rq_rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local tk_cap, tk_rate = tonumber(ARGV[3]), tonumber(ARGV[4])
local cost = tonumber(ARGV[5])
local s = redis.call('HMGET', KEYS[1], 'rq', 'tk', 'ts')
local rq, tk, ts = tonumber(s[1]), tonumber(s[2]), tonumber(s[3])
if rq == nil then rq, tk, ts = rq_cap, tk_cap, now end
local elapsed = math.max(0, now - ts)
rq = math.min(rq_cap, rq + elapsed * rq_rate)
tk = math.min(tk_cap, tk + elapsed * tk_rate)
local allowed = 0
if cost <= tk_cap and rq >= 1 and tk >= cost then
  allowed = 1
  rq = rq - 1
  tk = tk - cost
end
redis.call('HSET', KEYS[1], 'rq', tostring(rq), 'tk', tostring(tk), 'ts', tostring(now))
local full_in = math.max((rq_cap - rq) / rq_rate, (tk_cap - tk) / tk_rate)
redis.call('PEXPIRE', KEYS[1], math.ceil(full_in) + 1000)
return {allowed, tostring(rq), tostring(tk)}
"""


class RedisEngine:
    """Buckets shared by every replica through one Redis, one Lua script call per decision.

    When Redis cannot be reached the ``outage`` policy decides: ``local`` falls back to this
    process's own buckets, ``closed`` refuses (503), ``open`` admits. An outage is logged once
    and counted; Redis is tried again at most once a second and the client reconnects by itself.
    """

    RETRY_EVERY_S = 1.0

    def __init__(self, url: str, timeout_s: float, outage: str, prefix: str, max_clients: int, max_connections: int = 64):
        import redis.asyncio as redis

        # A blocking pool makes a burst of decisions wait (up to the timeout) for a free
        # connection instead of failing at once as if Redis were down.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout_s, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._client = redis.Redis(connection_pool=pool)
        self._script = self._client.register_script(_LUA)
        # Error replies (OOM, READONLY, MISCONF) leave no decision either: same policy.
        self._errors = (redis.RedisError, OSError)
        self.url, self.outage, self.prefix = url, outage, prefix
        self.fallback = LocalEngine(max_clients)
        self.outages = 0
        self.decisions_during_outage = 0
        self._down_until: Optional[float] = None

    async def acquire(self, key: str, limits: Limits, cost: int) -> Quota:
        now = time.monotonic()
        if self._down_until is None or now >= self._down_until:
            try:
                allowed, rq, tk = await self._script(
                    keys=[f"{self.prefix}:{key}"],
                    args=[limits.request_burst, limits.requests_per_s / 1000, limits.token_burst, limits.tokens_per_s / 1000, cost],
                )
            except self._errors as exc:
                if self._down_until is None:
                    self.outages += 1
                    log.warning("Redis at %s unreachable (%s); admission policy during the outage: %s",
                                _redact(self.url), type(exc).__name__, self.outage)
                self._down_until = now + self.RETRY_EVERY_S
            else:
                if self._down_until is not None:
                    log.warning("Redis at %s reachable again", _redact(self.url))
                    self._down_until = None
                rq, tk = float(rq), float(tk)
                return Quota(True, limits, rq, tk) if allowed == 1 else _refusal(limits, rq, tk, cost)
        self.decisions_during_outage += 1
        if self.outage == "local":
            return await self.fallback.acquire(key, limits, cost)
        if self.outage == "open":
            return Quota(True, None)
        return Quota(False, None, retry_after_s=self.RETRY_EVERY_S, reason="the rate limiter is unavailable", status=503)

    async def close(self) -> None:
        await self._client.aclose()


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rsplit('@', 1)[-1]}" if sep else url


class Admission:
    """The admission decision of one config: who the client is, what the request costs, and
    whether the client's buckets allow it."""

    def __init__(self, settings: AdmissionSettings, scope: str):
        self.settings = settings
        self.scope = scope
        self.engine: Engine = _engine(settings)
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
        quota = await self.engine.acquire(f"{self.scope}:{key}", self.limits_for(key), cost)
        result = "admitted" if quota.allowed else ("unavailable" if quota.status == 503 else "limited")
        metrics.ADMISSION.labels(self.scope, result).inc()
        return quota


def client_key(how: ClientKeySettings, headers: Mapping[str, str], context: Optional[Mapping[str, Any]]) -> str:
    """The first source in ``how.sources`` that the request has, else "anonymous"."""
    for source in how.sources:
        if source == "authorization" and headers.get("authorization"):
            return "auth:" + hashlib.sha256(headers["authorization"].encode()).hexdigest()[:32]
        if source == "header" and headers.get(how.header.lower()):
            return "id:" + _bounded(headers[how.header.lower()])
        if source == "context" and context and context.get(how.context_field) is not None:
            return "ctx:" + _bounded(str(context[how.context_field]))
    return "anonymous"


def _bounded(value: str) -> str:
    # Client ids become Redis keys and log fields: long ones are hashed, not stored whole.
    if len(value) <= 64 and value.isprintable():
        return value
    return "h:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


_engines: dict[tuple, Engine] = {}
_admissions: dict[tuple[str, str], Admission] = {}


def _engine(settings: AdmissionSettings) -> Engine:
    """One engine per process for the same backing store, so every config path shares it."""
    if settings.engine == "redis":
        key = ("redis", settings.redis_url, settings.redis_timeout_s, settings.redis_outage, settings.key_prefix)
        if key not in _engines:
            _engines[key] = RedisEngine(
                settings.redis_url,
                settings.redis_timeout_s,
                settings.redis_outage,
                settings.key_prefix,
                settings.max_clients,
                settings.redis_max_connections,
            )
        return _engines[key]
    key = ("local", settings.max_clients)
    if key not in _engines:
        _engines[key] = LocalEngine(settings.max_clients)
    return _engines[key]


def admission_for(settings: AdmissionSettings, scope: str) -> Admission:
    """The process's one Admission for a config (``scope``: its id), shared by HTTP and rails."""
    cache_key = (scope, settings.model_dump_json())
    if cache_key not in _admissions:
        _admissions[cache_key] = Admission(settings, scope)
    return _admissions[cache_key]


def reset() -> None:
    """Forget every engine and bucket (tests, and config reloads)."""
    _engines.clear()
    _admissions.clear()
