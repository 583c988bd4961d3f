"""Fixed-window request counters per caller: Redis when configured (shared by every replica),
in-process otherwise (correct for the single-replica default)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis


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
