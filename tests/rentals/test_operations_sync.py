"""Fleet-wide sync log (GET /api/admin/sync-logs) and the ingest's parked events through core, with the REAL
ingest app serving its signed ops API on a port."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from chargeghar_core.audit.models import StaffAuditEntry
from chargeghar_core.auth.models import Role
from chargeghar_core.kit.db import utcnow
from chargeghar_ingest.app import create_app as create_ingest_app
from chargeghar_ingest.settings import IngestSettings
from chargeghar_ingest.spool import PARKED
from rentals_support import (
    HMAC_SECRET,
    RentalsClient,
    full_event,
    new_bank_serial,
    new_imei,
    rental_settings,
    running_rentals_app,
    running_server,
)
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

SYNC_LOGS = "/api/admin/sync-logs"


@pytest.mark.postgres
async def test_fleet_sync_log_filters_by_outcome_type_station_and_time(
    client: RentalsClient, session: AsyncSession
) -> None:
    imei, other = new_imei(), new_imei()
    assert (await client.sync(full_event(imei, {1: new_bank_serial()}))).status_code == 200
    assert (await client.sync(full_event(other, {1: None}))).status_code == 200
    bad = full_event(imei, {1: None})
    bad["station"]["total_slots"] = 999  # refused: out of range, logged as FAILED
    assert (await client.sync(bad)).status_code == 400
    headers = client.staff_headers(Role.VIEWER)

    mine = await client.http.get(SYNC_LOGS, params={"station_key": imei}, headers=headers)
    assert mine.status_code == 200, mine.text
    page = mine.json()["data"]
    assert page["total"] == 2
    assert [item["outcome"] for item in page["items"]] == ["FAILED", "SUCCESS"]  # newest first
    assert page["items"][1]["station_serial"] == imei and page["items"][1]["event_type"] == "full"

    failed = await client.http.get(
        SYNC_LOGS, params={"outcome": "FAILED", "station_key": imei, "event_type": "full"}, headers=headers
    )
    assert failed.json()["data"]["total"] == 1
    assert failed.json()["data"]["items"][0]["error"]

    station_id = page["items"][1]["station_id"]
    by_station = await client.http.get(SYNC_LOGS, params={"station_id": station_id}, headers=headers)
    assert {item["station_key"] for item in by_station.json()["data"]["items"]} == {imei}

    later = (utcnow().replace(microsecond=0)).isoformat()
    future = await client.http.get(
        SYNC_LOGS, params={"station_key": other, "from": later + "1"}, headers=headers
    )
    assert future.status_code == 400  # not a time
    window = await client.http.get(
        SYNC_LOGS, params={"station_key": other, "to": "2000-01-01T00:00:00Z"}, headers=headers
    )
    assert window.json()["data"]["total"] == 0

    for params in (
        {"outcome": "BROKEN"},
        {"event_type": "nonsense"},
        {"page_size": 201},
        {"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
    ):
        response = await client.http.get(SYNC_LOGS, params=params, headers=headers)
        assert response.status_code == 400, (params, response.text)
    assert (await client.http.get(SYNC_LOGS)).status_code == 401


@asynccontextmanager
async def real_ingest_ops(tmp_path: Path) -> AsyncIterator[tuple[str, Any]]:
    """The ingest app (no MQTT, no forwarder) on a real port: its spool and signed ops API."""
    settings = IngestSettings.model_validate(
        {
            "environment": "test",
            "mqtt_enabled": False,
            "forwarder_enabled": False,
            "spool": {"path": tmp_path / "spool.sqlite3"},
            "core": {"base_url": "http://127.0.0.1:9", "hmac_secret": HMAC_SECRET, "password": "unused"},
            "device": {"credential_secret": "test-credential-secret"},
        }
    )
    app = create_ingest_app(settings)
    async with app.router.lifespan_context(app), running_server(app) as base_url:
        yield base_url, app.state.runtime


async def _park(runtime: Any, station: str) -> str:
    event_id = uuid.uuid4().hex
    event = {"event_id": event_id, "type": "status", "observed_at": utcnow().isoformat(), "device": {}}
    await runtime.spool.enqueue(event, station=station)
    due = await runtime.spool.due_events(now=time.time() + 1, limit=100)
    spooled = next(item for item in due if item.event_id == event_id)
    await runtime.spool.move_to_dead_letter(spooled, reason=PARKED, detail="core answered 500 five times")
    await runtime.spool.ack([spooled])
    return event_id


async def test_parked_events_are_listed_and_redriven_through_the_ingest_and_audited(
    tmp_path: Path, rentals_database_url: str, test_sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    async with real_ingest_ops(tmp_path) as (ingest_url, runtime):
        station = new_imei()
        event_id = await _park(runtime, station)
        async with running_rentals_app(
            rentals_database_url, rental_settings(ingest_url), sessionmaker=test_sessionmaker
        ) as client:
            viewer = client.staff_headers(Role.VIEWER)
            listed = await client.http.get(
                "/api/admin/parked-events", params={"station": station}, headers=viewer
            )
            assert listed.status_code == 200, listed.text
            items = listed.json()["data"]
            assert [(item["event_id"], item["reason"], item["station"]) for item in items] == [
                (event_id, PARKED, station)
            ]
            body = {"ids": [items[0]["id"]], "reason": "core fixed"}
            refused = await client.http.post("/api/admin/parked-events/redrive", json=body, headers=viewer)
            assert refused.status_code == 403  # the viewer role only reads
            empty = await client.http.post(
                "/api/admin/parked-events/redrive",
                json={"reason": "nothing named"},
                headers=client.staff_headers(),
            )
            assert empty.status_code == 400

            redriven = await client.http.post(
                "/api/admin/parked-events/redrive", json=body, headers=client.staff_headers()
            )
            assert redriven.status_code == 200, redriven.text
            assert redriven.json()["data"]["count"] == 1
            assert await runtime.spool.pending_count() == 1
            assert await runtime.spool.dead_letter_count(PARKED) == 0
            async with test_sessionmaker() as check:
                audit = (
                    await check.execute(
                        select(StaffAuditEntry).where(StaffAuditEntry.action == "parked_events.redrive")
                    )
                ).scalar_one()
            assert audit.details["reason"] == "core fixed" and audit.details["count"] == 1


async def test_parked_events_answer_502_when_the_ingest_is_unreachable(
    rentals_database_url: str, test_sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    async with running_rentals_app(
        rentals_database_url, rental_settings("http://127.0.0.1:9"), sessionmaker=test_sessionmaker
    ) as client:
        response = await client.http.get("/api/admin/parked-events", headers=client.staff_headers())
        assert response.status_code == 502
        assert response.json()["error"] == "INGEST_UNAVAILABLE"
        redrive = await client.http.post(
            "/api/admin/parked-events/redrive",
            json={"all_parked": True, "reason": "try"},
            headers=client.staff_headers(),
        )
        assert redrive.status_code == 502
