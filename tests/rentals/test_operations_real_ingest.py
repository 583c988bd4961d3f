"""Staff device commands end to end: core → the REAL ingest's command API (HMAC) → Mosquitto → a cabinet
answering with real protocol frames → back to core, which answers the outcome and audits it."""

from __future__ import annotations

from pathlib import Path

import pytest
from chargeghar_core.audit.models import StaffAuditEntry
from chargeghar_core.auth.models import Role
from chargeghar_core.stations.models import Station
from chargeghar_protocol.codec import Frame, PopupByHoleResult
from rentals_support import add_station, rental_settings, running_rentals_app
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from test_real_ingest import BANK, SNAPSHOT_WITH_BANK_IN_HOLE_3, _online, mqtt_cabinet, real_ingest

pytestmark = pytest.mark.mqtt


async def test_staff_commands_through_the_real_ingest_and_broker(
    tmp_path: Path,
    mqtt_broker: tuple[str, int],
    topic_prefix: str,
    rentals_database_url: str,
    test_sessionmaker: async_sessionmaker[AsyncSession],
    session: AsyncSession,
) -> None:
    def answer(command: dict[str, str]) -> list[Frame | bytes]:
        if command["cmd"] == "check":
            return [SNAPSHOT_WITH_BANK_IN_HOLE_3]
        if command["cmd"] == "popup":
            return [PopupByHoleResult(board=1, hole=int(command["data"]), state=0x01, solenoid=2)]
        return []  # reboot, setWifi: the cabinet says nothing

    async with real_ingest(tmp_path, mqtt_broker, topic_prefix) as (ingest_url, ingest_runtime):
        async with running_rentals_app(
            rentals_database_url, rental_settings(ingest_url), sessionmaker=test_sessionmaker
        ) as client:
            imei = await add_station(client, session, {1: None, 2: None, 3: BANK, 4: None})
            silent_imei = await add_station(client, session, {1: None})
            station_id = await session.scalar(select(Station.id).where(Station.imei == imei))
            silent_id = await session.scalar(select(Station.id).where(Station.imei == silent_imei))
            admin = client.staff_headers(Role.ADMIN)
            path = f"/api/admin/stations/{station_id}/commands"
            async with mqtt_cabinet(mqtt_broker, topic_prefix, imei, answer) as received:
                await _online(ingest_runtime, imei)
                check = await client.http.post(path, json={"cmd": "check", "timeout_s": 10}, headers=admin)
                popup = await client.http.post(
                    path, json={"cmd": "popup", "data": "3", "timeout_s": 10}, headers=admin
                )
                wifi = await client.http.post(
                    path,
                    json={"cmd": "setWifi", "username": "cafe", "password": "hunter2", "timeout_s": 1},
                    headers=admin,
                )
            offline = await client.http.post(
                f"/api/admin/stations/{silent_id}/commands", json={"cmd": "reboot"}, headers=admin
            )

    assert check.status_code == 200, check.text
    assert check.json()["data"]["outcome"] == "ok"
    assert popup.status_code == 200, popup.text
    assert popup.json()["data"]["outcome"] == "ok"
    assert wifi.status_code == 200, wifi.text
    assert wifi.json()["data"]["outcome"] in ("ok", "timeout")
    assert received == ["check", "popup", "setWifi"]  # each sent exactly once
    assert offline.status_code == 409 and offline.json()["error"] == "DEVICE_OFFLINE", offline.text

    rows = (
        await session.scalars(
            select(StaffAuditEntry)
            .where(StaffAuditEntry.station_id.in_([station_id, silent_id]))
            .order_by(StaffAuditEntry.created_at)
        )
    ).all()
    assert [(row.details["request"]["cmd"], row.outcome.split(":")[0]) for row in rows] == [
        ("check", "ok"),
        ("popup", "ok"),
        ("setWifi", wifi.json()["data"]["outcome"]),
        ("reboot", "not_sent"),
    ]
    assert rows[2].details["request"]["password"] == "***"
    assert all(row.elapsed_ms is not None and row.elapsed_ms >= 0 for row in rows)
