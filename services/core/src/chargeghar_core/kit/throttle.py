"""Login throttling: failed logins counted per account and per client address.

After ``max_failures_per_account`` failures for one account (or ``max_failures_per_address`` from one
address) within ``window_s``, every further attempt is answered 429 with ``Retry-After`` until the window
ends, whether or not the password would be right, and whether or not the account exists (the same counters
apply to unknown accounts, so the answer tells nothing about which accounts exist). A successful login
clears its account's counter (not the address's).

Counters live in Redis when configured (shared by every replica) and in process otherwise; during a Redis
outage they fall back to the process (looser, never a failed login page). Account names are hashed in keys.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from chargeghar_core.kit.errors import RateLimited

logger = structlog.get_logger(__name__)


class LoginThrottled(RateLimited):
    code = "LOGIN_THROTTLED"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(retry_after_s)
        self.message = f"Too many failed logins; retry in {retry_after_s} s"


@dataclass(frozen=True, slots=True)
class ThrottleLimits:
    max_failures_per_account: int = 5
    max_failures_per_address: int = 20
    window_s: int = 900


def _digest(kind: str, value: str) -> str:
    return f"{kind}:{hashlib.sha256(value.strip().lower().encode()).hexdigest()[:32]}"


class _MemoryCounters:
    def __init__(self, clock: Callable[[], float], max_keys: int = 100_000) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._counts: dict[str, tuple[int, float]] = {}

    def get(self, key: str) -> tuple[int, int]:
        """(failures, seconds until they expire)."""
        count, expires = self._counts.get(key, (0, 0.0))
        remaining = expires - self._clock()
        if remaining <= 0:
            return 0, 0
        return count, max(1, int(remaining + 0.999))

    def incr(self, key: str, window_s: int) -> None:
        now = self._clock()
        count, expires = self._counts.get(key, (0, 0.0))
        if expires <= now:
            count, expires = 0, now + window_s
        if len(self._counts) >= self._max_keys and key not in self._counts:
            self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
        self._counts[key] = (count + 1, expires)

    def delete(self, key: str) -> None:
        self._counts.pop(key, None)


class LoginThrottle:
    def __init__(
        self,
        limits: ThrottleLimits,
        *,
        redis: Redis | None = None,
        prefix: str = "chargeghar:core:",
        clock: Callable[[], float] = time.time,
        outage_retry_s: float = 5.0,
    ) -> None:
        self.limits = limits
        self._redis = redis
        self._prefix = f"{prefix}login:"
        self._memory = _MemoryCounters(clock)
        self._clock = time.monotonic
        self._outage_retry_s = outage_retry_s
        self._redis_down_until = 0.0

    def _keys(self, scope: str, account: str, address: str | None) -> list[tuple[str, int]]:
        keys = [(_digest(f"{scope}:account", account), self.limits.max_failures_per_account)]
        if address:
            keys.append((_digest("address", address), self.limits.max_failures_per_address))
        return keys

    def _use_redis(self) -> Redis | None:
        if self._redis is None or self._clock() < self._redis_down_until:
            return None
        return self._redis

    def _redis_failed(self, exc: Exception) -> None:
        if self._redis_down_until == 0.0:
            logger.warning("login_throttle_redis_unavailable", error=repr(exc), fallback="in-process")
        self._redis_down_until = self._clock() + self._outage_retry_s

    async def check(self, scope: str, account: str, address: str | None) -> None:
        """Raise :class:`LoginThrottled` when the account or the address has failed too often."""
        retry_after = 0
        for key, limit in self._keys(scope, account, address):
            count, ttl = await self._get(key)
            if count >= limit:
                retry_after = max(retry_after, ttl or self.limits.window_s)
        if retry_after:
            logger.warning("login_throttled", scope=scope, retry_after_s=retry_after)
            raise LoginThrottled(retry_after)

    async def failed(self, scope: str, account: str, address: str | None) -> None:
        for key, _limit in self._keys(scope, account, address):
            await self._incr(key)

    async def succeeded(self, scope: str, account: str) -> None:
        key = _digest(f"{scope}:account", account)
        redis = self._use_redis()
        if redis is not None:
            try:
                await redis.delete(self._prefix + key)
            except (TimeoutError, RedisError, OSError) as exc:
                self._redis_failed(exc)
        self._memory.delete(key)

    async def _get(self, key: str) -> tuple[int, int]:
        redis = self._use_redis()
        if redis is not None:
            try:
                async with redis.pipeline(transaction=False) as pipe:
                    pipe.get(self._prefix + key)
                    pipe.ttl(self._prefix + key)
                    value, ttl = await pipe.execute()
                self._redis_down_until = 0.0
                return int(value or 0), max(0, int(ttl))
            except (TimeoutError, RedisError, OSError) as exc:
                self._redis_failed(exc)
        return self._memory.get(key)

    async def _incr(self, key: str) -> None:
        redis = self._use_redis()
        if redis is not None:
            try:
                async with redis.pipeline(transaction=False) as pipe:
                    pipe.incr(self._prefix + key)
                    pipe.expire(self._prefix + key, self.limits.window_s, nx=True)
                    await pipe.execute()
                return
            except (TimeoutError, RedisError, OSError) as exc:
                self._redis_failed(exc)
        self._memory.incr(key, self.limits.window_s)
