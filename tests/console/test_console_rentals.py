"""Console rentals: the list with its filters, the timeline of one rental, and the corrections (override,
waive, refund) — each through the API's administration class, audited with the logged-in account, refused
for a viewer and without the CSRF token.

The builders at the top (a renter with a wallet, a completed rental with its ledger rows) are shared by the
other console money/renter tests, which import them from here.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from chargeghar_core.audit.models import StaffAuditEntry
from chargeghar_core.auth.models import Role, User
from chargeghar_core.payments.models import LedgerEntry, LedgerKind
from chargeghar_core.payments.wallet import WalletService
from chargeghar_core.powerbanks.models import PowerBank
from chargeghar_core.pricing.models import RentalPackage
from chargeghar_core.rentals.models import Rental, RentalAuditEntry, RentalStatus
from chargeghar_core.renters.models import RenterProfile
from chargeghar_core.stations.models import Station
from console_support import ConsoleUser, add_station, new_bank_serial
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

Login = Callable[..., Awaitable[ConsoleUser]]

# 1.5x the per-minute rate after 10 free minutes: 40 minutes late on a Rs 50/hour package = Rs 37.50.
LATE_TERMS = {
    "rate_multiplier_bp": 15_000,
    "flat_per_hour_paisa": 0,
    "grace_minutes": 10,
    "daily_cap_paisa": 50_000,
}
PRICE = 5000
LATE_FEE = 3750


async def add_renter(
    session: AsyncSession, *, balance_paisa: int = 20_000, name: str = "Test Renter"
) -> User:
    """A renter account with a wallet topped up by ``balance_paisa`` (a TOPUP ledger row)."""
    user = User(
        id=uuid.uuid4(),
        email=f"renter-{uuid.uuid4().hex[:10]}@console.test",
        full_name=name,
        password_hash="not-used",
        role=Role.RENTER.value,
        is_active=True,
        token_generation=0,
    )
    session.add(user)
    await session.flush()
    session.add(RenterProfile(user_id=user.id, phone=None, display_name=name, status="ACTIVE"))
    await session.flush()
    if balance_paisa:
        await WalletService(session).credit(
            user.id, balance_paisa, LedgerKind.TOPUP, f"test-topup:{user.id}", note="test top-up"
        )
    await session.commit()
    return user


async def completed_rental(
    session: AsyncSession,
    *,
    renter: User | None = None,
    station: Station | None = None,
    late_minutes: int = 40,
    due_paisa: int = 0,
    ended_ago: timedelta = timedelta(hours=1),
) -> Rental:
    """A prepaid Rs 50 / 60 min rental returned ``late_minutes`` late, its package and late fee taken from
    the wallet as the rental flow does (RENTAL_CHARGE and LATE_FEE ledger rows), ``due_paisa`` still owed."""
    renter = renter or await add_renter(session)
    serial = new_bank_serial()
    station = station or await add_station(session, {1: serial, 2: None})
    bank = await session.scalar(select(PowerBank).where(PowerBank.current_station_id == station.id).limit(1))
    assert bank is not None
    package = RentalPackage(
        id=uuid.uuid4(),
        name="60 min",
        description="",
        duration_minutes=60,
        price_paisa=PRICE,
        payment_model="PREPAID",
        is_active=True,
        late_fee_policy_id=None,
    )
    session.add(package)
    await session.flush()
    ended = datetime.now(UTC) - ended_ago
    due = ended - timedelta(minutes=late_minutes)
    started = due - timedelta(minutes=60)
    late_fee = LATE_FEE if late_minutes == 40 else 0
    rental = Rental(
        id=uuid.uuid4(),
        code=uuid.uuid4().hex[:10].upper(),
        user_id=renter.id,
        package_id=package.id,
        power_bank_id=bank.id,
        power_bank_serial=bank.serial_number,
        station_id=station.id,
        station_imei=station.imei,
        slot_number=bank.current_slot_number or 1,
        status=RentalStatus.COMPLETED.value,
        payment_model="PREPAID",
        package_price_paisa=PRICE,
        duration_minutes=60,
        discount_bp=0,
        late_fee_terms=dict(LATE_TERMS),
        popup_command_id=f"cmd-{uuid.uuid4().hex[:12]}",
        popup_requested_at=started - timedelta(seconds=3),
        popup_outcome="ok",
        started_at=started,
        due_at=due,
        ended_at=ended,
        return_station_id=station.id,
        return_slot_number=2,
        returned_on_time=late_minutes <= 0,
        battery_at_start=95,
        battery_at_return=60,
        usage_fee_paisa=PRICE,
        late_fee_paisa=late_fee,
        charged_paisa=PRICE + late_fee,
        refunded_paisa=0,
        amount_due_paisa=due_paisa,
        created_at=started - timedelta(seconds=3),
    )
    session.add(rental)
    await session.flush()
    wallet = WalletService(session)
    await wallet.debit(
        renter.id, PRICE, LedgerKind.RENTAL_CHARGE, f"rental:{rental.id}:charge", rental_id=rental.id
    )
    if late_fee:
        await wallet.debit(
            renter.id, late_fee, LedgerKind.LATE_FEE, f"rental:{rental.id}:late", rental_id=rental.id
        )
    await session.commit()
    return rental


async def fresh_rental(session: AsyncSession, rental_id: uuid.UUID) -> Rental:
    rows = await session.execute(
        select(Rental).where(Rental.id == rental_id).execution_options(populate_existing=True)
    )
    return rows.scalar_one()


async def staff_audit(session: AsyncSession, actor: User, action: str) -> list[StaffAuditEntry]:
    rows = await session.scalars(
        select(StaffAuditEntry).where(StaffAuditEntry.actor_id == actor.id, StaffAuditEntry.action == action)
    )
    return list(rows)


def row_ids(html: str) -> set[str]:
    return set(re.findall(r'data-testid="rental-row" data-rental-id="([^"]+)"', html))


# ------------------------------------------------------------------------------------------ tests


async def test_the_list_filters_by_status_station_renter_and_day(
    console_login: Login, session: AsyncSession
) -> None:
    viewer = await console_login(Role.VIEWER)
    first = await completed_rental(session)
    other_renter = await add_renter(session)
    second = await completed_rental(session, renter=other_renter, ended_ago=timedelta(days=3))
    station = await session.get(Station, first.station_id)
    assert station is not None

    page = await viewer.get("/console/rentals")
    assert page.status_code == 200, page.text
    assert 'data-testid="rentals-table"' in page.text and 'data-testid="pager"' in page.text
    assert {str(first.id), str(second.id)} <= row_ids(page.text)

    by_station = await viewer.get("/console/rentals", params={"station": station.imei, "status": "COMPLETED"})
    assert row_ids(by_station.text) == {str(first.id)}
    by_renter = await viewer.get("/console/rentals", params={"renter": other_renter.email[:14]})
    assert row_ids(by_renter.text) == {str(second.id)}
    by_id = await viewer.get("/console/rentals", params={"renter": str(other_renter.id)})
    assert row_ids(by_id.text) == {str(second.id)}
    assert (
        row_ids(
            (
                await viewer.get(
                    "/console/rentals", params={"status": "ACTIVE", "renter": str(other_renter.id)}
                )
            ).text
        )
        == set()
    )
    # Day filters (Nepal days): the older rental was asked for four days ago, the newer today.
    today = datetime.now(UTC) + timedelta(hours=5, minutes=45)
    recent = await viewer.get(
        "/console/rentals",
        params={"from": (today - timedelta(days=1)).date().isoformat(), "to": "", "station": ""},
    )
    assert str(first.id) in row_ids(recent.text) and str(second.id) not in row_ids(recent.text)
    older = await viewer.get(
        "/console/rentals", params={"to": (today - timedelta(days=2)).date().isoformat()}
    )
    assert str(second.id) in row_ids(older.text) and str(first.id) not in row_ids(older.text)

    bad = await viewer.get("/console/rentals", params={"status": "NOPE"})
    assert bad.status_code == 400 and "status" in bad.text
    assert (await viewer.get("/console/rentals", params={"from": "2026-13-01"})).status_code == 400


async def test_the_list_pages(console_login: Login, session: AsyncSession, console_app: FastAPI) -> None:
    admin = await console_login(Role.ADMIN)
    renter = await add_renter(session, balance_paisa=500_000)
    made = [await completed_rental(session, renter=renter) for _ in range(3)]
    console_app.state.settings.console.page_size = 2
    first = await admin.get("/console/rentals", params={"renter": str(renter.id)})
    second = await admin.get("/console/rentals", params={"renter": str(renter.id), "page": 2})
    assert len(row_ids(first.text)) == 2 and len(row_ids(second.text)) == 1
    assert row_ids(first.text) | row_ids(second.text) == {str(r.id) for r in made}
    assert "1–2 of 3" in first.text and 'rel="next"' in first.text


async def test_the_detail_shows_the_timeline_and_the_money(
    console_login: Login, session: AsyncSession
) -> None:
    viewer = await console_login(Role.VIEWER)
    rental = await completed_rental(session)
    page = await viewer.get(f"/console/rentals/{rental.id}")
    assert page.status_code == 200, page.text
    assert 'data-testid="rental-status"' in page.text and "COMPLETED" in page.text
    kinds = re.findall(r'data-testid="timeline-item" data-kind="([a-z]+)"', page.text)
    assert kinds == ["reserve", "eject", "return"]
    assert rental.power_bank_serial in page.text and "Returned late" in page.text
    assert "Rs 87.50" in page.text  # charged: package and late fee
    # A viewer sees the rental, never an action.
    assert "data-action" not in page.text
    missing = await viewer.get(f"/console/rentals/{uuid.uuid4()}")
    assert missing.status_code == 404


async def test_refund_goes_to_the_wallet_once_and_is_audited(
    console_login: Login, session: AsyncSession
) -> None:
    admin = await console_login(Role.ADMIN)
    rental = await completed_rental(session)
    page = await admin.get(f"/console/rentals/{rental.id}")
    assert 'data-testid="refund-form"' in page.text and 'data-action="refund"' in page.text

    done = await admin.post(
        f"/console/rentals/{rental.id}/refund", {"reason": "bank was empty", "amount": "10.50"}
    )
    assert done.status_code == 303 and done.headers["location"] == f"/console/rentals/{rental.id}"
    after = await admin.get(done.headers["location"])
    assert (
        'data-testid="flash" class="flash flash-ok"' in after.text and "Refunded to the wallet" in after.text
    )
    assert (await fresh_rental(session, rental.id)).refunded_paisa == 1050
    refund_rows = await session.scalars(
        select(LedgerEntry).where(
            LedgerEntry.rental_id == rental.id, LedgerEntry.kind == LedgerKind.REFUND.value
        )
    )
    assert [row.amount_paisa for row in refund_rows] == [1050]
    audit = await staff_audit(session, admin.user, "rental.refund_to_wallet")
    assert (
        len(audit) == 1
        and audit[0].target_id == str(rental.id)
        and audit[0].details["reason"] == "bank was empty"
    )
    rental_audit = await session.scalars(
        select(RentalAuditEntry).where(RentalAuditEntry.rental_id == rental.id)
    )
    assert [(row.action, row.actor_user_id) for row in rental_audit] == [("refund_to_wallet", admin.user.id)]
    timeline = await admin.get(f"/console/rentals/{rental.id}")
    assert 'data-kind="correction"' in timeline.text and "bank was empty" in timeline.text

    # Paid once per rental: a second refund is refused with a message, and nothing moves.
    again = await admin.post(f"/console/rentals/{rental.id}/refund", {"reason": "once more"})
    refused = await admin.get(again.headers["location"])
    assert "flash-error" in refused.text and "refunded to the wallet by staff before" in refused.text
    assert (await fresh_rental(session, rental.id)).refunded_paisa == 1050
    # Bad input never reaches the service.
    for form, message in (
        ({"reason": "x"}, "reason"),
        ({"reason": "valid one", "amount": "1.234"}, "two decimals"),
    ):
        bad = await admin.post(f"/console/rentals/{rental.id}/refund", form)
        assert message in (await admin.get(bad.headers["location"])).text
    assert len(await staff_audit(session, admin.user, "rental.refund_to_wallet")) == 1


async def test_override_end_recomputes_and_override_total_and_waive_change_the_dues(
    console_login: Login, session: AsyncSession
) -> None:
    staff = await console_login(Role.STAFF)
    rental = await completed_rental(session)
    assert rental.due_at is not None
    back_in_time = (rental.due_at - timedelta(minutes=5)).astimezone(UTC) + timedelta(hours=5, minutes=45)
    done = await staff.post(
        f"/console/rentals/{rental.id}/override",
        {"ended_at": back_in_time.strftime("%Y-%m-%dT%H:%M"), "total": "", "reason": "cabinet was offline"},
    )
    assert "End time corrected" in (await staff.get(done.headers["location"])).text
    corrected = await fresh_rental(session, rental.id)
    assert (
        corrected.late_fee_paisa == 0 and corrected.refunded_paisa == LATE_FEE and corrected.returned_on_time
    )
    assert len(await staff_audit(session, staff.user, "rental.override_end")) == 1

    # A higher total becomes a due, which can then be waived in part.
    await staff.post(f"/console/rentals/{rental.id}/override", {"total": "60", "reason": "damaged cable"})
    assert (await fresh_rental(session, rental.id)).amount_due_paisa == 6000 - (PRICE + LATE_FEE - LATE_FEE)
    page = await staff.get(f"/console/rentals/{rental.id}")
    assert 'data-action="waive"' in page.text
    await staff.post(f"/console/rentals/{rental.id}/waive", {"amount": "4", "reason": "goodwill"})
    assert (await fresh_rental(session, rental.id)).amount_due_paisa == 600
    assert len(await staff_audit(session, staff.user, "rental.override_amount")) == 1
    assert len(await staff_audit(session, staff.user, "rental.waive_due")) == 1

    both = await staff.post(
        f"/console/rentals/{rental.id}/override",
        {"total": "10", "ended_at": "2026-01-01T10:00", "reason": "both"},
    )
    assert "flash-error" in (await staff.get(both.headers["location"])).text
    assert (await fresh_rental(session, rental.id)).amount_due_paisa == 600


async def test_viewer_and_missing_csrf_are_refused(console_login: Login, session: AsyncSession) -> None:
    rental = await completed_rental(session)
    viewer = await console_login(Role.VIEWER)
    await viewer.get(f"/console/rentals/{rental.id}")
    for action in ("refund", "waive", "override"):
        refused = await viewer.post(
            f"/console/rentals/{rental.id}/{action}", {"reason": "not mine", "total": "1"}
        )
        assert refused.status_code == 403, action
    admin = await console_login(Role.ADMIN)
    await admin.get(f"/console/rentals/{rental.id}")
    forged = await admin.post(f"/console/rentals/{rental.id}/refund", {"reason": "forged"}, csrf="")
    assert forged.status_code == 403 and "CSRF token missing or invalid" in forged.text
    wrong = await admin.post(f"/console/rentals/{rental.id}/refund", {"reason": "forged"}, csrf="0" * 43)
    assert wrong.status_code == 403
    assert (await fresh_rental(session, rental.id)).refunded_paisa == 0
    count = await session.scalar(
        select(func.count()).select_from(StaffAuditEntry).where(StaffAuditEntry.target_id == str(rental.id))
    )
    assert count == 0
