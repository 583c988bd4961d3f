"""Wallet, top-ups, provider webhooks and payment history."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request

from chargeghar_core.auth.dependencies import StaffUser
from chargeghar_core.auth.models import User
from chargeghar_core.kit.db import DbSession
from chargeghar_core.kit.errors import BadRequest, Forbidden, NotFound
from chargeghar_core.kit.openapi import WEBHOOK_SIGNATURE_SCHEME, errors
from chargeghar_core.kit.schemas import Envelope, Page, PageNumber
from chargeghar_core.payments.models import LedgerKind
from chargeghar_core.payments.providers import PaymentProviders, parse_captured_webhook
from chargeghar_core.payments.repository import PaymentRepository, WalletRepository
from chargeghar_core.payments.schemas import (
    AdjustmentRequest,
    ConfirmRequest,
    LedgerEntryOut,
    PaymentOut,
    TopupOut,
    TopupRequest,
    WalletOut,
)
from chargeghar_core.payments.service import PaymentService
from chargeghar_core.payments.wallet import WalletService
from chargeghar_core.rentals.repository import RentalRepository
from chargeghar_core.rentals.settings import PaymentSettings
from chargeghar_core.renters.dependencies import CurrentRenter

router = APIRouter(tags=["payments"])
admin_router = APIRouter(tags=["payments admin"])

PageSize = Annotated[int, Query(ge=1, le=100)]
WEBHOOK_SIGNATURE_HEADER = "X-Razorpay-Signature"


def _settings(request: Request) -> PaymentSettings:
    settings: PaymentSettings = request.app.state.rentals.payment_settings
    return settings


def _providers(request: Request) -> PaymentProviders:
    providers: PaymentProviders = request.app.state.payment_providers
    return providers


@router.get(
    "/api/wallet",
    response_model=Envelope[WalletOut],
    summary="My wallet balance and the amount I owe on earlier rentals",
)
async def wallet(request: Request, session: DbSession, renter: CurrentRenter) -> Envelope[WalletOut]:
    balance = await WalletRepository(session).balance(renter.user_id)
    due = await RentalRepository(session).dues_of(renter.user_id)
    return Envelope(
        data=WalletOut(balance_paisa=balance, currency=_settings(request).currency, amount_due_paisa=due)
    )


@router.get(
    "/api/wallet/ledger",
    response_model=Envelope[Page[LedgerEntryOut]],
    summary="My wallet ledger: every credit and debit, newest first",
)
async def ledger(
    session: DbSession, renter: CurrentRenter, page: PageNumber = 1, page_size: PageSize = 50
) -> Envelope[Page[LedgerEntryOut]]:
    rows, total = await WalletRepository(session).entries(
        renter.user_id, limit=page_size, offset=(page - 1) * page_size
    )
    return Envelope(
        data=Page(items=[LedgerEntryOut.of(r) for r in rows], total=total, page=page, page_size=page_size)
    )


@router.post(
    "/api/payments/topups",
    status_code=201,
    response_model=Envelope[TopupOut],
    summary="Start a wallet top-up: creates the provider order and returns the checkout parameters",
    responses=errors(
        (400, "AMOUNT_OUT_OF_RANGE", "AMOUNT_OUT_OF_RANGE (limits in `details`) or UNKNOWN_PAYMENT_PROVIDER"),
        (502, "PAYMENT_PROVIDER_ERROR", "The payment provider could not be reached or refused the order"),
    ),
)
async def create_topup(
    body: TopupRequest, request: Request, session: DbSession, renter: CurrentRenter
) -> Envelope[TopupOut]:
    provider = _providers(request).get(body.provider)
    payment, order = await PaymentService(session, _settings(request)).create_topup(
        renter.user_id, body.amount_paisa, provider
    )
    return Envelope(
        message="Order created", data=TopupOut(payment=PaymentOut.of(payment), checkout=order.checkout)
    )


@router.post(
    "/api/payments/topups/{payment_id}/confirm",
    response_model=Envelope[PaymentOut],
    summary="Confirm a top-up with the checkout's signed answer",
    responses=errors(
        (
            400,
            "INVALID_PAYMENT_SIGNATURE",
            "The checkout signature does not verify, or UNKNOWN_PAYMENT_PROVIDER",
        ),
        (403, "FORBIDDEN", "Not a renter token, or the payment belongs to another provider"),
        (404, "PAYMENT_NOT_FOUND", "No payment with this id for this renter"),
    ),
)
async def confirm_topup(
    payment_id: uuid.UUID, body: ConfirmRequest, request: Request, session: DbSession, renter: CurrentRenter
) -> Envelope[PaymentOut]:
    service = PaymentService(session, _settings(request))
    payment = await PaymentRepository(session).get(payment_id)
    provider = _providers(request).get(payment.provider if payment else None)
    confirmed = await service.confirm(
        renter.user_id, payment_id, provider, body.provider_payment_id, body.signature
    )
    return Envelope(message="Payment captured", data=PaymentOut.of(confirmed))


@router.post(
    "/api/payments/webhooks/{provider_name}",
    summary="Payment provider webhook (signed with the provider's webhook secret)",
    description="Captures a top-up the renter's app never confirmed; other events are ignored.",
    responses=errors(
        (
            400,
            "INVALID_WEBHOOK",
            "INVALID_WEBHOOK (malformed body), UNKNOWN_PAYMENT_PROVIDER or AMOUNT_MISMATCH",
        ),
        (403, "INVALID_SIGNATURE", "Missing or wrong X-Razorpay-Signature"),
    ),
    openapi_extra={"security": [{WEBHOOK_SIGNATURE_SCHEME: []}]},
)
async def webhook(provider_name: str, request: Request, session: DbSession) -> Envelope[dict[str, object]]:
    provider = _providers(request).get(provider_name)
    body = await request.body()
    if not provider.verify_webhook(body, request.headers.get(WEBHOOK_SIGNATURE_HEADER)):
        raise Forbidden("Invalid webhook signature", code="INVALID_SIGNATURE")
    captured = parse_captured_webhook(body)
    if captured is None:
        return Envelope(message="Event ignored", data={"applied": False})
    payment = await PaymentService(session, _settings(request)).apply_webhook(provider, captured)
    return Envelope(
        message="Webhook processed",
        data={"applied": payment is not None, "payment_id": str(payment.id) if payment else None},
    )


@router.get(
    "/api/payments", response_model=Envelope[Page[PaymentOut]], summary="My payments (top-ups), newest first"
)
async def payment_history(
    session: DbSession, renter: CurrentRenter, page: PageNumber = 1, page_size: PageSize = 20
) -> Envelope[Page[PaymentOut]]:
    rows, total = await PaymentRepository(session).history(
        renter.user_id, limit=page_size, offset=(page - 1) * page_size
    )
    return Envelope(
        data=Page(items=[PaymentOut.of(r) for r in rows], total=total, page=page, page_size=page_size)
    )


@admin_router.post(
    "/api/admin/wallets/{user_id}/adjustments",
    response_model=Envelope[LedgerEntryOut | None],
    summary="Credit or debit a wallet by hand (recorded as an ADJUSTMENT)",
    responses=errors(
        (400, "BAD_REQUEST", "amount_paisa is zero or out of range"),
        (402, "INSUFFICIENT_FUNDS", "A debit larger than the balance"),
        (404, "USER_NOT_FOUND", "No user with this id"),
    ),
)
async def adjust_wallet(
    user_id: uuid.UUID, body: AdjustmentRequest, request: Request, session: DbSession, staff: StaffUser
) -> Envelope[LedgerEntryOut | None]:
    if body.amount_paisa == 0:
        raise BadRequest("amount_paisa must not be zero")
    if await session.get(User, user_id) is None:
        raise NotFound("User not found", code="USER_NOT_FOUND")
    wallet_service = WalletService(session, _settings(request).currency)
    key = f"adjustment:{uuid.uuid4().hex}"
    note = f"{body.reason} (by {staff.email})"
    if body.amount_paisa > 0:
        await wallet_service.credit(user_id, body.amount_paisa, LedgerKind.ADJUSTMENT, key, note=note)
    else:
        await wallet_service.debit(user_id, -body.amount_paisa, LedgerKind.ADJUSTMENT, key, note=note)
    entry = await WalletRepository(session).entry_by_key(key)
    return Envelope(message="Wallet adjusted", data=LedgerEntryOut.of(entry) if entry else None)
