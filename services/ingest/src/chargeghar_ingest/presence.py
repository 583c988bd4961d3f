"""Station presence per channel: last-seen per station and channel, and the ONLINE/OFFLINE transitions.

A station reaches us over two channels: MQTT (the only road for commands: a command needs a live MQTT link)
and its HTTP calls. Each channel has its own last-seen and offline marks; the broker's connect/disconnect
events (EMQX webhook) mark the MQTT channel at once instead of waiting for silence. The store also keeps
the last successful eject per bank and per slot, so the return de-duplication can tell a new return (after
a re-rent) from a second report of the same one.

Two stores with one interface: Redis (several replicas must agree, so every read-modify-write is one Lua
script) and in-process (one replica). Neither emits events itself; the caller turns the transitions they
return into ``status`` events.
"""

from __future__ import annotations

from typing import Literal, Protocol

from redis.asyncio import Redis

Channel = Literal["mqtt", "http"]
CHANNELS: tuple[Channel, ...] = ("mqtt", "http")
# How long an eject is remembered (a return de-duplication window is far shorter).
EJECT_MEMORY_S = 24 * 3600


class PresenceStore(Protocol):
    async def touch(self, station: str, now: float, channel: Channel = "mqtt") -> bool:
        """Record a message; True when the station was unknown or marked offline on this channel."""

    async def sweep(self, now: float, offline_after_s: float, channel: Channel = "mqtt") -> list[str]:
        """Mark every station silent for longer than the threshold offline; return the newly offline ones."""

    async def mark_offline(self, station: str, channel: Channel = "mqtt") -> bool:
        """Mark the station offline on this channel at once (broker disconnect); True when that is news."""

    async def is_marked_offline(self, station: str, channel: Channel = "mqtt") -> bool: ...

    async def last_seen(self, station: str, channel: Channel = "mqtt") -> float | None: ...

    async def record_signal(self, station: str, signature: str) -> bool:
        """Store the station's latest heartbeat content; True when it differs from the stored one."""

    async def record_eject(self, station: str, key: str, at: float) -> None:
        """A successful eject of ``key`` ("sn:<serial>" or "hole:<n>") at this station."""

    async def last_eject(self, station: str, keys: list[str]) -> float | None:
        """The latest eject time among ``keys``, or None."""


class MemoryPresenceStore:
    def __init__(self) -> None:
        self._last_seen: dict[Channel, dict[str, float]] = {channel: {} for channel in CHANNELS}
        self._offline: dict[Channel, set[str]] = {channel: set() for channel in CHANNELS}
        self._signal: dict[str, str] = {}
        self._ejects: dict[tuple[str, str], float] = {}

    async def touch(self, station: str, now: float, channel: Channel = "mqtt") -> bool:
        seen = self._last_seen[channel]
        known = station in seen
        seen[station] = max(now, seen.get(station, now))
        was_offline = station in self._offline[channel]
        self._offline[channel].discard(station)
        return not known or was_offline

    async def sweep(self, now: float, offline_after_s: float, channel: Channel = "mqtt") -> list[str]:
        cutoff = now - offline_after_s
        offline = self._offline[channel]
        gone = [s for s, seen in self._last_seen[channel].items() if seen <= cutoff and s not in offline]
        offline.update(gone)
        return gone

    async def mark_offline(self, station: str, channel: Channel = "mqtt") -> bool:
        if station in self._offline[channel]:
            return False
        self._offline[channel].add(station)
        return True

    async def is_marked_offline(self, station: str, channel: Channel = "mqtt") -> bool:
        return station in self._offline[channel]

    async def last_seen(self, station: str, channel: Channel = "mqtt") -> float | None:
        return self._last_seen[channel].get(station)

    async def record_signal(self, station: str, signature: str) -> bool:
        changed = self._signal.get(station) != signature
        self._signal[station] = signature
        return changed

    async def record_eject(self, station: str, key: str, at: float) -> None:
        self._ejects[(station, key)] = max(at, self._ejects.get((station, key), at))

    async def last_eject(self, station: str, keys: list[str]) -> float | None:
        times = [self._ejects[(station, key)] for key in keys if (station, key) in self._ejects]
        return max(times) if times else None


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

# KEYS: the station's eject hash. ARGV: key, time, ttl. Keeps the latest time per key.
_RECORD_EJECT = """
local previous = redis.call('HGET', KEYS[1], ARGV[1])
if (not previous) or tonumber(previous) < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


class RedisPresenceStore:
    def __init__(self, redis: Redis, key_prefix: str) -> None:
        self._redis = redis
        self._prefix = key_prefix
        # The MQTT channel keeps the key names of the single-channel store (a rolling upgrade keeps state).
        self._last_seen_keys = {
            "mqtt": f"{key_prefix}presence:last_seen",
            "http": f"{key_prefix}presence:http:last_seen",
        }
        self._offline_keys = {
            "mqtt": f"{key_prefix}presence:offline",
            "http": f"{key_prefix}presence:http:offline",
        }
        self._signal_key = f"{key_prefix}presence:signal"
        self._touch = redis.register_script(_TOUCH)
        self._sweep = redis.register_script(_SWEEP)
        self._set_signal = redis.register_script(_SET_SIGNAL)
        self._record_eject = redis.register_script(_RECORD_EJECT)

    async def touch(self, station: str, now: float, channel: Channel = "mqtt") -> bool:
        keys = [self._last_seen_keys[channel], self._offline_keys[channel]]
        result = await self._touch(keys=keys, args=[station, now])
        return int(result) == 1

    async def sweep(self, now: float, offline_after_s: float, channel: Channel = "mqtt") -> list[str]:
        keys = [self._last_seen_keys[channel], self._offline_keys[channel]]
        result = await self._sweep(keys=keys, args=[now - offline_after_s])
        return [s.decode() if isinstance(s, bytes) else str(s) for s in result]

    async def mark_offline(self, station: str, channel: Channel = "mqtt") -> bool:
        return int(await self._redis.sadd(self._offline_keys[channel], station)) == 1

    async def is_marked_offline(self, station: str, channel: Channel = "mqtt") -> bool:
        return bool(await self._redis.sismember(self._offline_keys[channel], station))

    async def last_seen(self, station: str, channel: Channel = "mqtt") -> float | None:
        score = await self._redis.zscore(self._last_seen_keys[channel], station)
        return None if score is None else float(score)

    async def record_signal(self, station: str, signature: str) -> bool:
        result = await self._set_signal(keys=[self._signal_key], args=[station, signature])
        return int(result) == 1

    async def record_eject(self, station: str, key: str, at: float) -> None:
        await self._record_eject(keys=[f"{self._prefix}ejects:{station}"], args=[key, at, EJECT_MEMORY_S])

    async def last_eject(self, station: str, keys: list[str]) -> float | None:
        values = await self._redis.hmget(f"{self._prefix}ejects:{station}", keys)
        times = [float(value) for value in values if value is not None]
        return max(times) if times else None
