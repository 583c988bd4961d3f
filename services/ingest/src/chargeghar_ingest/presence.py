"""Station presence: last-seen per station, and the ONLINE/OFFLINE transitions derived from silence.

Two stores with one interface: Redis (several replicas must agree, so every read-modify-write is one Lua
script) and in-process (one replica). Neither emits events itself; the caller turns the transitions they
return into ``status`` events.
"""

from __future__ import annotations

from typing import Protocol

from redis.asyncio import Redis


class PresenceStore(Protocol):
    async def touch(self, station: str, now: float) -> bool:
        """Record a message; True when the station was unknown or marked offline (now ONLINE)."""

    async def sweep(self, now: float, offline_after_s: float) -> list[str]:
        """Mark every station silent for longer than the threshold offline; return the newly offline ones."""

    async def last_seen(self, station: str) -> float | None: ...

    async def record_signal(self, station: str, signature: str) -> bool:
        """Store the station's latest heartbeat content; True when it differs from the stored one."""


class MemoryPresenceStore:
    def __init__(self) -> None:
        self._last_seen: dict[str, float] = {}
        self._offline: set[str] = set()
        self._signal: dict[str, str] = {}

    async def touch(self, station: str, now: float) -> bool:
        known = station in self._last_seen
        self._last_seen[station] = max(now, self._last_seen.get(station, now))
        was_offline = station in self._offline
        self._offline.discard(station)
        return not known or was_offline

    async def sweep(self, now: float, offline_after_s: float) -> list[str]:
        cutoff = now - offline_after_s
        gone = [s for s, seen in self._last_seen.items() if seen <= cutoff and s not in self._offline]
        self._offline.update(gone)
        return gone

    async def last_seen(self, station: str) -> float | None:
        return self._last_seen.get(station)

    async def record_signal(self, station: str, signature: str) -> bool:
        changed = self._signal.get(station) != signature
        self._signal[station] = signature
        return changed


# KEYS: last_seen zset, offline set. ARGV: station, now. Returns 1 when the station (re)appears.
_TOUCH = """
local previous = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not previous) or tonumber(previous) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
end
local was_offline = redis.call('SREM', KEYS[2], ARGV[1])
if (not previous) or was_offline == 1 then return 1 end
return 0
"""

# KEYS: last_seen zset, offline set. ARGV: cutoff. Returns the stations this call marked offline, so when
# several replicas sweep at once each transition is reported by exactly one of them.
_SWEEP = """
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local gone = {}
for _, station in ipairs(stale) do
  if redis.call('SADD', KEYS[2], station) == 1 then table.insert(gone, station) end
end
return gone
"""

# KEYS: signal hash. ARGV: station, signature. Returns 1 when the value changed.
_SET_SIGNAL = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


class RedisPresenceStore:
    def __init__(self, redis: Redis, key_prefix: str) -> None:
        self._redis = redis
        self._last_seen_key = f"{key_prefix}presence:last_seen"
        self._offline_key = f"{key_prefix}presence:offline"
        self._signal_key = f"{key_prefix}presence:signal"
        self._touch = redis.register_script(_TOUCH)
        self._sweep = redis.register_script(_SWEEP)
        self._set_signal = redis.register_script(_SET_SIGNAL)

    async def touch(self, station: str, now: float) -> bool:
        result = await self._touch(keys=[self._last_seen_key, self._offline_key], args=[station, now])
        return int(result) == 1

    async def sweep(self, now: float, offline_after_s: float) -> list[str]:
        result = await self._sweep(
            keys=[self._last_seen_key, self._offline_key], args=[now - offline_after_s]
        )
        return [s.decode() if isinstance(s, bytes) else str(s) for s in result]

    async def last_seen(self, station: str) -> float | None:
        score = await self._redis.zscore(self._last_seen_key, station)
        return None if score is None else float(score)

    async def record_signal(self, station: str, signature: str) -> bool:
        result = await self._set_signal(keys=[self._signal_key], args=[station, signature])
        return int(result) == 1
