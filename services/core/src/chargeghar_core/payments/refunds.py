"""Refund requests: a renter asks for a charge (or a top-up) back with a reason; staff approve all or part of
it, or reject it.

- A charge (a RENTAL_CHARGE or LATE_FEE ledger debit) is refunded to the wallet: one REFUND ledger row.
- A top-up is refunded to its original payment where the provider has a refund API (Khalti, the sandbox):
  one PROVIDER_REFUND ledger debit (the money leaves the wallet) and the provider's refund call, in the
  same transaction — if the provider refuses, nothing is written and the request stays REQUESTED.

Approval locks the renter's wallet first, so approvals of one renter's requests queue up; the request moves
REQUESTED → APPROVED by compare-and-set, and approved amounts per charge never exceed the charge. The request
row is the audit record (who decided, when, how much, why); the ledger row's note names it too.
"""

from __future__ import annotations

import uuid

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.kit.db import table_of, utcnow
from chargeghar_core.kit.errors import BadRequest, Conflict, NotFound
from chargeghar_core.payments.models import (
    LedgerEntry,
    LedgerKind,
    Payment,
    PaymentStatus,
    RefundDestination,
    RefundRequest,
    RefundStatus,
)
from chargeghar_core.payments.providers import PaymentProviders
from chargeghar_core.payments.repository import WalletRepository
from chargeghar_core.payments.wallet import WalletService

logger = structlog.get_logger(__name__)

REFUNDABLE_KINDS = frozenset({LedgerKind.RENTAL_CHARGE.value, LedgerKind.LATE_FEE.value})


