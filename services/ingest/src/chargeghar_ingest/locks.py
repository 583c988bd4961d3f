"""One command in flight per station: a lock that works across replicas (Redis) or in one process."""

from __future__ import annotations

import time
import uuid
from typing import Protocol

from redis.asyncio import Redis


class StationLock(Protocol):
    async def acquire(self, station: str, ttl_s: float) -> str | None:
        """A token when the lock was free (it expires by itself after ``ttl_s``), else None."""

    async def release(self, station: str, token: str) -> None:
        """Release only if ``token`` still owns the lock (an expired lock may belong to someone else)."""

    async def claim_command_id(self, command_id: str, ttl_s: float) -> bool:
        """True the first time a command id is seen (within ``ttl_s``): a resent command is not re-sent."""


class MemoryStationLock:
    def __init__(self) -> None:
        self._held: dict[str, tuple[str, float]] = {}
        self._command_ids: dict[str, float] = {}

    async def acquire(self, station: str, ttl_s: float) -> str | None:
        now = time.monotonic()
        current = self._held.get(station)
        if current is not None and current[1] > now:
            return None
        token = uuid.uuid4().hex
        self._held[station] = (token, now + ttl_s)
        return token

    async def release(self, station: str, token: str) -> None:
        current = self._held.get(station)
        if current is not None and current[0] == token:
            del self._held[station]

    async def claim_command_id(self, command_id: str, ttl_s: float) -> bool:
        now = time.monotonic()
        if len(self._command_ids) > 10_000:  # bounded: forget expired ids
            self._command_ids = {k: v for k, v in self._command_ids.items() if v > now}
        expires = self._command_ids.get(command_id)
        if expires is not None and expires > now:
            return False
        self._command_ids[command_id] = now + ttl_s
        return True


# Compare-and-delete: never drop a lock that expired and was taken by another replica meanwhile.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisStationLock:
    def __init__(self, redis: Redis, key_prefix: str) -> None:
        self._redis = redis
        self._prefix = f"{key_prefix}lock:station:"
        self._ids_prefix = f"{key_prefix}command-id:"
        self._release = redis.register_script(_RELEASE)

    async def acquire(self, station: str, ttl_s: float) -> str | None:
        token = uuid.uuid4().hex
        acquired = await self._redis.set(self._prefix + station, token, nx=True, px=max(1, int(ttl_s * 1000)))
        return token if acquired else None

    async def release(self, station: str, token: str) -> None:
        await self._release(keys=[self._prefix + station], args=[token])

    async def claim_command_id(self, command_id: str, ttl_s: float) -> bool:
        key = f"{self._ids_prefix}{command_id}"
        return bool(await self._redis.set(key, "1", nx=True, px=max(1, int(ttl_s * 1000))))
