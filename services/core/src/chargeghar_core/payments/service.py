"""Top-ups: create a provider order, then capture it once — by the checkout's signed confirmation or by the
provider's signed webhook, whichever comes first; the other one changes nothing."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.kit.db import utcnow
from chargeghar_core.kit.errors import BadRequest, CoreError, Forbidden, NotFound
from chargeghar_core.notifications.events import topup_captured
from chargeghar_core.payments.models import LedgerKind, Payment, PaymentStatus
from chargeghar_core.payments.nepal import LookupRef, LookupState, ProviderStatus
from chargeghar_core.payments.providers import CapturedPayment, PaymentProvider, ProviderOrder
from chargeghar_core.payments.repository import PaymentRepository, serialise_sqlite_writers
from chargeghar_core.payments.wallet import WalletService
from chargeghar_core.rentals.settings import PaymentSettings

logger = structlog.get_logger(__name__)


class InvalidPaymentSignature(CoreError):
    status_code = 400
    code = "INVALID_PAYMENT_SIGNATURE"
    default_message = "The payment signature does not match"


# Providers whose top-ups are confirmed by a server-side lookup (payments/nepal.py).
LOOKUP_PROVIDERS = frozenset({"esewa", "khalti"})


class PaymentService:
    def __init__(self, session: AsyncSession, settings: PaymentSettings) -> None:
        self.session = session
        self.settings = settings
        self.payments = PaymentRepository(session)
        self.wallet = WalletService(session, settings.currency)

    async def create_topup(
        self, user_id: uuid.UUID, amount_paisa: int, provider: PaymentProvider
    ) -> tuple[Payment, ProviderOrder]:
        if not self.settings.min_topup_paisa <= amount_paisa <= self.settings.max_topup_paisa:
            raise BadRequest(
                "Top-up amount out of range",
                code="AMOUNT_OUT_OF_RANGE",
                details={
                    "min_paisa": self.settings.min_topup_paisa,
                    "max_paisa": self.settings.max_topup_paisa,
                },
            )
        payment_id = uuid.uuid4()
        currency = self.settings.razorpay_currency if provider.name == "razorpay" else self.settings.currency
        if provider.name in LOOKUP_PROVIDERS:
            currency = "NPR"  # eSewa and Khalti take Nepali rupees only
        order = await provider.create_order(
            amount_paisa=amount_paisa, currency=currency, receipt=payment_id.hex
        )
        payment = await self.payments.add(
            Payment(
                id=payment_id,
                user_id=user_id,
                provider=provider.name,
                provider_order_id=order.order_id,
                amount_paisa=amount_paisa,
                currency=order.currency,
                status=PaymentStatus.CREATED.value,
                created_at=utcnow(),
            )
        )
        return payment, order

    async def confirm(
        self,
        user_id: uuid.UUID,
        payment_id: uuid.UUID,
        provider: PaymentProvider,
        provider_payment_id: str,
        signature: str,
    ) -> Payment:
        await serialise_sqlite_writers(self.session)
        payment = await self.payments.get(payment_id)
        if payment is None or payment.user_id != user_id:
            raise NotFound("Payment not found", code="PAYMENT_NOT_FOUND")
        if payment.provider != provider.name:
            raise Forbidden("Payment belongs to another provider")
        if not provider.verify_payment(
            order_id=payment.provider_order_id, payment_id=provider_payment_id, signature=signature
        ):
            raise InvalidPaymentSignature()
        await self._capture(payment, provider_payment_id, payment.amount_paisa)
        return await self._reloaded(payment)

    async def apply_webhook(self, provider: PaymentProvider, captured: CapturedPayment) -> Payment | None:
        await serialise_sqlite_writers(self.session)
        payment = await self.payments.by_order(provider.name, captured.order_id)
        if payment is None:
            logger.warning("webhook_unknown_order", provider=provider.name, order_id=captured.order_id)
            return None
        if captured.amount_paisa != payment.amount_paisa or (
            captured.currency and captured.currency != payment.currency
        ):
            logger.error("webhook_amount_mismatch", payment_id=str(payment.id), amount=captured.amount_paisa)
            raise BadRequest("Captured amount differs from the order", code="AMOUNT_MISMATCH")
        await self._capture(payment, captured.payment_id, payment.amount_paisa)
        return await self._reloaded(payment)

    async def settle_by_lookup(self, payment: Payment, provider: Any) -> Payment:
        """Ask the provider (server to server) how the top-up stands and act on its answer, once.

        COMPLETE for our amount credits the wallet (compare-and-set CREATED → CAPTURED, so a redirect, a
        callback and the job racing each other credit it exactly once); FAILED marks it failed; PENDING past
        the expiry time expires it; HOLD (in doubt at the provider) is left for people to look at.
        Commits nothing itself: the caller's transaction holds the change.
        """
        if payment.status == PaymentStatus.CAPTURED.value or payment.status == PaymentStatus.FAILED.value:
            return payment
        status: ProviderStatus = await provider.lookup(
            LookupRef(payment.id, payment.provider_order_id, payment.amount_paisa)
        )
        now = utcnow()
        await self.payments.mark_checked(payment.id, now)
        if status.state is LookupState.COMPLETE:
            if status.amount_paisa != payment.amount_paisa:
                logger.error(
                    "topup_amount_mismatch",
                    payment_id=str(payment.id),
                    expected=payment.amount_paisa,
                    provider_amount=status.amount_paisa,
                )
                raise BadRequest("The provider reports another amount", code="AMOUNT_MISMATCH")
            await self._capture(
                payment,
                status.provider_payment_id or payment.provider_order_id,
                payment.amount_paisa,
                from_expired=True,
            )
        elif status.state is LookupState.FAILED:
            if await self.payments.mark_failed(payment.id, f"{provider.name}: {status.raw_status}", now):
                logger.info("topup_failed", payment_id=str(payment.id), provider_status=status.raw_status)
        elif status.state is LookupState.PENDING:
            expires = payment.created_at + timedelta(seconds=self.settings.topup_expire_after_s)
            if now >= expires and await self.payments.mark_expired(
                payment.id, f"{provider.name}: {status.raw_status} after expiry", now
            ):
                logger.info("topup_expired", payment_id=str(payment.id), provider_status=status.raw_status)
        else:
            logger.warning("topup_on_hold", payment_id=str(payment.id), provider_status=status.raw_status)
        return await self._reloaded(payment)

    async def _capture(
        self, payment: Payment, provider_payment_id: str, amount_paisa: int, *, from_expired: bool = False
    ) -> None:
        if await self.payments.mark_captured(
            payment.id, provider_payment_id, utcnow(), from_expired=from_expired
        ):
            await self.wallet.credit(
                payment.user_id,
                amount_paisa,
                LedgerKind.TOPUP,
                f"payment:{payment.provider}:{provider_payment_id}",
                payment_id=payment.id,
                note=f"Top-up via {payment.provider}",
            )
            logger.info("topup_captured", payment_id=str(payment.id), amount=amount_paisa)
            await topup_captured(
                self.session,
                user_id=payment.user_id,
                payment_id=payment.id,
                amount_paisa=amount_paisa,
                provider=payment.provider,
            )
        else:
            logger.info("topup_already_settled", payment_id=str(payment.id))

    async def _reloaded(self, payment: Payment) -> Payment:
        fresh = await self.payments.get(payment.id)
        assert fresh is not None
        return fresh
