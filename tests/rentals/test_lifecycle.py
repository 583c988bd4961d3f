"""Extend, cancel, discounts, the overdue job, the lost-bank policy, pending re-checks, force-complete."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from chargeghar_core.kit.db import utcnow
from chargeghar_core.powerbanks.models import PowerBank
from chargeghar_core.pricing.models import LateFeePolicy, StationDiscount
from chargeghar_core.rentals.jobs import RentalJobs
from chargeghar_core.rentals.models import Rental, RentalAuditEntry
from chargeghar_core.stations.models import Station
from rentals_support import (
    FakeIngest,
    RentalsClient,
    add_package,
    add_renter,
    add_station,
    new_bank_serial,
    returned_event,
)
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession


async def _rental(session: AsyncSession, rental_id: str) -> Rental:
    rows = await session.execute(
        select(Rental).where(Rental.id == uuid.UUID(rental_id)).execution_options(populate_existing=True)
    )
    return rows.scalar_one()


async def _start(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest, *, balance: int, **package: Any
) -> tuple[str, str, uuid.UUID, uuid.UUID, dict[str, Any]]:
    serial = new_bank_serial()
    imei = await add_station(client, session, {1: serial, 2: None})
    fake_ingest.cabinet(imei, {1: serial, 2: None}, **package.pop("cabinet", {}))
    station_id = await session.scalar(select(Station.id).where(Station.imei == imei))
    assert station_id is not None
    if "discount_bp" in package:
        session.add(
            StationDiscount(id=uuid.uuid4(), station_id=station_id, percent_bp=package.pop("discount_bp"))
        )
        await session.commit()
    renter = await add_renter(session, balance_paisa=balance)
    response = await client.start(
        renter, station_id=station_id, package_id=await add_package(session, **package)
    )
    assert response.status_code in (201, 202), response.text
    return imei, serial, renter, station_id, response.json()["data"]


async def test_extend_charges_each_extension_up_to_the_limit(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    _imei, _serial, renter, _station, rental = await _start(client, session, fake_ingest, balance=20_000)
    headers = client.renter_headers(renter)
    due = datetime.fromisoformat(rental["due_at"])
    for number in (1, 2):
        extended = await client.http.post(f"/api/rentals/{rental['id']}/extend", headers=headers)
        assert extended.status_code == 200, extended.text
        assert extended.json()["data"]["extension_count"] == number
        assert datetime.fromisoformat(extended.json()["data"]["due_at"]) == due + timedelta(
            minutes=60 * number
        )
    third = await client.http.post(f"/api/rentals/{rental['id']}/extend", headers=headers)
    assert (third.status_code, third.json()["error"]) == (409, "EXTENSION_LIMIT_REACHED")
    receipt = await client.http.get(f"/api/rentals/{rental['id']}/receipt", headers=headers)
    assert [line["amount_paisa"] for line in receipt.json()["data"]["lines"]] == [5000, 5000, 5000]
    wallet = await client.http.get("/api/wallet", headers=headers)
    assert wallet.json()["data"]["balance_paisa"] == 5000
    other = await client.http.post(
        f"/api/rentals/{rental['id']}/extend", headers=client.renter_headers(uuid.uuid4())
    )
    assert other.status_code == 404


async def test_a_station_discount_lowers_the_price(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    *_, rental = await _start(client, session, fake_ingest, balance=5000, discount_bp=1000)
    assert (rental["charged_paisa"], rental["discount_bp"]) == (4500, 1000)


async def test_cancel_is_free_only_with_the_bank_back_in_its_own_slot(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    _imei, serial, renter, station_id, rental = await _start(client, session, fake_ingest, balance=5000)
    headers = client.renter_headers(renter)
    refused = await client.http.post(f"/api/rentals/{rental['id']}/cancel", headers=headers)
    assert (refused.status_code, refused.json()["error"]) == (409, "BANK_NOT_IN_SLOT")

    # A slot event put it back where it came from (slot events do not end rentals by themselves).
    await session.execute(
        update(PowerBank)
        .where(PowerBank.serial_number == serial)
        .values(current_station_id=station_id, current_slot_number=1)
    )
    await session.commit()
    cancelled = await client.http.post(f"/api/rentals/{rental['id']}/cancel", headers=headers)
    assert cancelled.status_code == 200, cancelled.text
    assert (cancelled.json()["data"]["status"], cancelled.json()["data"]["refunded_paisa"]) == (
        "CANCELLED",
        5000,
    )
    again = await client.http.post(f"/api/rentals/{rental['id']}/cancel", headers=headers)
    assert again.status_code == 409
    wallet = await client.http.get("/api/wallet", headers=headers)
    assert wallet.json()["data"]["balance_paisa"] == 5000


async def test_overdue_job_marks_overdue_and_the_late_fee_is_charged_once_at_return(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    policy = LateFeePolicy(id=uuid.uuid4(), name="1x", rate_multiplier_bp=10_000, grace_minutes=0)
    imei, serial, renter, _station, rental = await _start(
        client, session, fake_ingest, balance=20_000, policy=policy
    )
    past_due = utcnow() - timedelta(minutes=30)
    await session.execute(update(Rental).where(Rental.id == uuid.UUID(rental["id"])).values(due_at=past_due))
    await session.commit()
    jobs = RentalJobs(client.runtime)

    first = await jobs.run_once()
    second = await jobs.run_once()

    assert (first.marked_overdue, second.marked_overdue) == (1, 0)
    shown = await client.http.get(f"/api/rentals/{rental['id']}", headers=client.renter_headers(renter))
    assert shown.json()["data"]["status"] == "OVERDUE"
    assert shown.json()["data"]["accrued_late_fee_paisa"] >= 2500  # 30+ minutes at 83 1/3 paisa
    assert shown.json()["data"]["late_fee_paisa"] == 0, "computed live, not charged yet"

    returned_at = past_due + timedelta(minutes=30)
    event = returned_event(imei, serial, 2, returned_at=returned_at.isoformat())
    answer = await client.sync(event)
    assert answer.json()["data"]["late_fee_paisa"] == 2500
    await client.sync(event)
    assert (await _rental(session, rental["id"])).late_fee_paisa == 2500
    wallet = await client.http.get("/api/wallet", headers=client.renter_headers(renter))
    assert wallet.json()["data"]["balance_paisa"] == 20_000 - 5000 - 2500


async def test_lost_bank_policy_closes_a_long_overdue_rental_once_with_an_audit_record(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    *_, renter, _station, rental = await _start(client, session, fake_ingest, balance=5000)
    await session.execute(
        update(Rental)
        .where(Rental.id == uuid.UUID(rental["id"]))
        .values(status="OVERDUE", due_at=utcnow() - timedelta(hours=73))
    )
    await session.commit()
    jobs = RentalJobs(client.runtime)
    assert (await jobs.run_once()).marked_lost == 1
    assert (await jobs.run_once()).marked_lost == 0
    stored = await _rental(session, rental["id"])
    assert stored.status == "LOST" and stored.end_reason == "lost"
    # The wallet was empty after the prepaid charge: the lost-bank fee and the late fee are owed.
    assert stored.amount_due_paisa == client.runtime.settings.lost_bank_fee_paisa + stored.late_fee_paisa
    audit = (
        await session.execute(select(RentalAuditEntry).where(RentalAuditEntry.rental_id == stored.id))
    ).scalars()
    assert [entry.action for entry in audit] == ["mark_lost"]
    blocked = await client.http.get("/api/wallet", headers=client.renter_headers(renter))
    assert blocked.json()["data"]["amount_due_paisa"] == stored.amount_due_paisa


async def test_the_job_rechecks_a_rental_left_pending_and_cancels_it_when_the_bank_is_there(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    imei, _serial, renter, _station, rental = await _start(
        client, session, fake_ingest, balance=5000, cabinet={"popup_mode": "timeout", "check_mode": "timeout"}
    )
    assert rental["status"] == "PENDING_POPUP"
    await client.runtime.drain(10)
    fake_ingest.cabinets[imei].check_mode = "ok"
    await session.execute(
        update(Rental)
        .where(Rental.id == uuid.UUID(rental["id"]))
        .values(popup_requested_at=utcnow() - timedelta(minutes=5))
    )
    await session.commit()

    report = await RentalJobs(client.runtime).run_once()

    assert report.pending_rechecked == 1
    stored = await _rental(session, rental["id"])
    assert (stored.status, stored.refunded_paisa) == ("CANCELLED", 5000)
    assert [c["cmd"] for c in fake_ingest.commands_for(imei)] == ["popup_sn", "check", "check"]
    wallet = await client.http.get("/api/wallet", headers=client.renter_headers(renter))
    assert wallet.json()["data"]["balance_paisa"] == 5000


async def test_admin_force_complete_needs_a_reason_and_is_audited(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    *_, rental = await _start(client, session, fake_ingest, balance=5000)
    url = f"/api/admin/rentals/{rental['id']}/force-complete"
    no_reason = await client.http.post(url, json={}, headers=client.staff_headers())
    assert no_reason.status_code == 400
    renter_try = await client.http.post(
        url, json={"reason": "test"}, headers=client.renter_headers(uuid.uuid4())
    )
    assert renter_try.status_code == 403

    done = await client.http.post(
        url, json={"reason": "bank found broken in the street"}, headers=client.staff_headers()
    )
    assert done.status_code == 200, done.text
    assert (done.json()["data"]["status"], done.json()["data"]["end_reason"]) == (
        "COMPLETED",
        "force_completed",
    )
    again = await client.http.post(url, json={"reason": "again"}, headers=client.staff_headers())
    assert (again.status_code, again.json()["error"]) == (409, "RENTAL_STATE_CONFLICT")
    audit = (
        await session.execute(
            select(RentalAuditEntry).where(RentalAuditEntry.rental_id == uuid.UUID(rental["id"]))
        )
    ).scalar_one()
    assert (audit.action, audit.reason) == ("force_complete", "bank found broken in the street")
    listed = await client.http.get("/api/admin/rentals?status=COMPLETED", headers=client.staff_headers())
    assert rental["id"] in [r["id"] for r in listed.json()["data"]["items"]]


async def test_renter_actions_refused_in_the_wrong_state(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    _imei, _serial, renter, _station, rental = await _start(
        client, session, fake_ingest, balance=5000, cabinet={"popup_mode": "timeout", "check_mode": "timeout"}
    )
    await client.runtime.drain(10)
    headers = client.renter_headers(renter)
    pending_cancel = await client.http.post(f"/api/rentals/{rental['id']}/cancel", headers=headers)
    assert (pending_cancel.status_code, pending_cancel.json()["error"]) == (409, "RENTAL_PENDING")
    pending_extend = await client.http.post(f"/api/rentals/{rental['id']}/extend", headers=headers)
    assert (pending_extend.status_code, pending_extend.json()["error"]) == (409, "RENTAL_STATE_CONFLICT")
    nothing_due = await client.http.post("/api/rentals/dues/pay", headers=headers)
    assert nothing_due.json()["data"] == {"paid_paisa": 0, "still_due_paisa": 0}
    history = await client.http.get("/api/rentals?page=1&page_size=1", headers=headers)
    assert (history.json()["data"]["total"], history.json()["data"]["items"][0]["id"]) == (1, rental["id"])
    assert (await client.http.get(f"/api/rentals/{uuid.uuid4()}", headers=headers)).status_code == 404
