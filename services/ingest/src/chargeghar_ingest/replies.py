"""Matching device replies to the command waiting for them, across replicas.

The protocol has no request id, so a waiter is registered per station (the command lock guarantees one at
a time) with the reply it expects: the reply command byte and, when the command names one, the bank SN or
the hole. Whoever receives a reply *claims* the waiter atomically; exactly one claim can win, so a reply is
either delivered to its command or — when none waits — reported as a ``command_result`` event, never both.

A waiter that gave up is remembered for a while ("late"), so a reply arriving after the timeout is still
tied to its command_id when it is forwarded to core.

Two implementations: in-process (one replica) and Redis (claims by Lua script, the reply travels over
Redis pub/sub to the replica that holds the waiting request).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import structlog
from redis.asyncio import Redis

log = structlog.get_logger(__name__)

ANY_MATCH = "*"  # a reply that names no bank/hole (e.g. SN 0 in a failed popup) matches any waiter


@dataclass(frozen=True, slots=True)
class Waiter:
    command_id: str
    station: str
    cmd: str  # the command sent, e.g. "popup_sn"
    expect: str  # reply command byte, e.g. "0x31"
    match: str  # "sn:40818052", "hole:3" or "" (any reply of that command byte)
    started_at: float  # epoch seconds
    replica: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Waiter:
        return cls(**json.loads(text))


@dataclass(frozen=True, slots=True)
class DeliveredReply:
    command_id: str
    reply_cmd: str
    reply: dict[str, Any]
    succeeded: bool
    received_at: float


def matches(waiter: Waiter, expect: str, match: str) -> bool:
    if waiter.expect != expect:
        return False
    return not waiter.match or match == ANY_MATCH or waiter.match == match


ReplyCallback = Callable[[DeliveredReply], Awaitable[None]]


class ReplyBroker(Protocol):
    async def register(self, waiter: Waiter, ttl_s: float) -> None: ...

    async def claim(self, station: str, expect: str, match: str) -> Waiter | None:
        """Take the live waiter this reply answers (removing it), or None."""

    async def withdraw(self, waiter: Waiter) -> bool:
        """Remove our own waiter at timeout; False when a reply claimed it a moment earlier."""

    async def remember_late(self, waiter: Waiter, ttl_s: float) -> None: ...

    async def claim_late(self, station: str, expect: str, match: str) -> Waiter | None: ...

    async def deliver(self, waiter: Waiter, reply: DeliveredReply) -> None:
        """Hand a claimed reply to the replica (maybe this one) whose request waits for it."""

    async def run(self) -> None:
        """Background work (listening for replies from other replicas); returns at once if none."""


class MemoryReplyBroker:
    def __init__(self, on_reply: ReplyCallback) -> None:
        self._on_reply = on_reply
        self._live: dict[str, Waiter] = {}
        self._late: dict[str, tuple[Waiter, float]] = {}

    async def register(self, waiter: Waiter, ttl_s: float) -> None:
        self._live[waiter.station] = waiter

    async def claim(self, station: str, expect: str, match: str) -> Waiter | None:
        waiter = self._live.get(station)
        if waiter is None or not matches(waiter, expect, match):
            return None
        del self._live[station]
        return waiter

    async def withdraw(self, waiter: Waiter) -> bool:
        current = self._live.get(waiter.station)
        if current is not None and current.command_id == waiter.command_id:
            del self._live[waiter.station]
            return True
        return False

    async def remember_late(self, waiter: Waiter, ttl_s: float) -> None:
        loop = asyncio.get_running_loop()
        self._late[waiter.station] = (waiter, loop.time() + ttl_s)

    async def claim_late(self, station: str, expect: str, match: str) -> Waiter | None:
        entry = self._late.get(station)
        if entry is None:
            return None
        waiter, expires = entry
        if asyncio.get_running_loop().time() > expires:
            del self._late[station]
            return None
        if not matches(waiter, expect, match):
            return None
        del self._late[station]
        return waiter

    async def deliver(self, waiter: Waiter, reply: DeliveredReply) -> None:
        await self._on_reply(reply)

    async def run(self) -> None:
        return None


# KEYS[1] waiter key. ARGV: expect, match. Returns the waiter JSON when it matched (and deletes it).
_CLAIM = """
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local waiter = cjson.decode(raw)
if waiter.expect ~= ARGV[1] then return false end
if waiter.match ~= '' and ARGV[2] ~= '*' and waiter.match ~= ARGV[2] then return false end
redis.call('DEL', KEYS[1])
return raw
"""

# KEYS[1] waiter key. ARGV: command_id. Deletes the waiter only if it is still this command's.
_WITHDRAW = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
if cjson.decode(raw).command_id ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


class RedisReplyBroker:
    def __init__(self, redis: Redis, key_prefix: str, replica: str, on_reply: ReplyCallback) -> None:
        self._redis = redis
        self._prefix = key_prefix
        self._replica = replica
        self._on_reply = on_reply
        self._channel = f"{key_prefix}cmd:replies:{replica}"
        self._claim = redis.register_script(_CLAIM)
        self._withdraw = redis.register_script(_WITHDRAW)
        self.listening = asyncio.Event()

    def _live_key(self, station: str) -> str:
        return f"{self._prefix}cmd:wait:{station}"

    def _late_key(self, station: str) -> str:
        return f"{self._prefix}cmd:late:{station}"

    async def register(self, waiter: Waiter, ttl_s: float) -> None:
        await self._redis.set(self._live_key(waiter.station), waiter.to_json(), px=max(1, int(ttl_s * 1000)))

    async def claim(self, station: str, expect: str, match: str) -> Waiter | None:
        raw = await self._claim(keys=[self._live_key(station)], args=[expect, match])
        return Waiter.from_json(raw) if raw else None

    async def withdraw(self, waiter: Waiter) -> bool:
        removed = await self._withdraw(keys=[self._live_key(waiter.station)], args=[waiter.command_id])
        return int(removed) == 1

    async def remember_late(self, waiter: Waiter, ttl_s: float) -> None:
        await self._redis.set(self._late_key(waiter.station), waiter.to_json(), px=max(1, int(ttl_s * 1000)))

    async def claim_late(self, station: str, expect: str, match: str) -> Waiter | None:
        raw = await self._claim(keys=[self._late_key(station)], args=[expect, match])
        return Waiter.from_json(raw) if raw else None

    async def deliver(self, waiter: Waiter, reply: DeliveredReply) -> None:
        if waiter.replica == self._replica:
            await self._on_reply(reply)
            return
        # Each replica listens on its own channel, so a reply crosses Redis to exactly one process.
        channel = f"{self._prefix}cmd:replies:{waiter.replica}"
        receivers = await self._redis.publish(channel, json.dumps(asdict(reply), separators=(",", ":")))
        if not receivers:
            log.warning("command.reply_undeliverable", command_id=waiter.command_id, replica=waiter.replica)

    async def run(self) -> None:
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(self._channel)
        self.listening.set()
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None or message.get("type") != "message":
                    continue
                try:
                    reply = DeliveredReply(**json.loads(message["data"]))
                except (ValueError, TypeError):
                    log.warning("command.reply_unreadable", data=str(message.get("data"))[:200])
                    continue
                await self._on_reply(reply)
        finally:
            self.listening.clear()
            with contextlib.suppress(Exception):
                await pubsub.unsubscribe(self._channel)
            await pubsub.aclose()
