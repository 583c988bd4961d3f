"""Bad input is a typed 400 on every endpoint, never a 500: NUL and lone surrogates (PostgreSQL cannot store
them), deep JSON, out-of-range numbers and pages, explicit nulls, snapshots stamped in the future. In a batch
a refused event harms only itself: its failure row is written and the station's later events apply."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from chargeghar_core.auth.models import Role
from chargeghar_core.pricing.models import RentalPackage
from chargeghar_core.stations.models import Station, SyncLog
from core_support import (
    INTERNAL_BATCH,
    INTERNAL_DATA,
    CoreClient,
    full_event,
    new_bank_serial,
    new_imei,
    status_event,
)
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def _station(session: AsyncSession, imei: str) -> Station | None:
    return await session.scalar(select(Station).where(Station.imei == imei))


async def _logs(session: AsyncSession, event_id: str) -> list[SyncLog]:
    return list(await session.scalars(select(SyncLog).where(SyncLog.event_id == event_id)))


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


# --------------------------------------------------------------------------------------------- internal


async def test_nul_in_a_single_event_is_refused_recorded_and_the_station_keeps_flowing(
    client: CoreClient, session: AsyncSession
) -> None:
    imei = new_imei()
    first = await client.sync(full_event(imei, {1: new_bank_serial(), 2: None}))
    assert first.status_code == 200, first.text

    poison = full_event(imei, {1: "4081\x008052", 2: None})
    poison_id = f"poison-{uuid.uuid4().hex}"
    refused = await client.sync(poison, event_id=poison_id)
    assert refused.status_code == 400, refused.text
    body = refused.json()
    assert body["error"] == "VALIDATION_ERROR"
    assert set(body["details"]) == {"slots.0.power_bank_serial", "power_banks.0.serial_number"}

    # The refusal is on record, with the payload made storable.
    (log,) = await _logs(session, poison_id)
    assert log.outcome == "FAILED"
    assert "\x00" not in json.dumps(log.payload)
    assert log.payload["slots"][0]["power_bank_serial"] == "40818052"

    later_bank = new_bank_serial()
    later = await client.sync(full_event(imei, {1: None, 2: later_bank}))
    assert later.status_code == 200, later.text
    assert later.json()["data"]["applied"] is True


async def test_nul_in_a_batch_refuses_only_that_event(client: CoreClient, session: AsyncSession) -> None:
    """The legacy failure: the NUL event's failure row failed on the same byte and took the batch down."""
    imei, other = new_imei(), new_imei()
    now = datetime.now(UTC)
    poison_id = f"poison-{uuid.uuid4().hex}"
    events: list[dict[str, Any]] = [
        {
            **full_event(imei, {1: new_bank_serial(), 2: None}, observed_at=_iso(now - timedelta(minutes=3))),
            "event_id": f"{imei}-1",
        },
        {
            **full_event(imei, {1: None, 2: "bad\x00serial"}, observed_at=_iso(now - timedelta(minutes=2))),
            "event_id": poison_id,
        },
        {**status_event(imei, "MAINTENANCE\x00", observed_at=_iso(now)), "event_id": f"{imei}-st\x00"},
        {
            **full_event(imei, {1: None, 2: new_bank_serial()}, observed_at=_iso(now - timedelta(minutes=1))),
            "event_id": f"{imei}-3",
        },
        {**full_event(other, {1: new_bank_serial()}), "event_id": f"{other}-1"},
    ]
    response = await client.post_signed(INTERNAL_BATCH, {"events": events})
    assert response.status_code == 200, response.text
    results = response.json()["data"]["results"]
    assert [r["status_code"] for r in results] == [200, 400, 400, 200, 200]
    assert set(results[1]["details"]) == {"slots.1.power_bank_serial", "power_banks.0.serial_number"}
    assert set(results[2]["details"]) == {"device.status", "event_id"}
    assert results[3]["data"]["applied"] is True  # not held back by the refused event before it
    assert results[4]["data"]["applied"] is True

    (poison_log,) = await _logs(session, poison_id)
    assert poison_log.outcome == "FAILED"
    assert poison_log.payload["slots"][1]["power_bank_serial"] == "badserial"
    # The event id itself held the NUL: its failure row is still written, under the stripped id.
    (status_log,) = await _logs(session, f"{imei}-st")
    assert status_log.outcome == "FAILED"


async def test_deep_json_is_invalid_json_not_a_crash(client: CoreClient) -> None:
    single = await client.post_signed(
        INTERNAL_DATA, ('{"type":"status","device":' + _deep(100_000) + "}").encode()
    )
    assert single.status_code == 400, single.text
    assert single.json()["error"] == "INVALID_JSON"

    batch = await client.post_signed(INTERNAL_BATCH, ('{"events":' + _deep(100_000) + "}").encode())
    assert batch.status_code == 400, batch.text
    assert batch.json()["error"] == "INVALID_JSON"

    imei = new_imei()
    nested: Any = "x"
    for _ in range(40):
        nested = {"n": nested}
    event = {**status_event(imei, "ONLINE"), "event_id": uuid.uuid4().hex}
    event["device"]["hardware_info"] = {"deep": nested}
    item = await client.post_signed(INTERNAL_BATCH, {"events": [event]})
    assert item.status_code == 200, item.text
    assert item.json()["data"]["results"][0]["error"] == "INVALID_JSON"


