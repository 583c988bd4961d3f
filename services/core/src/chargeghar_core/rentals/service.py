"""Business rules of rentals. Every method runs inside the caller's transaction and only flushes.

Exactly-once settlement: each state change of a rental is a compare-and-set on its status
(:meth:`RentalRepository.transition`); only the caller whose update matched performs the side effects
(bank release, refund, charges), and every wallet posting carries an idempotency key as a second guard.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from chargeghar_protocol.contract import StationStatus
from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.kit.db import utcnow
from chargeghar_core.kit.metrics import METRICS
from chargeghar_core.notifications.events import rental_event
from chargeghar_core.notifications.templates import Event
from chargeghar_core.payments.models import LedgerKind
from chargeghar_core.payments.repository import serialise_sqlite_writers
from chargeghar_core.payments.wallet import InsufficientFunds, WalletService
from chargeghar_core.pricing.fees import LateFeeTerms, PackageTerms, discounted, started_minutes
from chargeghar_core.pricing.models import PaymentModel
from chargeghar_core.pricing.repository import PricingRepository
from chargeghar_core.rentals.device_commands import CommandAttempt
from chargeghar_core.rentals.errors import (
    AccountNotActive,
    NoPowerBankAvailable,
    PackageUnavailable,
    PowerBankUnavailable,
    RentalAlreadyOpen,
    RentalNotFound,
    RentalStateConflict,
    StationUnavailable,
    UnpaidDues,
)
from chargeghar_core.rentals.models import (
    OUT_STATUSES,
    Rental,
    RentalAuditEntry,
    RentalExtension,
    RentalStatus,
)
from chargeghar_core.rentals.repository import OpenRentalConflict, RentableBank, RentalRepository
from chargeghar_core.rentals.settings import RentalSettings
from chargeghar_core.renters.repository import RenterRepository

logger = structlog.get_logger(__name__)

_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O or 1/I: codes are read out loud
_CANDIDATE_BANKS = 5
# Device and server clocks differ a little: a return stamped this much before the eject still counts.
RETURN_CLOCK_SKEW = timedelta(minutes=2)


@dataclass(frozen=True, slots=True)
class StartRequest:
    station_id: uuid.UUID | None
    station_serial: str | None
    package_id: uuid.UUID
    power_bank_serial: str | None


@dataclass(frozen=True, slots=True)
class Charges:
    usage_fee: int
    late_fee: int
    late_minutes: int
    on_time: bool

    @property
    def total(self) -> int:
        return self.usage_fee + self.late_fee


@dataclass(frozen=True, slots=True)
class ReturnPlace:
    station_id: uuid.UUID | None
    slot_number: int | None
    battery_level: int | None


def new_rental_code() -> str:
    return "R" + "".join(secrets.choice(_CODE_ALPHABET) for _ in range(9))


def rupees(paisa: int) -> str:
    """Paisa as a decimal rupee string ("1234" → "12.34"), for the contract's ``amount_due``."""
    sign = "-" if paisa < 0 else ""
    whole, fraction = divmod(abs(paisa), 100)
    return f"{sign}{whole}.{fraction:02d}"


def package_terms(rental: Rental) -> PackageTerms:
    return PackageTerms(rental.package_price_paisa, rental.duration_minutes, rental.discount_bp)


def charges_at(rental: Rental, ended_at: datetime) -> Charges:
    """What the rental costs if it ends at ``ended_at`` (beyond what was prepaid)."""
    started = rental.started_at or rental.popup_requested_at
    terms = package_terms(rental)
    usage = 0
    if rental.payment_model == PaymentModel.POSTPAID.value:
        usage = terms.usage_fee(started_minutes(started, ended_at))
    late_minutes = started_minutes(rental.due_at, ended_at) if rental.due_at is not None else 0
    late_fee = LateFeeTerms.from_json(rental.late_fee_terms).late_fee(terms, late_minutes)
    return Charges(usage, late_fee, late_minutes, late_minutes == 0)


def bank_still_in_slot(check_reply: dict[str, Any] | None, serial: str) -> bool | None:
    """From a ``check`` reply (decoded 0x10): True if the bank is in a slot, False if not, None if the
    reply cannot tell (no hole list)."""
    if not check_reply or not isinstance(check_reply.get("holes"), list):
        return None
    for hole in check_reply["holes"]:
        if isinstance(hole, dict) and str(hole.get("sn", "")) == serial and hole.get("has_bank", True):
            return True
    return False


