"""Poison input end to end (device → ingest → real core): the station's later events are applied and the
failure is kept with its evidence. Core and the ingest run as child processes with their default
settings; the device side is a bare MQTT client and plain HTTP, as an attacker would send it."""

from __future__ import annotations

import json
import random
from typing import Any

import aiomqtt
import httpx
import pytest
from chargeghar_ingest.simulator import frames
from chargeghar_ingest.simulator.cabinet import CabinetState
from chargeghar_ingest.simulator.stack import LocalStack
from chargeghar_protocol.signing import device_sign, signed_headers
from e2e_support import eventually
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

pytestmark = [pytest.mark.mqtt]

# The sync log's outcome of an event core applied.
APPLIED = "SUCCESS"


def cabinet_snapshot() -> bytes:
    """A real 0x10 frame of a 4-slot cabinet holding two banks (encoded by the protocol library)."""
    state = CabinetState.empty(4)
    state.fill(random.Random(7), [40818052, 40818053])
    return frames.snapshot(state)


UPLOAD_FRAME = cabinet_snapshot()


def fresh_imei() -> str:
    return "8646" + "".join(random.choice("0123456789") for _ in range(11))


async def sync_rows(engine: AsyncEngine, imei: str) -> list[tuple[str, str, str | None]]:
    """(event_type, outcome, error) of every sync-log row core wrote for this station, oldest first."""
    query = text(
        "SELECT event_type, outcome, error FROM sync_logs WHERE station_key = :key ORDER BY created_at"
    )
    async with engine.connect() as connection:
        rows = (await connection.execute(query, {"key": imei})).all()
    return [(str(r[0]), str(r[1]), r[2]) for r in rows]


def applied_full(rows: list[tuple[str, str, str | None]]) -> int:
    return sum(1 for event_type, outcome, _ in rows if event_type == "full" and outcome == APPLIED)


async def upload(stack: LocalStack, params: dict[str, str], body: bytes = UPLOAD_FRAME) -> dict[str, Any]:
    signed = {**params, "sign": device_sign(params)}
    async with httpx.AsyncClient(base_url=stack.config.ingest_url, timeout=10) as client:
        response = await client.post("/api/rentbox/upload/data", params=signed, content=body)
    answer: dict[str, Any] = response.json()
    return answer


async def signed_get(stack: LocalStack, path: str, params: dict[str, str]) -> httpx.Response:
    headers = signed_headers(stack.config.hmac_secret, b"")
    async with httpx.AsyncClient(base_url=stack.config.ingest_url, timeout=10) as client:
        return await client.get(path, params=params, headers=headers)


async def test_nul_and_oversized_input_never_stop_a_station(
    running_stack: LocalStack, mqtt_broker: tuple[str, int], events_db: AsyncEngine
) -> None:
    imei = fresh_imei()
    prefix = running_stack.config.topic_prefix

    # 1. HTTP upload whose informational field carries NUL (its device sign is valid: anyone can compute it).
    answer = await upload(running_stack, {"rentboxSN": imei, "signal": "CSQ:31", "ssid": "cafe\x00net"})
    assert answer["code"] == 200

    async def first_applied() -> bool:
        return applied_full(await sync_rows(events_db, imei)) == 1

    await eventually(first_applied, within_s=30, what="the cleaned upload applied by core")

    # 2. An oversized MQTT payload and an oversized HTTP body for the same station.
    topic = f"{prefix}/powerbank/{imei}/user/update"
    host, port = mqtt_broker
    async with aiomqtt.Client(host, port, identifier=f"poison-{imei}") as client:
        await client.publish(topic, b"\xa8" * (1024 * 1024), qos=1)
        too_big = await upload(running_stack, {"rentboxSN": imei, "signal": "CSQ:31"}, b"\xa8" * 200_000)
        assert too_big["code"] == 413
        # 3. The station's next, real frame over MQTT (a 0x10 on the update topic is a check reply).
        await client.publish(topic, UPLOAD_FRAME, qos=1)

    async def second_applied() -> bool:
        return applied_full(await sync_rows(events_db, imei)) == 2

    await eventually(second_applied, within_s=30, what="the station's later frame applied by core")
    rows = await sync_rows(events_db, imei)
    assert all(outcome == APPLIED for _, outcome, _ in rows), rows

    # 4. The refused input is kept as evidence in the ingest's dead letters (capped, with its length).
    listing = await signed_get(running_stack, "/internal/ops/dead-letters", {"station": imei})
    assert listing.status_code == 200, listing.text
    letters = listing.json()["data"]["items"]
    by_source = {letter["source"]: letter for letter in letters}
    assert by_source["http"]["reason"] == "body_too_large"
    assert by_source["http"]["raw_len"] == 200_000
    assert by_source["mqtt"]["raw_len"] == 1024 * 1024


async def test_core_refuses_a_nul_event_and_applies_the_next_one(
    running_stack: LocalStack, events_db: AsyncEngine
) -> None:
    """A legacy bridge (no cleaning) posts a NUL straight to core: a typed 400, a failure row, no freeze."""
    imei = fresh_imei()
    base = {
        "type": "status",
        "device": {"serial_number": imei, "imei": imei, "status": "ONLINE"},
    }
    poison = {**base, "timestamp": 1_762_928_776, "device": {**base["device"], "wifi_ssid": "a\x00b"}}
    good = {**base, "timestamp": 1_762_928_777}
    async with httpx.AsyncClient(base_url=running_stack.config.core_url, timeout=10) as client:
        login = await client.post(
            "/api/admin/login",
            json={
                "email": running_stack.config.service_email,
                "password": running_stack.config.service_password,
            },
        )
        token = login.json()["data"]["access_token"]
        answers = []
        for event in (poison, good):
            body = json.dumps(event).encode()
            headers = {
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                **signed_headers(running_stack.config.hmac_secret, body),
            }
            answers.append(await client.post("/api/internal/stations/data", content=body, headers=headers))
    assert answers[0].status_code == 400, answers[0].text
    assert answers[0].json()["success"] is False
    assert answers[1].status_code == 200, answers[1].text
    rows = await sync_rows(events_db, imei)
    outcomes = [outcome for _, outcome, _ in rows]
    assert len(rows) == 2 and outcomes[-1] == APPLIED and outcomes[0] != APPLIED, rows
