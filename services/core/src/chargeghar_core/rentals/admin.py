"""Staff corrections of a finished rental: override its end time or total, waive a due, refund to the wallet.

Money rules, in integer paisa:
- What the renter owes for a rental is ``charged - refunded + due``. An override sets a new total (directly,
  or by recomputing the end charges for a corrected end time); lowering it first cancels dues, then refunds
  the rest to the wallet (a REFUND ledger row); raising it adds to the dues, which block new rentals until
  paid.
- A waiver cancels dues without moving money (no ledger row: dues are not in the ledger).
- A refund to the wallet is paid at most once per rental (ledger idempotency key), never more than was
  collected and not yet refunded.
Every correction writes a ``rental_audit`` row (shown with the rental) and a ``staff_audit_log`` row, both in
the caller's transaction together with the change.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.audit.service import record_staff_action
from chargeghar_core.auth.tokens import TokenClaims
from chargeghar_core.kit.db import utcnow
from chargeghar_core.kit.errors import BadRequest, Conflict
from chargeghar_core.notifications.events import rental_event
from chargeghar_core.notifications.templates import Event
from chargeghar_core.payments.models import LedgerKind
from chargeghar_core.payments.wallet import WalletService
from chargeghar_core.rentals.errors import RentalNotFound, RentalStateConflict
from chargeghar_core.rentals.models import Rental, RentalAuditEntry, RentalStatus
from chargeghar_core.rentals.repository import RentalRepository
from chargeghar_core.rentals.service import charges_at


class AdjustmentOutOfRange(BadRequest):
    code = "AMOUNT_OUT_OF_RANGE"
    default_message = "The amount is outside what this rental allows"


class AlreadyRefunded(Conflict):
    code = "RENTAL_ALREADY_REFUNDED"
    default_message = "This rental was refunded to the wallet by staff before"


class NoDues(Conflict):
    code = "NO_DUES"
    default_message = "The rental owes nothing"


def owed_total(rental: Rental) -> int:
    """What the renter pays for the rental in the end: collected, less refunds, plus what is still due."""
    return rental.charged_paisa - rental.refunded_paisa + rental.amount_due_paisa


class RentalAdministration:
    def __init__(self, session: AsyncSession, *, currency: str = "NPR") -> None:
        self.session = session
        self.rentals = RentalRepository(session)
        self.wallet = WalletService(session, currency)

    async def _finished(self, rental_id: uuid.UUID) -> Rental:
        rental = await self.rentals.lock(rental_id)
        if rental is None:
            raise RentalNotFound()
        if rental.status != RentalStatus.COMPLETED.value:
            raise RentalStateConflict("Only a completed rental can be corrected")
        return rental

    async def override_total(
        self, rental_id: uuid.UUID, *, total_paisa: int, reason: str, actor: TokenClaims
    ) -> Rental:
        rental = await self._finished(rental_id)
        return await self._set_total(rental, total_paisa, reason, actor, action="override_amount", extra={})

    async def override_end(
        self, rental_id: uuid.UUID, *, ended_at: datetime, reason: str, actor: TokenClaims
    ) -> Rental:
        """Correct the end time (e.g. the bank was back earlier than reported) and recompute its charges."""
        rental = await self._finished(rental_id)
        started = rental.started_at or rental.popup_requested_at
        if ended_at < started or ended_at > utcnow():
            raise AdjustmentOutOfRange("The end time must lie between the start and now")
        assert rental.ended_at is not None
        previous_end = rental.ended_at
        before, after = charges_at(rental, previous_end), charges_at(rental, ended_at)
        total = owed_total(rental) - before.total + after.total
        await self.rentals.transition(
            rental.id,
            [RentalStatus.COMPLETED.value],
            {
                "ended_at": ended_at,
                "late_fee_paisa": after.late_fee,
                "usage_fee_paisa": rental.usage_fee_paisa - before.usage_fee + after.usage_fee,
                "returned_on_time": after.on_time,
            },
        )
        rental = await self._reloaded(rental)
        return await self._set_total(
            rental,
            max(0, total),
            reason,
            actor,
            action="override_end",
            extra={
                "ended_at_before": _iso(previous_end),
                "ended_at": _iso(ended_at),
                "late_fee_paisa": after.late_fee,
            },
        )

    async def waive_due(
        self, rental_id: uuid.UUID, *, amount_paisa: int | None, reason: str, actor: TokenClaims
    ) -> Rental:
        rental = await self._finished(rental_id)
        due = rental.amount_due_paisa
        if due <= 0:
            raise NoDues()
        waived = due if amount_paisa is None else amount_paisa
        if not 0 < waived <= due:
            raise AdjustmentOutOfRange(details={"amount_due_paisa": due})
        await self.rentals.transition(
            rental.id, [RentalStatus.COMPLETED.value], {"amount_due_paisa": due - waived}
        )
        await self._audit(rental, actor, "waive_due", reason, {"waived_paisa": waived, "due_before": due})
        return await self._reloaded(rental)

    async def refund_to_wallet(
        self, rental_id: uuid.UUID, *, amount_paisa: int | None, reason: str, actor: TokenClaims
    ) -> Rental:
        rental = await self._finished(rental_id)
        refundable = rental.charged_paisa - rental.refunded_paisa
        amount = refundable if amount_paisa is None else amount_paisa
        if not 0 < amount <= refundable:
            raise AdjustmentOutOfRange(details={"refundable_paisa": refundable})
        posting = await self.wallet.credit(
            rental.user_id,
            amount,
            LedgerKind.REFUND,
            f"rental:{rental.id}:staff-refund",
            rental_id=rental.id,
            note=f"Refund of rental {rental.code}: {reason}",
        )
        if not posting.applied:
            raise AlreadyRefunded()
        await self.rentals.transition(
            rental.id, [RentalStatus.COMPLETED.value], {"refunded_paisa": rental.refunded_paisa + amount}
        )
        await self._audit(rental, actor, "refund_to_wallet", reason, {"refunded_paisa": amount})
        await rental_event(self.session, Event.REFUND_ISSUED, rental.id)
        return await self._reloaded(rental)

    async def _set_total(
        self,
        rental: Rental,
        total_paisa: int,
        reason: str,
        actor: TokenClaims,
        *,
        action: str,
        extra: dict[str, Any],
    ) -> Rental:
        current = owed_total(rental)
        due, refunded = rental.amount_due_paisa, rental.refunded_paisa
        refund = 0
        if total_paisa < current:
            lower_by = current - total_paisa
            from_due = min(due, lower_by)
            due -= from_due
            refund = lower_by - from_due
        else:
            due += total_paisa - current
        if refund:
            # One ledger row per correction (its audit id in the key): a retried request is a new correction
            # only if staff sends it again, and the total it sets is absolute, so a repeat changes nothing.
            await self.wallet.credit(
                rental.user_id,
                refund,
                LedgerKind.REFUND,
                f"rental:{rental.id}:{action}:{uuid.uuid4()}",
                rental_id=rental.id,
                note=f"Correction of rental {rental.code}: {reason}",
            )
            refunded += refund
        await self.rentals.transition(
            rental.id,
            [RentalStatus.COMPLETED.value],
            {"amount_due_paisa": due, "refunded_paisa": refunded},
        )
        details = {"total_before": current, "total_after": total_paisa, "refunded_paisa": refund, **extra}
        await self._audit(rental, actor, action, reason, details)
        if refund:
            await rental_event(self.session, Event.REFUND_ISSUED, rental.id)
        return await self._reloaded(rental)

    async def _audit(
        self, rental: Rental, actor: TokenClaims, action: str, reason: str, details: dict[str, Any]
    ) -> None:
        await self.rentals.add_audit(
            RentalAuditEntry(
                id=uuid.uuid4(),
                rental_id=rental.id,
                actor_user_id=actor.user_id,
                action=action,
                reason=reason,
                details=details,
                created_at=utcnow(),
            )
        )
        await record_staff_action(
            self.session,
            actor=actor,
            action=f"rental.{action}",
            target_type="rental",
            target_id=str(rental.id),
            station_id=rental.station_id,
            details={"reason": reason, **details},
            outcome="ok",
        )
        await self.session.flush()

    async def _reloaded(self, rental: Rental) -> Rental:
        fresh = await self.rentals.get(rental.id)
        assert fresh is not None
        return fresh


def _iso(moment: datetime) -> str:
    return moment.isoformat()