class RefundService:
    def __init__(self, session: AsyncSession, currency: str, providers: PaymentProviders) -> None:
        self.session = session
        self.providers = providers
        self.wallet = WalletService(session, currency)

    # ------------------------------------------------------------------------------------------ renter

    async def request(
        self,
        user_id: uuid.UUID,
        *,
        ledger_entry_id: uuid.UUID | None,
        payment_id: uuid.UUID | None,
        amount_paisa: int | None,
        reason: str,
    ) -> RefundRequest:
        if (ledger_entry_id is None) == (payment_id is None):
            raise BadRequest(
                "Give exactly one of ledger_entry_id and payment_id", code="REFUND_TARGET_REQUIRED"
            )
        if ledger_entry_id is not None:
            entry = await self.session.get(LedgerEntry, ledger_entry_id)
            if entry is None or entry.user_id != user_id:
                raise NotFound("Charge not found", code="CHARGE_NOT_FOUND")
            if entry.kind not in REFUNDABLE_KINDS or entry.amount_paisa >= 0:
                raise BadRequest("Only rental charges and late fees can be refunded", code="NOT_REFUNDABLE")
            charged = -entry.amount_paisa
            destination = RefundDestination.WALLET
        else:
            payment = await self.session.get(Payment, payment_id)
            if payment is None or payment.user_id != user_id:
                raise NotFound("Payment not found", code="PAYMENT_NOT_FOUND")
            if payment.status != PaymentStatus.CAPTURED.value:
                raise BadRequest("Only captured top-ups can be refunded", code="NOT_REFUNDABLE")
            provider = self.providers.get(payment.provider)
            if not getattr(provider, "supports_refund", False):
                raise BadRequest(
                    f"{payment.provider} top-ups cannot be refunded to the original payment",
                    code="REFUND_NOT_SUPPORTED",
                )
            charged = payment.amount_paisa
            destination = RefundDestination.ORIGINAL_PAYMENT
        if await self._open_request(ledger_entry_id, payment_id) is not None:
            raise Conflict("A refund of this charge is already waiting for a decision", code="REFUND_PENDING")
        remaining = charged - await self._approved(ledger_entry_id, payment_id)
        amount = remaining if amount_paisa is None else amount_paisa
        if remaining <= 0:
            raise Conflict("This charge has been refunded in full", code="ALREADY_REFUNDED")
        if not 0 < amount <= remaining:
            raise BadRequest(
                "Refund amount out of range", code="AMOUNT_OUT_OF_RANGE", details={"max_paisa": remaining}
            )
        refund = RefundRequest(
            id=uuid.uuid4(),
            user_id=user_id,
            ledger_entry_id=ledger_entry_id,
            payment_id=payment_id,
            destination=destination.value,
            amount_requested_paisa=amount,
            reason=reason,
            status=RefundStatus.REQUESTED.value,
            created_at=utcnow(),
        )
        self.session.add(refund)
        await self.session.flush()
        logger.info(
            "refund_requested", refund_id=str(refund.id), amount=amount, destination=destination.value
        )
        return refund

    # ------------------------------------------------------------------------------------------ staff

    async def approve(
        self,
        refund_id: uuid.UUID,
        *,
        staff_id: uuid.UUID,
        staff_email: str,
        amount_paisa: int | None,
        note: str | None,
    ) -> RefundRequest:
        refund = await self._get(refund_id)
        wallets = WalletRepository(self.session)
        await wallets.ensure(refund.user_id, self.wallet.currency)
        await wallets.lock(refund.user_id)  # serialises decisions on this renter's refunds
        refund = await self._get(refund_id)
        if refund.status != RefundStatus.REQUESTED.value:
            raise Conflict("This refund request has been decided already", code="REFUND_ALREADY_DECIDED")
        amount = refund.amount_requested_paisa if amount_paisa is None else amount_paisa
        charged = await self._charged(refund)
        remaining = charged - await self._approved(refund.ledger_entry_id, refund.payment_id)
        if not 0 < amount <= min(refund.amount_requested_paisa, remaining):
            raise BadRequest(
                "Approved amount out of range",
                code="AMOUNT_OUT_OF_RANGE",
                details={"max_paisa": max(0, min(refund.amount_requested_paisa, remaining))},
            )
        now = utcnow()
        if not await self._decide(refund.id, RefundStatus.APPROVED, staff_id, staff_email, note, now, amount):
            raise Conflict("This refund request has been decided already", code="REFUND_ALREADY_DECIDED")
        key = f"refund:{refund.id}"
        ledger_note = f"Refund {refund.id} approved by {staff_email}: {refund.reason}"
        if refund.destination == RefundDestination.WALLET.value:
            entry = await self.session.get(LedgerEntry, refund.ledger_entry_id)
            await self.wallet.credit(
                refund.user_id,
                amount,
                LedgerKind.REFUND,
                key,
                rental_id=entry.rental_id if entry else None,
                note=ledger_note,
            )
        else:
            payment = await self.session.get(Payment, refund.payment_id)
            if payment is None or not payment.provider_payment_id:
                raise Conflict("The original payment is gone", code="PAYMENT_NOT_FOUND")
            # The wallet first (402 when the money was spent), the provider last: a refusal rolls both back.
            await self.wallet.debit(
                refund.user_id,
                amount,
                LedgerKind.PROVIDER_REFUND,
                key,
                payment_id=payment.id,
                note=ledger_note,
            )
            provider = self.providers.get(payment.provider)
            already = charged - remaining
            reference = await provider.refund(  # type: ignore[attr-defined]
                payment.provider_payment_id, amount, full=already == 0 and amount == payment.amount_paisa
            )
            await self.session.execute(
                update(table_of(RefundRequest))
                .where(table_of(RefundRequest).c.id == refund.id)
                .values(provider_refund_ref=str(reference)[:200])
            )
        logger.info("refund_approved", refund_id=str(refund.id), amount=amount, by=str(staff_id))
        return await self._get(refund.id)

    async def reject(
        self, refund_id: uuid.UUID, *, staff_id: uuid.UUID, staff_email: str, note: str
    ) -> RefundRequest:
        await self._get(refund_id)
        if not await self._decide(
            refund_id, RefundStatus.REJECTED, staff_id, staff_email, note, utcnow(), None
        ):
            raise Conflict("This refund request has been decided already", code="REFUND_ALREADY_DECIDED")
        logger.info("refund_rejected", refund_id=str(refund_id), by=str(staff_id))
        return await self._get(refund_id)

    # ------------------------------------------------------------------------------------------ queries

    async def list(
        self, *, user_id: uuid.UUID | None, status: str | None, limit: int, offset: int
    ) -> tuple[list[RefundRequest], int]:
        query = select(RefundRequest)
        if user_id is not None:
            query = query.where(RefundRequest.user_id == user_id)
        if status is not None:
            query = query.where(RefundRequest.status == status)
        total = await self.session.scalar(select(func.count()).select_from(query.subquery()))
        rows = await self.session.execute(
            query.order_by(RefundRequest.created_at.desc(), RefundRequest.id).limit(limit).offset(offset)
        )
        return list(rows.scalars()), int(total or 0)

    async def _get(self, refund_id: uuid.UUID) -> RefundRequest:
        refund = await self.session.get(RefundRequest, refund_id, populate_existing=True)
        if refund is None:
            raise NotFound("Refund request not found", code="REFUND_NOT_FOUND")
        return refund

    async def _decide(
        self,
        refund_id: uuid.UUID,
        status: RefundStatus,
        staff_id: uuid.UUID,
        staff_email: str,
        note: str | None,
        at: object,
        amount: int | None,
    ) -> bool:
        table = table_of(RefundRequest)
        result = await self.session.execute(
            update(table)
            .where(table.c.id == refund_id, table.c.status == RefundStatus.REQUESTED.value)
            .values(
                status=status.value,
                amount_approved_paisa=amount,
                decided_by=staff_id,
                decided_by_email=staff_email[:320],
                decision_note=(note or "")[:500] or None,
                decided_at=at,
                modified_at=at,
            )
        )
        return bool(getattr(result, "rowcount", 0))

    async def _charged(self, refund: RefundRequest) -> int:
        if refund.ledger_entry_id is not None:
            entry = await self.session.get(LedgerEntry, refund.ledger_entry_id)
            return -entry.amount_paisa if entry else 0
        payment = await self.session.get(Payment, refund.payment_id)
        return payment.amount_paisa if payment else 0

    def _target(self, ledger_entry_id: uuid.UUID | None, payment_id: uuid.UUID | None) -> object:
        if ledger_entry_id is not None:
            return RefundRequest.ledger_entry_id == ledger_entry_id
        return RefundRequest.payment_id == payment_id

    async def _approved(self, ledger_entry_id: uuid.UUID | None, payment_id: uuid.UUID | None) -> int:
        value = await self.session.scalar(
            select(func.coalesce(func.sum(RefundRequest.amount_approved_paisa), 0)).where(
                self._target(ledger_entry_id, payment_id),  # type: ignore[arg-type]
                RefundRequest.status == RefundStatus.APPROVED.value,
            )
        )
        return int(value or 0)

    async def _open_request(
        self, ledger_entry_id: uuid.UUID | None, payment_id: uuid.UUID | None
    ) -> RefundRequest | None:
        rows = await self.session.execute(
            select(RefundRequest)
            .where(
                self._target(ledger_entry_id, payment_id),  # type: ignore[arg-type]
                RefundRequest.status == RefundStatus.REQUESTED.value,
            )
            .limit(1)
        )
        return rows.scalar_one_or_none()
