"""Console logs: the fleet sync log (events sent through core's real internal endpoint), the ingest's parked
events listed and re-driven through the REAL ingest app's signed ops API (audited), and the staff audit log
with its filters."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from chargeghar_core.auth.models import Role
from chargeghar_core.kit.db import utcnow
from chargeghar_ingest.app import create_app as create_ingest_app
from chargeghar_ingest.settings import IngestSettings
from chargeghar_ingest.spool import PARKED
from chargeghar_protocol.signing import signed_headers
from console_support import HMAC_SECRET, INGEST_URL, ConsoleUser, new_bank_serial, new_imei
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession
from test_console_rentals import completed_rental, staff_audit

Login = Callable[..., Awaitable[ConsoleUser]]


async def send_event(app: FastAPI, api: httpx.AsyncClient, event: dict[str, Any]) -> httpx.Response:
    """A station event the way the ingest sends it: signed, with a service account's token."""
    pair = app.state.tokens.issue_pair(
        user_id=uuid.uuid4(), role=Role.SERVICE, email="ingest@test", generation=0
    )
    raw = json.dumps(event, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {pair.access_token}"}
    headers.update(signed_headers(HMAC_SECRET, raw))
    headers["X-Event-Id"] = uuid.uuid4().hex
    return await api.post("/api/internal/stations/data", content=raw, headers=headers)


def full_event(imei: str, serial: str | None, *, total_slots: int = 1) -> dict[str, Any]:
    slot: dict[str, Any] = {
        "slot_number": 1,
        "status": "OCCUPIED" if serial else "AVAILABLE",
        "battery_level": 80,
    }
    banks = []
    if serial:
        slot["power_bank_serial"] = serial
        banks.append({"serial_number": serial, "status": "AVAILABLE", "battery_level": 80, "current_slot": 1})
    return {
        "type": "full",
        "timestamp": int(time.time()),
        "device": {"serial_number": imei, "imei": imei, "status": "ONLINE"},
        "station": {"serial_number": imei, "total_slots": total_slots},
        "slots": [slot],
        "power_banks": banks,
    }


def outcomes(html: str) -> list[str]:
    return re.findall(r'data-testid="sync-log-row" data-outcome="([A-Z]+)"', html)


# PostgreSQL: the FAILED row of a refused event is written on its own connection, which SQLite's single writer
# cannot interleave with the test's open transaction (the API's sync-log test is marked the same way).
@pytest.mark.postgres
async def test_sync_log_lists_and_filters_the_fleets_events(
    console_login: Login, console_app: FastAPI, api: httpx.AsyncClient
) -> None:
    viewer = await console_login(Role.VIEWER)
    imei = new_imei()
    assert (await send_event(console_app, api, full_event(imei, new_bank_serial()))).status_code == 200
    assert (await send_event(console_app, api, full_event(imei, None, total_slots=999))).status_code == 400
    page = await viewer.get("/console/sync-log", params={"station": imei})
    assert page.status_code == 200, page.text
    assert 'data-testid="sync-log-table"' in page.text and 'data-testid="pager"' in page.text
    assert outcomes(page.text) == ["FAILED", "SUCCESS"]  # newest first
    failed = await viewer.get(
        "/console/sync-log", params={"station": imei, "outcome": "FAILED", "event_type": "full"}
    )
    assert outcomes(failed.text) == ["FAILED"]
    future = await viewer.get("/console/sync-log", params={"station": imei, "from": "2099-01-01", "to": ""})
    assert outcomes(future.text) == []
    assert (await viewer.get("/console/sync-log", params={"outcome": "BROKEN"})).status_code == 400
    assert "data-action" not in page.text


@asynccontextmanager
async def real_ingest(app: FastAPI, tmp_path: Path) -> AsyncIterator[Any]:
    """The ingest app (no MQTT, no forwarder) answering core's calls to INGEST_URL in-process."""
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
    ingest = create_ingest_app(settings)
    original = app.state.http_client
    async with ingest.router.lifespan_context(ingest):
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=ingest), base_url=INGEST_URL)
        app.state.http_client = client
        try:
            yield ingest.state.runtime
        finally:
            app.state.http_client = original
            await client.aclose()


