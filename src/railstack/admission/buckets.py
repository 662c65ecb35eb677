"""Admission: per-client token buckets for requests and tokens, in-process or shared via Redis.

A request is admitted only if both of its client's buckets hold enough: one request, and its
estimated prompt tokens plus its ``max_tokens`` (how OpenAI counts at admission). Nothing is
taken from either bucket when the request is refused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Optional, Protocol

from aiolimiter import AsyncLimiter

from railstack.admission.quota import Limits, Quota, refusal
from railstack.overload.health import DependencyState, Since, Status

log = logging.getLogger("railstack.admission")


class BucketStore(Protocol):
    """Where a client's token buckets live: this process, or a Redis every replica shares."""

    async def acquire(self, key: str, limits: Limits, cost: int) -> Quota: ...


class LocalBuckets:
    """One pair of aiolimiter buckets per client key, in this process only.

    At most ``max_clients`` keys are kept: the least recently seen is dropped first, and a
    key idle long enough to have refilled is dropped anyway (forgetting a full bucket loses
    nothing). So a flood of distinct client ids costs bounded memory.
    """

    def __init__(self, max_clients: int):
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[AsyncLimiter, AsyncLimiter, Limits, float]] = OrderedDict()

    @property
    def clients(self) -> int:
        """How many clients' buckets are held: what the memory bound counts."""
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
        return refusal(limits, _left(requests), _left(tokens), cost)

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


class RedisBuckets:
    """Buckets shared by every replica through one Redis, one Lua script call per decision.

    When Redis cannot be reached the ``outage`` policy decides: ``local`` falls back to this
    process's own buckets, ``closed`` refuses (503), ``open`` admits. An outage is logged once
    and counted; Redis is tried again at most once a second and the client reconnects by itself.
    """

    RETRY_EVERY_S = 1.0
    PROBE_KEY = "health-probe"

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
        self.fallback = LocalBuckets(max_clients)
        self.outages = 0
        self.decisions_during_outage = 0
        self._down_until: Optional[float] = None
        self._tried_at = float("-inf")  # the last call of Redis, answered or not
        self._since = Since()
        self._last_error: Optional[str] = None

    async def _decide(self, key: str, limits: Limits, cost: int) -> Optional[tuple[int, float, float]]:
        """One decision by Redis; None when Redis gave none (and the outage is noted)."""
        now = self._tried_at = time.monotonic()
        try:
            allowed, rq, tk = await self._script(
                keys=[f"{self.prefix}:{key}"],
                args=[limits.request_burst, limits.requests_per_s / 1000, limits.token_burst, limits.tokens_per_s / 1000, cost],
            )
        except self._errors as exc:
            self._last_error = f"{type(exc).__name__}: {exc}"[:300]
            if self._down_until is None:
                self.outages += 1
                self._since.note(self._outage_status(), now)
                log.warning("Redis at %s unreachable (%s); admission policy during the outage: %s",
                            redact(self.url), type(exc).__name__, self.outage)
            self._down_until = now + self.RETRY_EVERY_S
            return None
        if self._down_until is not None:
            log.warning("Redis at %s reachable again", redact(self.url))
            self._down_until = None
            self._since.note("healthy", now)
        return allowed, float(rq), float(tk)

    async def acquire(self, key: str, limits: Limits, cost: int) -> Quota:
        if self._down_until is None or time.monotonic() >= self._down_until:
            decided = await self._decide(key, limits, cost)
            if decided is not None:
                allowed, rq, tk = decided
                return Quota(True, limits, rq, tk) if allowed == 1 else refusal(limits, rq, tk, cost)
        self.decisions_during_outage += 1
        if self.outage == "local":
            return await self.fallback.acquire(key, limits, cost)
        if self.outage == "open":
            return Quota(True, None)
        return Quota(False, None, retry_after_s=self.RETRY_EVERY_S, reason="the rate limiter is unavailable", status=503)

    def _outage_status(self) -> Status:
        # Under "closed" every request is refused while Redis is away: the replica serves nothing.
        return "unhealthy" if self.outage == "closed" else "degraded"

    async def health(self) -> DependencyState:
        """Redis as admission last found it. With no decision for ``RETRY_EVERY_S`` (no traffic, or
        none while a load balancer routes around this replica) a decision on a key of its own is
        asked for, so that an outage shows without traffic and its end shows without waiting for
        traffic that an unready replica does not get. A decision, not a PING: a Redis that
        answers but refuses writes (OOM, READONLY) decides nothing either."""
        if time.monotonic() - self._tried_at >= self.RETRY_EVERY_S:
            await self._decide(self.PROBE_KEY, Limits(1, 1.0, 1, 1.0), 0)
        down = self._down_until is not None
        detail: dict = {"url": redact(self.url), "outage_policy": self.outage, "outages": self.outages}
        if self._last_error is not None:
            detail["last_error"] = self._last_error
        status = self._outage_status() if down else "healthy"
        return DependencyState("redis", redact(self.url), status, self._since.since, detail)

    async def close(self) -> None:
        await self._client.aclose()


def redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rsplit('@', 1)[-1]}" if sep else url
