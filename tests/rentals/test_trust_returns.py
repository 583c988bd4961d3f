"""Corroborated returns: a return reported only over device HTTP (forgeable sign) is a claim, not a return."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from chargeghar_core.powerbanks.models import PowerBank
from rentals_support import FakeIngest, RentalsClient, full_event, returned_event
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from test_returns import _iso, _ledger, _rent, _rental


def _http_return(imei: str, serial: str, slot: int, returned_at: datetime) -> dict[str, Any]:
    event = returned_event(imei, serial, slot, returned_at=_iso(returned_at))
    event["return_event"]["battery_level"] = None
    event["return_event"]["hardware_info"] = {"source": "http"}
    event["return_event"]["source"] = "http"
    return event


async def _bank(session: AsyncSession, serial: str) -> PowerBank:
    rows = await session.execute(
        select(PowerBank).where(PowerBank.serial_number == serial).execution_options(populate_existing=True)
    )
    return rows.scalar_one()


async def test_forged_http_return_leaves_the_rental_active_and_it_is_charged_to_the_real_return(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    imei, serial, renter, rental = await _rent(client, session, fake_ingest, balance=10_000)
    started = datetime.fromisoformat(rental["started_at"])
    forged_at = started + timedelta(minutes=10)

    forged = await client.sync(_http_return(imei, serial, 2, forged_at))
    assert forged.status_code == 200, forged.text
    data = forged.json()["data"]
    assert data["return_claimed"] is True and data["rental_status"] == "ACTIVE"
    stored = await _rental(session, rental["id"])
    assert stored.status == "ACTIVE" and stored.ended_at is None
    assert stored.return_claimed_at == forged_at and stored.return_claim_slot_number == 2
    bank = await _bank(session, serial)
    assert bank.status != "AVAILABLE" and bank.current_station_id is None, "the bank is still out"

    # The operator view shows the claim.
    shown = await client.http.get(f"/api/rentals/{rental['id']}", headers=client.renter_headers(renter))
    assert shown.status_code == 200, shown.text
    assert shown.json()["data"]["return_claim"]["state"] == "claimed"

    # The cabinet's next snapshot shows the slot empty: still no return.
    snapshot = full_event(imei, {1: None, 2: None}, observed_at=_iso(forged_at + timedelta(minutes=1)))
    assert (await client.sync(snapshot)).status_code == 200
    assert (await _rental(session, rental["id"])).status == "ACTIVE"

    # The real return, over MQTT (0x40), ends it at its own time.
    real_at = started + timedelta(minutes=50)
    real = returned_event(imei, serial, 2, returned_at=_iso(real_at))
    real["return_event"]["source"] = "mqtt"
    answer = await client.sync(real)
    assert answer.json()["data"]["rental_status"] == "COMPLETED"
    stored = await _rental(session, rental["id"])
    assert stored.ended_at == real_at
    assert (await _bank(session, serial)).current_slot_number == 2
    assert [kind for kind, _ in await _ledger(session, renter)].count("RENTAL_CHARGE") == 1


async def test_mqtt_return_completes_at_once(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    imei, serial, _renter, rental = await _rent(client, session, fake_ingest, balance=10_000)
    returned_at = datetime.fromisoformat(rental["started_at"]) + timedelta(minutes=30)
    event = returned_event(imei, serial, 2, returned_at=_iso(returned_at))
    event["return_event"]["source"] = "mqtt"
    answer = await client.sync(event)
    assert answer.json()["data"]["rental_status"] == "COMPLETED"
    assert (await _rental(session, rental["id"])).ended_at == returned_at


async def test_snapshot_showing_the_bank_confirms_the_claim_at_the_claimed_time(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    imei, serial, _renter, rental = await _rent(client, session, fake_ingest, balance=10_000)
    claimed_at = datetime.fromisoformat(rental["started_at"]) + timedelta(minutes=20)
    assert (await client.sync(_http_return(imei, serial, 2, claimed_at))).status_code == 200
    assert (await _rental(session, rental["id"])).status == "ACTIVE"

    snapshot = full_event(imei, {1: None, 2: serial}, observed_at=_iso(claimed_at + timedelta(minutes=15)))
    assert (await client.sync(snapshot)).status_code == 200
    stored = await _rental(session, rental["id"])
    assert stored.status == "COMPLETED"
    assert stored.ended_at == claimed_at  # charged to the corroborated return, not the snapshot
    assert stored.return_slot_number == 2