async def test_a_snapshot_from_the_future_is_refused(client: CoreClient, session: AsyncSession) -> None:
    imei = new_imei()
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    refused = await client.sync(full_event(imei, {1: new_bank_serial()}, observed_at=_iso(tomorrow)))
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == "VALIDATION_ERROR"
    assert "observed_at" in refused.json()["details"]

    # Within the allowed skew (clocks differ a little) it applies, and real snapshots after it too.
    soon = await client.sync(
        full_event(imei, {1: new_bank_serial()}, observed_at=_iso(datetime.now(UTC) + timedelta(seconds=30)))
    )
    assert soon.status_code == 200 and soon.json()["data"]["applied"] is True
    station = await _station(session, imei)
    assert station is not None


async def test_an_absurd_slot_count_is_refused(client: CoreClient) -> None:
    event = full_event(new_imei(), {1: None})
    event["station"]["total_slots"] = 10**10
    response = await client.sync(event)
    assert response.status_code == 400, response.text
    assert "station.total_slots" in response.json()["details"]


# --------------------------------------------------------------------------------------------- public API


async def test_nul_is_refused_on_anonymous_login_and_registration(client: CoreClient) -> None:
    register = await client.http.post(
        "/api/renters/register", json={"email": "a\x00b@example.com", "password": "long-enough-pw"}
    )
    assert register.status_code == 400, register.text
    assert register.json()["error"] == "VALIDATION_ERROR"
    assert "body.email" in register.json()["details"]

    login = await client.http.post("/api/renters/login", json={"login": "x\x00yz", "password": "pw"})
    assert login.status_code == 400, login.text

    admin_form = await client.http.post("/api/admin/login", data={"email": "a\x00@b.c", "password": "pw"})
    assert admin_form.status_code == 400, admin_form.text
    assert "body.email" in admin_form.json()["details"]

    surrogate = await client.http.post(
        "/api/renters/login",
        content=b'{"login": "abc\\ud800", "password": "pw"}',
        headers={"Content-Type": "application/json"},
    )
    assert surrogate.status_code == 400, surrogate.text


async def test_nul_in_query_and_path_is_refused(client: CoreClient) -> None:
    search = await client.http.get("/api/stations", params={"search": "a\x00b"})
    assert search.status_code == 400, search.text
    assert "query.search" in search.json()["details"]

    path = await client.http.get("/api/stations/CG%00X")
    assert path.status_code == 400, path.text
    assert "path" in path.json()["details"]


async def test_deep_json_body_of_the_public_api_is_invalid_json(client: CoreClient) -> None:
    response = await client.http.post(
        "/api/renters/login", content=_deep(100_000).encode(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "INVALID_JSON"


async def test_page_numbers_are_bounded_on_every_list(client: CoreClient) -> None:
    staff = client.auth(Role.ADMIN)
    for path, headers in [
        ("/api/stations", {}),
        ("/api/admin/stations", staff),
        ("/api/admin/powerbanks", staff),
        ("/api/admin/renters", staff),
        ("/api/admin/rentals", staff),
    ]:
        response = await client.http.get(path, params={"page": 10**15}, headers=headers)
        assert response.status_code == 400, (path, response.text)
        assert "query.page" in response.json()["details"], path
    offset = await client.http.get(
        f"/api/admin/stations/{uuid.uuid4()}/sync-logs", params={"offset": 10**15}, headers=staff
    )
    assert offset.status_code == 400, offset.text


async def test_package_update_refuses_null_and_absurd_prices(
    client: CoreClient, session: AsyncSession
) -> None:
    package = RentalPackage(
        id=uuid.uuid4(),
        name=f"p-{uuid.uuid4().hex[:6]}",
        description="",
        duration_minutes=60,
        price_paisa=100,
    )
    session.add(package)
    await session.flush()
    staff = client.auth(Role.ADMIN)
    path = f"/api/admin/packages/{package.id}"
    for body in ({"name": None}, {"price_paisa": None}, {"is_active": None}, {"price_paisa": 10**18}):
        response = await client.http.patch(path, json=body, headers=staff)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"] == "VALIDATION_ERROR"
    # Omitting is fine, and null stays allowed where the column is nullable.
    ok = await client.http.patch(path, json={"late_fee_policy_id": None, "price_paisa": 250}, headers=staff)
    assert ok.status_code == 200, ok.text
    assert ok.json()["data"]["price_paisa"] == 250