async def park(runtime: Any, station: str) -> str:
    event_id = uuid.uuid4().hex
    event = {"event_id": event_id, "type": "status", "observed_at": utcnow().isoformat(), "device": {}}
    await runtime.spool.enqueue(event, station=station)
    due = await runtime.spool.due_events(now=time.time() + 1, limit=100)
    spooled = next(item for item in due if item.event_id == event_id)
    await runtime.spool.move_to_dead_letter(spooled, reason=PARKED, detail="core answered 500 five times")
    await runtime.spool.ack([spooled])
    return event_id


def parked_ids(html: str) -> list[str]:
    return re.findall(r'data-testid="parked-row" data-id="(\d+)"', html)


async def test_parked_events_are_listed_and_redriven_through_the_ingest_with_an_audit_row(
    console_login: Login, console_app: FastAPI, session: AsyncSession, tmp_path: Path
) -> None:
    admin = await console_login(Role.ADMIN)
    viewer = await console_login(Role.VIEWER)
    station, other = new_imei(), new_imei()
    async with real_ingest(console_app, tmp_path) as runtime:
        event_id = await park(runtime, station)
        await park(runtime, other)
        seen = await viewer.get("/console/parked", params={"station": station})
        assert seen.status_code == 200, seen.text
        assert 'data-testid="parked-table"' in seen.text and event_id in seen.text
        assert len(parked_ids(seen.text)) == 1 and "data-action" not in seen.text
        refused = await viewer.post(
            "/console/parked/redrive", {"ids": parked_ids(seen.text)[0], "reason": "mine"}
        )
        assert refused.status_code == 403

        page = await admin.get("/console/parked", params={"station": station})
        assert 'data-action="redrive"' in page.text and 'data-action="redrive-station"' in page.text
        [dead_letter] = parked_ids(page.text)
        forged = await admin.post("/console/parked/redrive", {"ids": dead_letter, "reason": "fixed"}, csrf="")
        assert forged.status_code == 403 and "CSRF token missing or invalid" in forged.text
        nothing = await admin.post(
            "/console/parked/redrive", {"reason": "nothing ticked", "station": station}
        )
        assert "Tick the events" in (await admin.get(nothing.headers["location"])).text
        assert await runtime.spool.dead_letter_count(PARKED) == 2

        done = await admin.post(
            "/console/parked/redrive", {"ids": dead_letter, "reason": "core fixed", "station": station}
        )
        assert done.status_code == 303
        after = await admin.get(done.headers["location"])
        assert "flash-ok" in after.text and "1 events re-driven" in after.text
        assert parked_ids(after.text) == []
        assert await runtime.spool.dead_letter_count(PARKED) == 1 and await runtime.spool.pending_count() == 1
        [audit] = await staff_audit(session, admin.user, "parked_events.redrive")
        assert audit.details["reason"] == "core fixed" and audit.details["count"] == 1

        everything = await admin.post("/console/parked/redrive", {"scope": "all", "reason": "all fixed"})
        assert "1 events re-driven" in (await admin.get(everything.headers["location"])).text
        assert await runtime.spool.dead_letter_count(PARKED) == 0
        assert len(await staff_audit(session, admin.user, "parked_events.redrive")) == 2


async def test_parked_page_says_when_the_ingest_does_not_answer(console_login: Login) -> None:
    staff = await console_login(Role.STAFF)
    page = await staff.get("/console/parked")  # the tests' fake ingest has no ops API: it answers 404
    assert page.status_code == 200 and 'data-testid="ingest-error"' in page.text
    failed = await staff.post("/console/parked/redrive", {"scope": "all", "reason": "try it"})
    assert "Not re-driven" in (await staff.get(failed.headers["location"])).text


