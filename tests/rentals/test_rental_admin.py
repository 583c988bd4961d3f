"""Staff corrections of completed rentals: override the end time or the total, waive a due, refund to the
wallet — money moves only through ledger rows, each correction is audited with the change, and the renter
sees the result with the rental and in the wallet."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from chargeghar_core.audit.models import StaffAuditEntry
from chargeghar_core.auth.models import Role
from chargeghar_core.payments.models import LedgerEntry, Wallet
from chargeghar_core.pricing.models import LateFeePolicy
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
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _policy() -> LateFeePolicy:
    # 1.5x the per-minute rate after 10 free minutes: 40 minutes late on a Rs 50/hour package = 3750 paisa.
    return LateFeePolicy(
        id=uuid.uuid4(),
        name="standard",
        rate_multiplier_bp=15_000,
        flat_per_hour_paisa=0,
        grace_minutes=10,
        daily_cap_paisa=50_000,
        is_default=False,
    )


async def _fresh(session: AsyncSession, model: Any, key: Any) -> Any:
    rows = await session.execute(select(model).where(key).execution_options(populate_existing=True))
    return rows.scalar_one()


async def _balance(session: AsyncSession, user_id: uuid.UUID) -> int:
    wallet = await _fresh(session, Wallet, Wallet.user_id == user_id)
    return int(wallet.balance_paisa)


async def _ledger_sum(session: AsyncSession, user_id: uuid.UUID) -> int:
    total = await session.scalar(
        select(func.sum(LedgerEntry.amount_paisa)).where(LedgerEntry.user_id == user_id)
    )
    return int(total or 0)


async def _late_return(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest, *, balance: int
) -> tuple[uuid.UUID, dict[str, Any], datetime]:
    """A Rs 50 prepaid rental returned 40 minutes late (late fee 3750): returns (renter, rental, due_at)."""
    serial = new_bank_serial()
    banks: dict[int, str | None] = {1: serial, 2: None}
    imei = await add_station(client, session, banks)
    fake_ingest.cabinet(imei, banks)
    renter = await add_renter(session, balance_paisa=balance)
    package = await add_package(session, policy=_policy())
    station_id = await session.scalar(select(Station.id).where(Station.imei == imei))
    started = await client.start(renter, station_id=station_id, package_id=package)
    assert started.status_code == 201, started.text
    rental = started.json()["data"]
    # Move the rental three hours into the past, so that its late return and any corrected end lie before now.
    shift = timedelta(hours=3)
    stored = await _fresh(session, Rental, Rental.id == uuid.UUID(rental["id"]))
    stored.started_at -= shift
    stored.popup_requested_at -= shift
    stored.due_at -= shift
    await session.commit()
    rental["started_at"] = _iso(stored.started_at)
    due_at = stored.due_at
    returned = await client.sync(
        returned_event(imei, serial, 2, returned_at=_iso(due_at + timedelta(minutes=40)))
    )
    assert returned.json()["data"]["rental_status"] == "COMPLETED", returned.text
    return renter, rental, due_at


async def _audits(session: AsyncSession, rental_id: str) -> tuple[list[str], list[str]]:
    rental_rows = await session.execute(
        select(RentalAuditEntry.action).where(RentalAuditEntry.rental_id == uuid.UUID(rental_id))
    )
    staff_rows = await session.execute(
        select(StaffAuditEntry.action).where(StaffAuditEntry.target_id == rental_id)
    )
    return sorted(r[0] for r in rental_rows), sorted(r[0] for r in staff_rows)


async def test_override_of_the_end_time_recomputes_the_late_fee_and_refunds_to_the_wallet(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    renter, rental, due_at = await _late_return(client, session, fake_ingest, balance=10_000)
    assert await _balance(session, renter) == 10_000 - 5000 - 3750
    admin = client.staff_headers(Role.ADMIN)

    # The bank was really back on time: the late fee goes, refunded to the wallet.
    response = await client.http.post(
        f"/api/admin/rentals/{rental['id']}/override",
        json={
            "ended_at": _iso(due_at - timedelta(minutes=5)),
            "reason": "cabinet was offline; bank back in time",
        },
        headers=admin,
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["refunded_paisa"] == 3750 and data["amount_due_paisa"] == 0
    stored = await _fresh(session, Rental, Rental.id == uuid.UUID(rental["id"]))
    assert (stored.late_fee_paisa, stored.returned_on_time) == (0, True)
    assert stored.ended_at == due_at - timedelta(minutes=5)
    assert await _balance(session, renter) == 10_000 - 5000 == await _ledger_sum(session, renter)
    assert await _audits(session, rental["id"]) == (["override_end"], ["rental.override_end"])

    # The renter sees it with the rental.
    mine = await client.http.get(f"/api/rentals/{rental['id']}", headers=client.renter_headers(renter))
    assert mine.status_code == 200 and mine.json()["data"]["refunded_paisa"] == 3750

    # An end before the start or in the future is refused.
    for bad in (
        datetime.fromisoformat(rental["started_at"]) - timedelta(hours=1),
        datetime.now().astimezone() + timedelta(hours=1),
    ):
        refused = await client.http.post(
            f"/api/admin/rentals/{rental['id']}/override",
            json={"ended_at": _iso(bad), "reason": "typo"},
            headers=admin,
        )
        assert refused.status_code == 400 and refused.json()["error"] == "AMOUNT_OUT_OF_RANGE"


async def test_total_override_cancels_dues_first_then_refunds_and_a_higher_total_becomes_dues(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    # 6000 in the wallet: 5000 prepaid, 1000 of the 3750 late fee collected, 2750 due.
    renter, rental, _ = await _late_return(client, session, fake_ingest, balance=6000)
    stored = await _fresh(session, Rental, Rental.id == uuid.UUID(rental["id"]))
    assert (stored.charged_paisa, stored.amount_due_paisa) == (6000, 2750)
    admin = client.staff_headers(Role.ADMIN)
    url = f"/api/admin/rentals/{rental['id']}/override"

    lower = await client.http.post(
        url, json={"total_paisa": 5500, "reason": "half the late fee"}, headers=admin
    )
    assert lower.status_code == 200, lower.text
    # 8750 owed → 5500: the 2750 due goes first, then 500 back to the wallet.
    assert (lower.json()["data"]["amount_due_paisa"], lower.json()["data"]["refunded_paisa"]) == (0, 500)
    again = await client.http.post(url, json={"total_paisa": 5500, "reason": "sent twice"}, headers=admin)
    assert again.json()["data"]["refunded_paisa"] == 500  # absolute: a repeat changes nothing
    higher = await client.http.post(url, json={"total_paisa": 7000, "reason": "damage fee"}, headers=admin)
    assert higher.json()["data"]["amount_due_paisa"] == 1500
    assert await _balance(session, renter) == 500 == await _ledger_sum(session, renter)

    both = await client.http.post(
        url, json={"total_paisa": 1, "ended_at": "2026-01-01T00:00:00Z", "reason": "x y"}, headers=admin
    )
    assert both.status_code == 400


async def test_waive_and_wallet_refund_are_bounded_audited_and_once(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    renter, rental, _ = await _late_return(client, session, fake_ingest, balance=6000)
    admin = client.staff_headers(Role.ADMIN)
    base = f"/api/admin/rentals/{rental['id']}"

    too_much = await client.http.post(
        f"{base}/waive-due", json={"amount_paisa": 9999, "reason": "x y z"}, headers=admin
    )
    assert too_much.status_code == 400
    part = await client.http.post(
        f"{base}/waive-due", json={"amount_paisa": 750, "reason": "goodwill"}, headers=admin
    )
    assert part.json()["data"]["amount_due_paisa"] == 2000
    rest = await client.http.post(f"{base}/waive-due", json={"reason": "goodwill, the rest"}, headers=admin)
    assert rest.json()["data"]["amount_due_paisa"] == 0
    nothing = await client.http.post(f"{base}/waive-due", json={"reason": "again"}, headers=admin)
    assert nothing.status_code == 409 and nothing.json()["error"] == "NO_DUES"
    assert await _balance(session, renter) == 0  # a waiver moves no money

    over = await client.http.post(
        f"{base}/refund", json={"amount_paisa": 6001, "reason": "x y z"}, headers=admin
    )
    assert over.status_code == 400
    refund = await client.http.post(
        f"{base}/refund", json={"amount_paisa": 2500, "reason": "empty bank"}, headers=admin
    )
    assert refund.status_code == 200 and refund.json()["data"]["refunded_paisa"] == 2500
    twice = await client.http.post(
        f"{base}/refund", json={"amount_paisa": 100, "reason": "again"}, headers=admin
    )
    assert twice.status_code == 409 and twice.json()["error"] == "RENTAL_ALREADY_REFUNDED"
    assert await _balance(session, renter) == 2500 == await _ledger_sum(session, renter)
    refunds = await session.execute(
        select(LedgerEntry.kind, LedgerEntry.amount_paisa).where(
            LedgerEntry.user_id == renter, LedgerEntry.kind == "REFUND"
        )
    )
    assert list(refunds) == [("REFUND", 2500)]
    assert await _audits(session, rental["id"]) == (
        ["refund_to_wallet", "waive_due", "waive_due"],
        ["rental.refund_to_wallet", "rental.waive_due", "rental.waive_due"],
    )


async def test_corrections_need_an_acting_staff_role_and_a_completed_rental(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    renter, rental, _ = await _late_return(client, session, fake_ingest, balance=10_000)
    base = f"/api/admin/rentals/{rental['id']}"
    body = {"reason": "not allowed"}
    for headers in (client.staff_headers(Role.VIEWER), client.renter_headers(renter)):
        refused = await client.http.post(f"{base}/refund", json=body, headers=headers)
        assert refused.status_code == 403, refused.text
    missing = await client.http.post(
        f"/api/admin/rentals/{uuid.uuid4()}/refund", json=body, headers=client.staff_headers()
    )
    assert missing.status_code == 404
    assert await _audits(session, rental["id"]) == ([], [])
