"""Returning a bank (flow 2): the rental is completed and charged once, whatever the number of reports."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from chargeghar_core.payments.models import LedgerEntry, Wallet
from chargeghar_core.powerbanks.models import PowerBank
from chargeghar_core.pricing.models import LateFeePolicy
from chargeghar_core.rentals.models import Rental
from chargeghar_core.stations.models import Station
from rentals_support import (
    FakeIngest,
    RentalsClient,
    add_package,
    add_renter,
    add_station,
    full_event,
    new_bank_serial,
    returned_event,
)
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _policy() -> LateFeePolicy:
    # 1.5x the per-minute rate after 10 free minutes, capped at Rs 500 a day.
    return LateFeePolicy(
        id=uuid.uuid4(),
        name="standard",
        rate_multiplier_bp=15_000,
        flat_per_hour_paisa=0,
        grace_minutes=10,
        daily_cap_paisa=50_000,
        is_default=False,
    )


async def _balance(session: AsyncSession, user_id: uuid.UUID) -> int:
    value = await session.scalar(
        select(Wallet.balance_paisa)
        .where(Wallet.user_id == user_id)
        .execution_options(populate_existing=True)
    )
    return int(value or 0)


async def _ledger(session: AsyncSession, user_id: uuid.UUID) -> list[tuple[str, int]]:
    rows = await session.execute(
        select(LedgerEntry.kind, LedgerEntry.amount_paisa)
        .where(LedgerEntry.user_id == user_id)
        .order_by(LedgerEntry.created_at, LedgerEntry.id)
    )
    return [(kind, amount) for kind, amount in rows]


async def _rental(session: AsyncSession, rental_id: str) -> Rental:
    rows = await session.execute(
        select(Rental).where(Rental.id == uuid.UUID(rental_id)).execution_options(populate_existing=True)
    )
    return rows.scalar_one()


async def _rent(
    client: RentalsClient,
    session: AsyncSession,
    fake_ingest: FakeIngest,
    *,
    balance: int,
    package_kwargs: dict[str, Any] | None = None,
    slots: int = 2,
) -> tuple[str, str, uuid.UUID, dict[str, Any]]:
    serial = new_bank_serial()
    banks: dict[int, str | None] = {1: serial, **{n: None for n in range(2, slots + 1)}}
    imei = await add_station(client, session, banks)
    fake_ingest.cabinet(imei, banks)
    renter = await add_renter(session, balance_paisa=balance)
    package = await add_package(session, **(package_kwargs or {}))
    station_id = await session.scalar(select(Station.id).where(Station.imei == imei))
    response = await client.start(renter, station_id=station_id, package_id=package)
    assert response.status_code == 201, response.text
    return imei, serial, renter, response.json()["data"]


async def test_on_time_prepaid_return_completes_without_charge_and_rehomes_the_bank(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    imei, serial, renter, rental = await _rent(client, session, fake_ingest, balance=5000)
    returned_at = datetime.fromisoformat(rental["started_at"]) + timedelta(minutes=45)

    response = await client.sync(returned_event(imei, serial, 2, returned_at=_iso(returned_at), battery=57))

    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["rental_id"] == rental["id"] and data["rental_status"] == "COMPLETED"
    assert data["returned_on_time"] is True and data["amount_due"] == "0.00"
    stored = await _rental(session, rental["id"])
    assert (stored.return_slot_number, stored.battery_at_return, stored.late_fee_paisa) == (2, 57, 0)
    assert stored.ended_at == returned_at
    bank = (
        await session.execute(
            select(PowerBank)
            .where(PowerBank.serial_number == serial)
            .execution_options(populate_existing=True)
        )
    ).scalar_one()
    assert (bank.status, bank.current_slot_number, bank.battery_level) == ("AVAILABLE", 2, 57)
    assert await _balance(session, renter) == 0


async def test_late_return_charges_the_late_fee_once_for_duplicate_and_replayed_reports(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    imei, serial, renter, rental = await _rent(
        client, session, fake_ingest, balance=10_000, package_kwargs={"policy": _policy()}
    )
    # 40 minutes late: 10 free, 30 charged at 1.5 x 5000/60 paisa a minute = 3750 paisa.
    returned_at = datetime.fromisoformat(rental["due_at"]) + timedelta(minutes=40)
    event = returned_event(imei, serial, 2, returned_at=_iso(returned_at))

    first = await client.sync(event, event_id="return-mqtt-1")
    duplicate = await client.sync(event, event_id="return-mqtt-1")
    # The same signed request again under a new event id is a replay: recognised by its signature.
    replay = await client.sync(event, event_id="return-http-1")
    # The same return reported again in another body (e.g. over HTTP, without the SOC): no open rental left.
    http_report = {**event, "return_event": {**event["return_event"], "battery_level": None}}
    again = await client.sync(http_report, event_id="return-http-2")

    assert first.json()["data"]["rental_status"] == "COMPLETED"
    assert first.json()["data"]["returned_on_time"] is False
    assert first.json()["data"]["late_fee_paisa"] == 3750
    assert duplicate.json()["data"]["duplicate"] is True
    assert replay.status_code == 200 and replay.json()["data"]["duplicate"] is True
    assert again.status_code == 200 and again.json()["data"]["rehomed"] is True
    assert await _ledger(session, renter) == [
        ("ADJUSTMENT", 10_000),
        ("RENTAL_CHARGE", -5000),
        ("LATE_FEE", -3750),
    ]
    assert await _balance(session, renter) == 1250
    stored = await _rental(session, rental["id"])
    assert (stored.late_fee_paisa, stored.charged_paisa, stored.amount_due_paisa) == (3750, 8750, 0)


async def test_an_uncollectable_late_fee_becomes_dues_that_block_the_next_rental_until_paid(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    imei, serial, renter, rental = await _rent(
        client, session, fake_ingest, balance=6000, package_kwargs={"policy": _policy()}
    )
    returned_at = datetime.fromisoformat(rental["due_at"]) + timedelta(minutes=40)
    response = await client.sync(returned_event(imei, serial, 2, returned_at=_iso(returned_at)))
    assert response.json()["data"]["amount_due"] == "27.50"  # 3750 owed, 1000 in the wallet

    station_id = await session.scalar(select(Station.id).where(Station.imei == imei))
    blocked = await client.start(renter, station_id=station_id, package_id=await add_package(session))
    assert (blocked.status_code, blocked.json()["error"]) == (402, "UNPAID_DUES")
    assert blocked.json()["details"]["amount_due_paisa"] == 2750

    wallet = await client.http.get("/api/wallet", headers=client.renter_headers(renter))
    assert wallet.json()["data"] == {"balance_paisa": 0, "currency": "NPR", "amount_due_paisa": 2750}
    from chargeghar_core.payments.models import LedgerKind
    from chargeghar_core.payments.wallet import WalletService

    await WalletService(session).credit(renter, 2000, LedgerKind.ADJUSTMENT, f"test-topup:{renter}")
    await session.commit()
    paid = await client.http.post("/api/rentals/dues/pay", headers=client.renter_headers(renter))
    assert paid.json()["data"] == {"paid_paisa": 2000, "still_due_paisa": 750}
    stored = await _rental(session, rental["id"])
    assert (stored.amount_due_paisa, stored.charged_paisa) == (750, 5000 + 1000 + 2000)


async def test_postpaid_return_charges_the_minutes_used(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    imei, serial, renter, rental = await _rent(
        client,
        session,
        fake_ingest,
        balance=4000,
        package_kwargs={"payment_model": "POSTPAID", "price_paisa": 6000, "duration_minutes": 120},
    )
    assert rental["charged_paisa"] == 0
    # 30 min 10 s = 31 started minutes of 120 for Rs 60: ceil(6000 * 31 / 120) = 1550 paisa.
    returned_at = datetime.fromisoformat(rental["started_at"]) + timedelta(minutes=30, seconds=10)
    response = await client.sync(returned_event(imei, serial, 2, returned_at=_iso(returned_at)))
    assert response.json()["data"]["amount_due"] == "0.00"
    assert await _ledger(session, renter) == [("ADJUSTMENT", 4000), ("RENTAL_CHARGE", -1550)]
    receipt = await client.http.get(
        f"/api/rentals/{rental['id']}/receipt", headers=client.renter_headers(renter)
    )
    assert receipt.json()["data"]["total_paisa"] == 1550


async def test_a_quick_return_to_the_same_slot_is_a_free_cancellation(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    imei, serial, renter, rental = await _rent(client, session, fake_ingest, balance=5000)
    returned_at = datetime.fromisoformat(rental["started_at"]) + timedelta(minutes=2)
    response = await client.sync(returned_event(imei, serial, 1, returned_at=_iso(returned_at)))
    assert response.json()["data"]["rental_status"] == "CANCELLED"
    assert await _balance(session, renter) == 5000


async def test_a_snapshot_showing_the_bank_closes_the_rental_once(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    imei, serial, renter, rental = await _rent(client, session, fake_ingest, balance=5000)
    started = datetime.fromisoformat(rental["started_at"])

    older = await client.sync(
        full_event(imei, {1: None, 2: serial}, observed_at=_iso(started - timedelta(minutes=1)))
    )
    assert older.json()["data"]["returns_reconciled"] == 0
    assert (await _rental(session, rental["id"])).status == "ACTIVE"

    seen_at = started + timedelta(minutes=50)
    first = await client.sync(full_event(imei, {1: None, 2: serial}, observed_at=_iso(seen_at)))
    again = await client.sync(
        full_event(imei, {1: None, 2: serial}, observed_at=_iso(seen_at + timedelta(minutes=20)))
    )

    assert first.json()["data"]["returns_reconciled"] == 1
    assert again.json()["data"]["returns_reconciled"] == 0
    stored = await _rental(session, rental["id"])
    assert (stored.status, stored.ended_at, stored.end_reason) == (
        "COMPLETED",
        seen_at,
        "snapshot_reconciled",
    )
    count = await session.scalar(
        select(func.count()).select_from(LedgerEntry).where(LedgerEntry.user_id == renter)
    )
    assert count == 2


async def test_a_return_while_the_eject_is_still_pending_completes_the_rental(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    serial = new_bank_serial()
    imei = await add_station(client, session, {1: serial, 2: None})
    fake_ingest.cabinet(imei, {1: serial, 2: None}, popup_mode="timeout", check_mode="offline")
    renter = await add_renter(session, balance_paisa=5000)
    package = await add_package(session)
    station_id = await session.scalar(select(Station.id).where(Station.imei == imei))
    response = await client.start(renter, station_id=station_id, package_id=package)
    assert response.status_code == 202
    await client.runtime.drain(10)
    rental = response.json()["data"]
    returned_at = datetime.fromisoformat(rental["popup_requested_at"]) + timedelta(minutes=20)

    answer = await client.sync(returned_event(imei, serial, 2, returned_at=_iso(returned_at)))

    assert answer.json()["data"]["rental_status"] == "COMPLETED"
    stored = await _rental(session, rental["id"])
    assert stored.started_at == datetime.fromisoformat(rental["popup_requested_at"])
    assert stored.refunded_paisa == 0


async def test_a_snapshot_showing_a_pending_rentals_bank_after_a_failed_eject_cancels_it(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    serial = new_bank_serial()
    imei = await add_station(client, session, {1: serial, 2: None})
    fake_ingest.cabinet(imei, {1: serial, 2: None}, popup_mode="failed", check_mode="offline")
    renter = await add_renter(session, balance_paisa=5000)
    station_id = await session.scalar(select(Station.id).where(Station.imei == imei))
    response = await client.start(renter, station_id=station_id, package_id=await add_package(session))
    assert response.status_code == 202, response.text
    await client.runtime.drain(10)
    rental = response.json()["data"]
    requested = datetime.fromisoformat(rental["popup_requested_at"])

    # An upload observed before the eject was asked for decides nothing; one observed after it does.
    stale = await client.sync(
        full_event(imei, {1: serial, 2: None}, observed_at=_iso(requested - timedelta(seconds=5)))
    )
    assert stale.status_code == 200
    assert (await _rental(session, rental["id"])).status == "PENDING_POPUP"
    fresh = await client.sync(
        full_event(imei, {1: serial, 2: None}, observed_at=_iso(requested + timedelta(seconds=30)))
    )
    assert fresh.status_code == 200

    stored = await _rental(session, rental["id"])
    assert (stored.status, stored.refunded_paisa) == ("CANCELLED", 5000)
    assert await _balance(session, renter) == 5000


async def test_a_return_stamped_slightly_before_the_start_still_ends_the_rental_but_an_old_one_does_not(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    imei, serial, _renter, rental = await _rent(client, session, fake_ingest, balance=5000)
    started = datetime.fromisoformat(rental["started_at"])

    old = await client.sync(returned_event(imei, serial, 2, returned_at=_iso(started - timedelta(hours=1))))
    assert old.json()["data"]["rehomed"] is True
    assert (await _rental(session, rental["id"])).status == "ACTIVE"

    skewed = await client.sync(
        returned_event(imei, serial, 2, returned_at=_iso(started - timedelta(seconds=30)))
    )
    assert skewed.json()["data"]["rental_status"] == "COMPLETED"
    assert (await _rental(session, rental["id"])).ended_at == started