def audit_actions(html: str) -> list[str]:
    return re.findall(r'data-testid="audit-row" data-audit-action="([a-z_.]+)"', html)


async def test_audit_log_shows_console_actions_with_filters(
    console_login: Login, session: AsyncSession
) -> None:
    admin = await console_login(Role.ADMIN)
    rental = await completed_rental(session)
    await admin.get(f"/console/rentals/{rental.id}")
    await admin.post(f"/console/rentals/{rental.id}/refund", {"reason": "audited refund", "amount": "5"})
    await admin.post(f"/console/rentals/{rental.id}/override", {"total": "80", "reason": "audited override"})

    viewer = await console_login(Role.VIEWER)
    page = await viewer.get("/console/audit", params={"actor": admin.user.email})
    assert page.status_code == 200 and 'data-testid="audit-table"' in page.text
    assert audit_actions(page.text) == ["rental.override_amount", "rental.refund_to_wallet"]
    assert "audited refund" in page.text and f"/console/rentals/{rental.id}" in page.text
    by_action = await viewer.get(
        "/console/audit", params={"action": "rental.refund_to_wallet", "actor": str(admin.user.id)}
    )
    assert audit_actions(by_action.text) == ["rental.refund_to_wallet"]
    by_prefix = await viewer.get("/console/audit", params={"action": "rental", "target_id": str(rental.id)})
    assert len(audit_actions(by_prefix.text)) == 2
    none = await viewer.get("/console/audit", params={"actor": admin.user.email, "to": "2000-01-01"})
    assert audit_actions(none.text) == []
    assert (await viewer.get("/console/audit", params={"action": "DROP TABLE"})).status_code == 400
    assert "data-action" not in page.text


async def test_the_stations_reply_to_a_rentals_eject_shows_in_its_timeline(
    console_login: Login, console_app: FastAPI, api: httpx.AsyncClient, session: AsyncSession
) -> None:
    viewer = await console_login(Role.VIEWER)
    rental = await completed_rental(session)
    reply = {
        "type": "command_result",
        "timestamp": int(time.time()),
        "device": {"serial_number": rental.station_imei, "imei": rental.station_imei},
        "command_id": rental.popup_command_id,
        "cmd": "popup_sn",
        "outcome": "ok",
        "reply": None,
        "observed_at": utcnow().isoformat(),
    }
    assert (await send_event(console_app, api, reply)).status_code == 200
    unrelated = {**reply, "command_id": "another-command"}
    assert (await send_event(console_app, api, unrelated)).status_code == 200
    page = await viewer.get(f"/console/rentals/{rental.id}")
    kinds = re.findall(r'data-testid="timeline-item" data-kind="([a-z]+)"', page.text)
    assert kinds == ["reserve", "eject", "return", "device"]
    assert "Station reported popup_sn: ok" in page.text and "another-command" not in page.text


async def test_a_viewer_sees_every_page_and_no_action_on_any(
    console_login: Login, console_app: FastAPI, session: AsyncSession, tmp_path: Path
) -> None:
    rental = await completed_rental(session, due_paisa=500)
    viewer = await console_login(Role.VIEWER)
    admin = await console_login(Role.ADMIN)
    async with real_ingest(console_app, tmp_path) as runtime:
        await park(runtime, new_imei())
        pages = {
            "/console/rentals": None,
            f"/console/rentals/{rental.id}": ("override", "waive", "refund"),
            "/console/renters": None,
            f"/console/renters/{rental.user_id}": ("set-renter-status",),
            "/console/money": None,
            "/console/sync-log": None,
            "/console/parked": ("redrive", "redrive-all"),
            "/console/audit": None,
        }
        for path, actions in pages.items():
            seen = await viewer.get(path)
            assert seen.status_code == 200, path
            assert "data-action" not in seen.text, path
            assert 'data-testid="pager"' in seen.text or actions, path
            for action in actions or ():
                assert f'data-action="{action}"' in (await admin.get(path)).text, (path, action)
