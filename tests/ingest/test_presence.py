"""Presence: ONLINE on first contact, OFFLINE after silence, ONLINE again on the next message.

Run against both stores: in-process and Redis (where two replicas must agree and report each
transition once).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from chargeghar_ingest.presence import MemoryPresenceStore, PresenceStore, RedisPresenceStore
from chargeghar_protocol.signing import device_sign, signed_headers
from ingest_fake_core import HMAC_SECRET
from ingest_harness import (
    STATION,
    UPLOAD_FRAME,
    RunningIngest,
    free_tcp_port,
    make_settings,
    running_ingest,
    wait_until,
)
from redis.asyncio import Redis


def signed(params: dict[str, str]) -> dict[str, str]:
    return {**params, "sign": device_sign(params)}


async def upload(ingest: RunningIngest, station: str = STATION) -> None:
    params = signed({"rentboxSN": station, "signal": "CSQ:31"})
    response = await ingest.client.post("/api/rentbox/upload/data", params=params, content=UPLOAD_FRAME)
    assert response.json()["code"] == 200


async def statuses(ingest: RunningIngest, station: str = STATION) -> list[str]:
    """The HTTP channel's transitions (uploads are HTTP; presence is kept per channel)."""
    return [
        e["channels"]["http"]
        for e in await ingest.event_bodies("status", station)
        if e.get("channel") == "http"
    ]


@pytest.fixture(params=["memory", "redis"])
def presence_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    presence = {"offline_after_s": 0.4, "sweep_interval_s": 0.05}
    if request.param == "memory":
        return make_settings(tmp_path, presence=presence)
    redis_url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("isolated_redis_prefix")
    return make_settings(tmp_path, presence=presence, redis={"url": redis_url, "key_prefix": prefix})


async def test_online_offline_online(presence_settings: Any) -> None:
    async with running_ingest(presence_settings) as ingest:
        await upload(ingest)
        assert await statuses(ingest) == ["ONLINE"]
        # Messages within the threshold keep it online without new status events.
        await asyncio.sleep(0.15)
        await upload(ingest)
        assert await statuses(ingest) == ["ONLINE"]

        async def went_offline() -> bool:
            return await statuses(ingest) == ["ONLINE", "OFFLINE"]

        await wait_until(went_offline, timeout_s=5)
        # Still silent: no second OFFLINE.
        await asyncio.sleep(0.3)
        assert await statuses(ingest) == ["ONLINE", "OFFLINE"]
        offline = (await ingest.event_bodies("status"))[1]
        assert offline["device"]["last_heartbeat"].endswith("Z")

        await upload(ingest)
        assert await statuses(ingest) == ["ONLINE", "OFFLINE", "ONLINE"]
        assert ingest.runtime.metrics.counters["presence_offline_total"] == 1


async def exercise_store(store: PresenceStore) -> None:
    assert await store.touch("A", 1000.0) is True  # unknown → ONLINE
    assert await store.touch("A", 1001.0) is False
    assert await store.sweep(1010.0, 30.0) == []
    assert await store.sweep(1040.0, 30.0) == ["A"]
    assert await store.sweep(1050.0, 30.0) == []  # reported once
    assert await store.last_seen("A") == 1001.0
    assert await store.touch("A", 1060.0) is True  # back
    assert await store.record_signal("A", "27|0") is True
    assert await store.record_signal("A", "27|0") is False
    assert await store.record_signal("A", "28|0") is True


async def test_memory_store_transitions() -> None:
    await exercise_store(MemoryPresenceStore())


@pytest.mark.redis
async def test_redis_store_transitions_and_replicas_agree(redis_url: str, redis_prefix: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        await exercise_store(RedisPresenceStore(redis, redis_prefix))
        # Two replicas sweeping at once: every station is reported offline by exactly one of them.
        first, second = (
            RedisPresenceStore(redis, redis_prefix + "r:"),
            RedisPresenceStore(redis, redis_prefix + "r:"),
        )
        for n in range(50):
            await first.touch(f"S{n}", 100.0)
        results = await asyncio.gather(first.sweep(500.0, 30.0), second.sweep(500.0, 30.0))
        assert sorted(results[0] + results[1]) == sorted(f"S{n}" for n in range(50))
    finally:
        keys = [k async for k in redis.scan_iter(match=f"{redis_prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


async def test_redis_outage_costs_presence_not_the_device_answer(tmp_path: Path) -> None:
    """Redis configured but unreachable: uploads are still answered and spooled; commands get 503."""
    dead_redis = f"redis://127.0.0.1:{free_tcp_port()}/0"
    settings = make_settings(tmp_path, redis={"url": dead_redis, "socket_timeout_s": 0.2})
    async with running_ingest(settings) as ingest:
        await upload(ingest)
        assert [e.type for e in await ingest.events()] == ["full"]
        assert ingest.runtime.metrics.counters["presence_store_errors_total"] == 1
        body = b'{"cmd":"check"}'
        response = await ingest.client.post(
            f"/internal/devices/{STATION}/commands", content=body, headers=signed_headers(HMAC_SECRET, body)
        )
        assert response.status_code == 503 and response.json()["error"] == "SERVICE_UNAVAILABLE"
