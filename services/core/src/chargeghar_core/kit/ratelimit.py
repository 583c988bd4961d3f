"""Fixed-window request counters per caller: Redis when configured (shared by every replica),
in-process otherwise (correct for the single-replica default).

A rate limiter guards the internal endpoint; it must never be the reason the endpoint fails. With Redis
down or frozen, :class:`FallbackRateLimiter` counts in process (per replica, so the effective limit is
looser, never stricter) until Redis answers again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

logger = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    count: int
    retry_after_s: int


class RateLimiter(Protocol):
    async def hit(self, key: str, limit: int, window_s: int) -> RateDecision:
        """Count one request for ``key``; ``allowed`` is False once ``limit`` is exceeded in the window."""
        ...


def _window(now: float, window_s: int) -> tuple[int, int]:
    index = int(now // window_s)
    retry_after = max(1, int((index + 1) * window_s - now + 0.999))
    return index, retry_after


class InProcessRateLimiter:
    """Counters in a dict; the event loop runs ``hit`` without interleaving, so no lock is needed."""

    def __init__(self, clock: Callable[[], float] = time.time, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._counters: dict[str, tuple[int, int]] = {}

    async def hit(self, key: str, limit: int, window_s: int) -> RateDecision:
        index, retry_after = _window(self._clock(), window_s)
        window_index, count = self._counters.get(key, (index, 0))
        if window_index != index:
            count = 0
        count += 1
        if len(self._counters) >= self._max_keys and key not in self._counters:
            self._prune(index)
        self._counters[key] = (index, count)
        return RateDecision(allowed=count <= limit, count=count, retry_after_s=retry_after)

    def _prune(self, current_index: int) -> None:
        # Bounded memory: forget callers whose window is over.
        stale = [key for key, (index, _count) in self._counters.items() if index != current_index]
        for key in stale:
            del self._counters[key]


class RedisRateLimiter:
    """``INCR`` + ``EXPIRE NX`` in one pipelined round trip; the key names the window, so it self-expires."""

    def __init__(self, redis: Redis, prefix: str, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._prefix = prefix
        self._clock = clock

    async def hit(self, key: str, limit: int, window_s: int) -> RateDecision:
        index, retry_after = _window(self._clock(), window_s)
        redis_key = f"{self._prefix}ratelimit:{key}:{index}"
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.incr(redis_key)
            pipe.expire(redis_key, window_s + 1, nx=True)
            count, _ = await pipe.execute()
        return RateDecision(allowed=int(count) <= limit, count=int(count), retry_after_s=retry_after)


class FallbackRateLimiter:
    """``primary`` (Redis) while it answers; ``fallback`` (in process) during an outage.

    After a failure Redis is not asked again for ``retry_after_s``: a frozen Redis would otherwise cost
    every request a full socket timeout. The outage is logged once when it starts and once when it ends.
    """

    def __init__(
        self,
        primary: RateLimiter,
        fallback: RateLimiter,
        *,
        retry_after_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._primary = primary
        self._fallback = fallback
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._down_until: float | None = None
        self.fallback_hits = 0  # requests counted in process, for tests and diagnostics

    @property
    def degraded(self) -> bool:
        return self._down_until is not None

    async def hit(self, key: str, limit: int, window_s: int) -> RateDecision:
        if self._down_until is not None and self._clock() < self._down_until:
            return await self._hit_fallback(key, limit, window_s)
        try:
            decision = await self._primary.hit(key, limit, window_s)
        except (TimeoutError, RedisError, OSError) as exc:
            if self._down_until is None:
                logger.warning("rate_limiter_redis_unavailable", error=repr(exc), fallback="in-process")
            self._down_until = self._clock() + self._retry_after_s
            return await self._hit_fallback(key, limit, window_s)
        if self._down_until is not None:
            self._down_until = None
            logger.info("rate_limiter_redis_recovered")
        return decision

    async def _hit_fallback(self, key: str, limit: int, window_s: int) -> RateDecision:
        self.fallback_hits += 1
        return await self._fallback.hit(key, limit, window_s)