class RentalService:
    def __init__(self, session: AsyncSession, settings: RentalSettings, *, currency: str = "NPR") -> None:
        self.session = session
        self.settings = settings
        self.rentals = RentalRepository(session)
        self.pricing = PricingRepository(session)
        self.renters = RenterRepository(session)
        self.wallet = WalletService(session, currency)

    # ================================================================== start (phase 1: reserve)

    async def reserve(self, user_id: uuid.UUID, request: StartRequest) -> Rental:
        """Check every prerequisite, reserve a bank and create the PENDING_POPUP rental (prepaid: paid)."""
        now = utcnow()
        await serialise_sqlite_writers(self.session)
        if not await self.renters.is_active_renter(user_id):
            raise AccountNotActive()
        if await self.rentals.open_for_user(user_id) is not None:
            raise RentalAlreadyOpen()
        dues = await self.rentals.dues_of(user_id)
        if dues > 0:
            raise UnpaidDues(details={"amount_due_paisa": dues})

        station = None
        if request.station_id is not None:
            station = await self.rentals.station(request.station_id)
        elif request.station_serial:
            station = await self.rentals.station_by_serial(request.station_serial)
        if station is None:
            raise StationUnavailable("Station not found", status_code=404, code="STATION_NOT_FOUND")
        if not station.is_deployed or station.is_maintenance or station.status != StationStatus.ONLINE.value:
            raise StationUnavailable(details={"station_status": station.status})

        package = await self.pricing.package(request.package_id)
        if package is None or not package.is_active:
            raise PackageUnavailable()
        policy = None
        if package.late_fee_policy_id is not None:
            policy = await self.pricing.policy(package.late_fee_policy_id)
        if policy is None:
            policy = await self.pricing.default_policy()
        late_terms = (
            LateFeeTerms(
                policy.rate_multiplier_bp,
                policy.flat_per_hour_paisa,
                policy.grace_minutes,
                policy.daily_cap_paisa,
            )
            if policy is not None
            else LateFeeTerms()
        )
        discount = await self.pricing.discount_for_station(station.id, now)
        discount_bp = discount.percent_bp if discount is not None else 0
        prepaid = package.payment_model == PaymentModel.PREPAID.value
        price = discounted(package.price_paisa, discount_bp)

        balance = await self.wallet.balance(user_id)
        required = price if prepaid else self.settings.postpaid_min_balance_paisa
        if balance < required:
            raise InsufficientFunds(details={"balance_paisa": balance, "required_paisa": required})

        bank = await self._reserve_bank(station.id, request.power_bank_serial)
        rental = Rental(
            id=uuid.uuid4(),
            code=new_rental_code(),
            user_id=user_id,
            package_id=package.id,
            power_bank_id=bank.bank_id,
            power_bank_serial=bank.serial_number,
            station_id=station.id,
            station_imei=station.imei,
            slot_number=bank.slot_number,
            status=RentalStatus.PENDING_POPUP.value,
            payment_model=package.payment_model,
            package_price_paisa=package.price_paisa,
            duration_minutes=package.duration_minutes,
            discount_bp=discount_bp,
            late_fee_terms=late_terms.to_json(),
            popup_command_id=uuid.uuid4().hex,
            popup_requested_at=now,
            awaiting_check=False,
            battery_at_start=bank.battery_level,
            extension_count=0,
            usage_fee_paisa=price if prepaid else 0,
            late_fee_paisa=0,
            charged_paisa=0,
            refunded_paisa=0,
            amount_due_paisa=0,
            created_at=now,
        )
        try:
            await self.rentals.insert(rental)
        except OpenRentalConflict as exc:
            if exc.which == "user":
                raise RentalAlreadyOpen() from exc
            raise PowerBankUnavailable() from exc
        if prepaid and price > 0:
            # Raises InsufficientFunds if a concurrent debit got there first: the whole start rolls back.
            await self.wallet.debit(
                user_id,
                price,
                LedgerKind.RENTAL_CHARGE,
                f"rental:{rental.id}:charge",
                rental_id=rental.id,
                note=f"Rental {rental.code}",
            )
            rental.charged_paisa = price
        await self.session.flush()
        logger.info(
            "rental_reserved",
            rental_id=str(rental.id),
            station_id=str(station.id),
            bank=bank.serial_number,
            slot=bank.slot_number,
        )
        return rental

    async def _reserve_bank(self, station_id: uuid.UUID, serial: str | None) -> RentableBank:
        # PostgreSQL locks what it returns (SKIP LOCKED): take one, or one start would hold every candidate
        # and the concurrent starts would skip them all. Elsewhere try a few with compare-and-set.
        limit = 1 if self.rentals.locks_rows else _CANDIDATE_BANKS
        candidates = await self.rentals.rentable_banks(
            station_id, min_battery=self.settings.min_battery_level, serial=serial, limit=limit
        )
        for candidate in candidates:
            if await self.rentals.reserve_bank(candidate.bank_id):
                return candidate
        if serial is not None:
            raise PowerBankUnavailable()
        raise NoPowerBankAvailable()

    # ================================================================== start (phase 3: settle)

    async def apply_popup_attempt(self, rental_id: uuid.UUID, attempt: CommandAttempt) -> tuple[Rental, bool]:
        """Settle what the eject answer decides. Returns (rental, needs_check)."""
        rental = await self._require_locked(rental_id)
        if rental.status != RentalStatus.PENDING_POPUP.value:
            return rental, False  # settled already (a late result, the job, or a return)
        now = utcnow()
        if attempt.status == "ok":
            await self._activate(rental, now, reason="popup_ok")
            return await self._reloaded(rental), False
        if attempt.status == "not_sent":
            await self._cancel_pending(rental, now, reason=f"popup_not_sent:{attempt.error_code}")
            return await self._reloaded(rental), False
        # failed / timeout / unknown: the bank may or may not have left; a `check` decides.
        await self.rentals.transition(
            rental.id,
            [RentalStatus.PENDING_POPUP.value],
            {"popup_outcome": attempt.status, "awaiting_check": True, "check_command_id": uuid.uuid4().hex},
        )
        return await self._reloaded(rental), True

    async def apply_check_attempt(self, rental_id: uuid.UUID, attempt: CommandAttempt) -> Rental:
        rental = await self._require_locked(rental_id)
        if rental.status != RentalStatus.PENDING_POPUP.value:
            return rental
        in_slot = (
            bank_still_in_slot(attempt.reply, rental.power_bank_serial) if attempt.status == "ok" else None
        )
        await self._apply_check_finding(rental, in_slot)
        return await self._reloaded(rental)

    async def _apply_check_finding(self, rental: Rental, in_slot: bool | None) -> None:
        now = utcnow()
        if in_slot is True:
            await self._cancel_pending(rental, now, reason=f"popup_{rental.popup_outcome}_bank_in_slot")
        elif in_slot is False:
            # It left; the earliest it can have left is when the eject was asked for.
            await self._activate(
                rental, rental.popup_requested_at, reason=f"popup_{rental.popup_outcome}_bank_gone"
            )
        else:
            logger.warning("rental_check_undecided", rental_id=str(rental.id))

    async def settle_command_result(
        self,
        *,
        command_id: str | None,
        cmd: str,
        outcome: str,
        reply: dict[str, Any] | None,
        station_id: uuid.UUID | None,
        observed_at: datetime | None,
    ) -> dict[str, Any] | None:
        """A device reply that arrived after core stopped waiting (contract §2.4 ``command_result``)."""
        rental: Rental | None = None
        if command_id:
            rental = await self.rentals.pending_by_command(command_id)
        elif station_id is not None and reply and reply.get("sn") and cmd in ("popup_sn", "popup"):
            rental = await self.rentals.pending_at_station_for_serial(station_id, str(reply["sn"]))
        if rental is None:
            return None
        if cmd in ("popup_sn", "popup") and command_id in (None, rental.popup_command_id):
            if outcome == "ok":
                await self._activate(rental, observed_at or utcnow(), reason="late_popup_ok")
            # A late failure report leaves the decision to the `check` (the bank may still have left).
        elif cmd in ("check", "check_all") and command_id == rental.check_command_id and outcome == "ok":
            await self._apply_check_finding(rental, bank_still_in_slot(reply, rental.power_bank_serial))
        rental = await self._reloaded(rental)
        return {"rental_id": str(rental.id), "rental_code": rental.code, "rental_status": rental.status}

    async def _activate(self, rental: Rental, started_at: datetime, *, reason: str) -> bool:
        due_at = started_at + timedelta(minutes=rental.duration_minutes)
        moved = await self.rentals.transition(
            rental.id,
            [RentalStatus.PENDING_POPUP.value],
            {
                "status": RentalStatus.ACTIVE.value,
                "started_at": started_at,
                "due_at": due_at,
                "awaiting_check": False,
            },
        )
        if moved:
            await self.rentals.take_out_of_slot(rental.power_bank_id)
            logger.info("rental_active", rental_id=str(rental.id), reason=reason)
            METRICS.rental_started()
            await rental_event(self.session, Event.RENTAL_STARTED, rental.id)
        return moved

    async def _cancel_pending(self, rental: Rental, now: datetime, *, reason: str) -> bool:
        moved = await self.rentals.transition(
            rental.id,
            [RentalStatus.PENDING_POPUP.value],
            {
                "status": RentalStatus.CANCELLED.value,
                "ended_at": now,
                "end_reason": reason[:200],
                "awaiting_check": False,
            },
        )
        if moved:
            await self.rentals.release_bank(rental.power_bank_id)
            await self._refund_all(rental, reason)
            logger.info("rental_cancelled", rental_id=str(rental.id), reason=reason)
            METRICS.rental_failed(reason)
            await rental_event(self.session, Event.EJECT_FAILED, rental.id)
        return moved

    async def _refund_all(self, rental: Rental, reason: str) -> None:
        fresh = await self._reloaded(rental)
        if fresh.charged_paisa <= 0:
            return
        posting = await self.wallet.credit(
            fresh.user_id,
            fresh.charged_paisa,
            LedgerKind.REFUND,
            f"rental:{fresh.id}:refund",
            rental_id=fresh.id,
            note=f"Refund of rental {fresh.code}: {reason}"[:300],
        )
        if posting.applied:
            await self.rentals.transition(
                fresh.id, [fresh.status], {"refunded_paisa": fresh.charged_paisa, "usage_fee_paisa": 0}
            )

    # ================================================================== return

    async def complete_return(
        self, bank_id: uuid.UUID, returned_at: datetime, place: ReturnPlace, *, reason: str
    ) -> Rental | None:
        """Close the bank's open rental as returned at ``place``; None when it has none."""
        rental = await self.rentals.open_for_bank(bank_id, lock=True)
        if rental is None:
            return None
        if returned_at < rental.popup_requested_at - RETURN_CLOCK_SKEW:
            # Clearly older than this rental: an earlier rental's return delivered late. Not this one's.
            logger.warning("rental_return_predates_start", rental_id=str(rental.id))
            return None
        # Within the clock-skew allowance a device clock slightly behind ours still ends the rental.
        ended_at = max(returned_at, rental.started_at or rental.popup_requested_at)
        return await self._finish(rental, ended_at, place, reason=reason)

    async def claim_return(
        self, bank_id: uuid.UUID, claimed_at: datetime, place: ReturnPlace
    ) -> Rental | None:
        """A return reported only over device HTTP: recorded on the bank's open rental as a claim (the
        rental stays out, the charge runs on). A 0x40 over MQTT, a `check` or a snapshot showing the bank at
        the claimed station completes it (see :meth:`complete_return`, :meth:`reconcile_snapshot`); an
        unconfirmed claim expires after ``return_claim_ttl_s``. None when the bank has no open rental."""
        rental = await self.rentals.open_for_bank(bank_id, lock=True)
        if rental is None or rental.status not in OUT_STATUSES:
            return None
        if claimed_at < rental.popup_requested_at - RETURN_CLOCK_SKEW:
            return None
        rental.return_claimed_at = claimed_at
        rental.return_claim_station_id = place.station_id
        rental.return_claim_slot_number = place.slot_number
        await self.session.flush()
        logger.warning(
            "rental_return_claimed",
            rental_id=str(rental.id),
            station_id=str(place.station_id),
            slot_number=place.slot_number,
        )
        return rental

    async def reconcile_snapshot(
        self, station_id: uuid.UUID, serials: Sequence[str], observed_at: datetime
    ) -> int:
        """Banks a snapshot shows in this station's slots close their open rentals (returned while the
        station was offline). A pending rental waiting for its `check` is cancelled instead: its bank never
        left. Snapshots observed before a rental's eject decide nothing about it."""
        closed = 0
        for rental in await self.rentals.open_for_serials(serials):
            if rental.status == RentalStatus.PENDING_POPUP.value:
                # Only after the eject's whole answer window: a bank can still come out inside it.
                window = timedelta(seconds=self.settings.popup_timeout_s + self.settings.http_margin_s)
                if rental.awaiting_check and observed_at > rental.popup_requested_at + window:
                    await self._apply_check_finding(rental, True)
                continue
            if rental.started_at is None or observed_at <= rental.started_at:
                continue
            place = ReturnPlace(station_id, None, None)
            ended_at = observed_at
            claimed_at = rental.return_claimed_at
            if (
                claimed_at is not None
                and rental.return_claim_station_id == station_id
                and rental.started_at <= claimed_at <= observed_at
            ):
                # The snapshot corroborates the HTTP claim: the bank is where the claim said, so the claim's
                # time is the return time.
                ended_at = claimed_at
                place = ReturnPlace(station_id, rental.return_claim_slot_number, None)
            if await self._finish(rental, ended_at, place, reason="snapshot_reconciled") is not None:
                closed += 1
        return closed

    async def _finish(
        self, rental: Rental, ended_at: datetime, place: ReturnPlace, *, reason: str
    ) -> Rental | None:
        if rental.status == RentalStatus.PENDING_POPUP.value:
            # Returned before the eject's answer reached us: it did leave, so it was a (short) rental.
            await self._activate(rental, rental.popup_requested_at, reason="returned_while_pending")
            rental = await self._reloaded(rental)
        if rental.status not in OUT_STATUSES:
            return None
        started = rental.started_at or rental.popup_requested_at
        quick_same_slot = (
            place.station_id == rental.station_id
            and place.slot_number == rental.slot_number
            and ended_at - started <= timedelta(minutes=self.settings.free_cancel_minutes)
        )
        if quick_same_slot:
            return await self._close_free(rental, ended_at, place, reason="returned_to_same_slot")
        charges = charges_at(rental, ended_at)
        moved = await self.rentals.transition(
            rental.id,
            list(OUT_STATUSES),
            {
                "status": RentalStatus.COMPLETED.value,
                "ended_at": ended_at,
                "return_station_id": place.station_id,
                "return_slot_number": place.slot_number,
                "battery_at_return": place.battery_level,
                "returned_on_time": charges.on_time,
                "end_reason": reason,
            },
        )
        if not moved:
            return None
        await self._collect(rental, charges)
        logger.info(
            "rental_completed", rental_id=str(rental.id), reason=reason, late_minutes=charges.late_minutes
        )
        await rental_event(self.session, Event.RENTAL_RETURNED, rental.id)
        return await self._reloaded(rental)

    async def _close_free(
        self, rental: Rental, ended_at: datetime, place: ReturnPlace, *, reason: str
    ) -> Rental | None:
        moved = await self.rentals.transition(
            rental.id,
            list(OUT_STATUSES),
            {
                "status": RentalStatus.CANCELLED.value,
                "ended_at": ended_at,
                "return_station_id": place.station_id,
                "return_slot_number": place.slot_number,
                "battery_at_return": place.battery_level,
                "returned_on_time": True,
                "end_reason": reason,
            },
        )
        if not moved:
            return None
        await self._refund_all(rental, reason)
        await rental_event(self.session, Event.REFUND_ISSUED, rental.id)
        return await self._reloaded(rental)

    async def _collect(self, rental: Rental, charges: Charges) -> None:
        """Take the usage fee and the late fee from the wallet as far as it goes; the rest is due."""
        collected = 0
        for amount, kind, suffix in (
            (charges.usage_fee, LedgerKind.RENTAL_CHARGE, "usage"),
            (charges.late_fee, LedgerKind.LATE_FEE, "late_fee"),
        ):
            if amount <= 0:
                continue
            posting = await self.wallet.debit(
                rental.user_id,
                amount,
                kind,
                f"rental:{rental.id}:{suffix}",
                rental_id=rental.id,
                note=f"Rental {rental.code} {suffix.replace('_', ' ')}",
                allow_partial=True,
            )
            collected += -posting.amount_paisa if posting.applied else 0
        fresh = await self._reloaded(rental)
        usage_total = fresh.usage_fee_paisa + charges.usage_fee
        await self.rentals.transition(
            rental.id,
            [fresh.status],
            {
                "usage_fee_paisa": usage_total,
                "late_fee_paisa": charges.late_fee,
                "charged_paisa": fresh.charged_paisa + collected,
                "amount_due_paisa": charges.total - collected,
            },
        )

    # ================================================================== renter actions

    async def extend(self, user_id: uuid.UUID, rental_id: uuid.UUID) -> Rental:
        """One more package duration at the package price, paid now; only while ACTIVE and before due."""
        rental = await self._require_locked(rental_id)
        if rental.user_id != user_id:
            raise RentalNotFound()
        now = utcnow()
        if rental.status != RentalStatus.ACTIVE.value or rental.due_at is None or now >= rental.due_at:
            raise RentalStateConflict("Only an active rental can be extended, before it is due")
        if rental.extension_count >= self.settings.max_extensions:
            raise RentalStateConflict(
                f"At most {self.settings.max_extensions} extensions", code="EXTENSION_LIMIT_REACHED"
            )
        price = discounted(rental.package_price_paisa, rental.discount_bp)
        number = rental.extension_count + 1
        if price > 0:
            await self.wallet.debit(
                user_id,
                price,
                LedgerKind.RENTAL_CHARGE,
                f"rental:{rental.id}:extension:{number}",
                rental_id=rental.id,
                note=f"Extension {number} of rental {rental.code}",
            )
        new_due = rental.due_at + timedelta(minutes=rental.duration_minutes)
        await self.rentals.add_extension(
            RentalExtension(
                id=uuid.uuid4(),
                rental_id=rental.id,
                minutes=rental.duration_minutes,
                price_paisa=price,
                previous_due_at=rental.due_at,
                new_due_at=new_due,
                created_at=now,
            )
        )
        moved = await self.rentals.transition(
            rental.id,
            [RentalStatus.ACTIVE.value],
            {
                "due_at": new_due,
                "extension_count": number,
                "charged_paisa": rental.charged_paisa + price,
                "usage_fee_paisa": rental.usage_fee_paisa + price,
            },
        )
        if not moved:
            raise RentalStateConflict()
        return await self._reloaded(rental)

    async def cancel(self, user_id: uuid.UUID, rental_id: uuid.UUID) -> Rental:
        """Free cancellation of an ACTIVE rental within ``free_cancel_minutes`` when the bank is recorded
        back in the very slot it came from (e.g. the renter pushed it back in)."""
        rental = await self._require_locked(rental_id)
        if rental.user_id != user_id:
            raise RentalNotFound()
        if rental.status == RentalStatus.PENDING_POPUP.value:
            raise RentalStateConflict(
                "The eject is still being settled; the rental is cancelled automatically if no bank came out",
                code="RENTAL_PENDING",
            )
        if rental.status != RentalStatus.ACTIVE.value or rental.started_at is None:
            raise RentalStateConflict("Only an active rental can be cancelled")
        now = utcnow()
        if now - rental.started_at > timedelta(minutes=self.settings.free_cancel_minutes):
            raise RentalStateConflict("The free cancellation window has passed", code="CANCEL_WINDOW_PASSED")
        bank = await self.rentals.bank(rental.power_bank_id)
        if bank is None or (bank.current_station_id, bank.current_slot_number) != (
            rental.station_id,
            rental.slot_number,
        ):
            raise RentalStateConflict(
                "Put the power bank back into the slot it came from first", code="BANK_NOT_IN_SLOT"
            )
        place = ReturnPlace(rental.station_id, rental.slot_number, bank.battery_level)
        closed = await self._close_free(rental, now, place, reason="cancelled_by_renter")
        if closed is None:
            raise RentalStateConflict()
        return closed

    async def pay_dues(self, user_id: uuid.UUID) -> tuple[int, int]:
        """Collect what earlier rentals still owe from the wallet. Returns (paid, still_due)."""
        paid = 0
        remaining = 0
        await serialise_sqlite_writers(self.session)
        for rental in await self.rentals.with_dues(user_id):
            due = rental.amount_due_paisa
            posting = await self.wallet.debit(
                user_id,
                due,
                LedgerKind.RENTAL_CHARGE,
                f"rental:{rental.id}:dues:{rental.charged_paisa}:{due}",
                rental_id=rental.id,
                note=f"Dues of rental {rental.code}",
                allow_partial=True,
            )
            taken = -posting.amount_paisa if posting.applied else 0
            if taken:
                await self.rentals.transition(
                    rental.id,
                    [rental.status],
                    {"amount_due_paisa": due - taken, "charged_paisa": rental.charged_paisa + taken},
                )
            paid += taken
            remaining += due - taken
        return paid, remaining

    # ================================================================== jobs and admin

    async def mark_overdue(self, now: datetime) -> int:
        return await self.rentals.mark_overdue(now)

    async def apply_lost_policy(self, now: datetime, limit: int) -> int:
        """Overdue for ``lost_after_hours``: close as LOST, charge the late fee up to now (and the lost-bank
        fee under ``charge_fee``); what the wallet cannot cover stays due."""
        cutoff = now - timedelta(hours=self.settings.lost_after_hours)
        batch = await self.rentals.claim_batch(
            (Rental.status == RentalStatus.OVERDUE.value) & (Rental.due_at < cutoff), limit=limit
        )
        for rental in batch:
            charges = charges_at(rental, now)
            lost_fee = self.settings.lost_bank_fee_paisa if self.settings.lost_policy == "charge_fee" else 0
            moved = await self.rentals.transition(
                rental.id,
                [RentalStatus.OVERDUE.value],
                {
                    "status": RentalStatus.LOST.value,
                    "ended_at": now,
                    "returned_on_time": False,
                    "end_reason": "lost",
                },
            )
            if not moved:
                continue
            await self._collect(
                rental, Charges(charges.usage_fee + lost_fee, charges.late_fee, charges.late_minutes, False)
            )
            await self.rentals.add_audit(
                RentalAuditEntry(
                    id=uuid.uuid4(),
                    rental_id=rental.id,
                    actor_user_id=None,
                    action="mark_lost",
                    reason=f"Overdue for more than {self.settings.lost_after_hours} h",
                    details={"lost_fee_paisa": lost_fee, "late_fee_paisa": charges.late_fee},
                    created_at=now,
                )
            )
        return len(batch)

    async def pending_to_recheck(self, now: datetime, limit: int) -> list[Rental]:
        cutoff = now - timedelta(seconds=self.settings.pending_recheck_after_s)
        return await self.rentals.claim_batch(
            (Rental.status == RentalStatus.PENDING_POPUP.value) & (Rental.popup_requested_at < cutoff),
            limit=limit,
        )

    async def ensure_check_id(self, rental_id: uuid.UUID) -> Rental | None:
        rental = await self._require_locked(rental_id)
        if rental.status != RentalStatus.PENDING_POPUP.value:
            return None
        await self.rentals.transition(
            rental.id,
            [RentalStatus.PENDING_POPUP.value],
            {
                "awaiting_check": True,
                "check_command_id": uuid.uuid4().hex,
                "popup_outcome": rental.popup_outcome or "unknown",
            },
        )
        return await self._reloaded(rental)

    async def force_complete(self, rental_id: uuid.UUID, *, actor_id: uuid.UUID, reason: str) -> Rental:
        """Admin: end an open rental now — a pending one is cancelled and refunded, one that is out is
        completed with the charges due as of now — and keep an audit record with the reason."""
        rental = await self._require_locked(rental_id)
        previous_status = rental.status
        now = utcnow()
        if rental.status == RentalStatus.PENDING_POPUP.value:
            await self._cancel_pending(rental, now, reason="force_cancelled_by_admin")
        elif rental.status in OUT_STATUSES:
            await self._finish(rental, now, ReturnPlace(None, None, None), reason="force_completed")
        else:
            raise RentalStateConflict("The rental is closed already")
        await self.rentals.add_audit(
            RentalAuditEntry(
                id=uuid.uuid4(),
                rental_id=rental.id,
                actor_user_id=actor_id,
                action="force_complete",
                reason=reason,
                details={"previous_status": previous_status},
                created_at=now,
            )
        )
        await self.session.flush()
        return await self._reloaded(rental)

    # ================================================================== helpers

    async def _require_locked(self, rental_id: uuid.UUID) -> Rental:
        rental = await self.rentals.lock(rental_id)
        if rental is None:
            raise RentalNotFound()
        return rental

    async def _reloaded(self, rental: Rental) -> Rental:
        fresh = await self.rentals.get(rental.id)
        assert fresh is not None
        return fresh
