"""Wallet, top-ups, provider webhooks and payment history."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from chargeghar_core.auth.dependencies import StaffUser
from chargeghar_core.auth.models import User
from chargeghar_core.kit.db import DbSession
from chargeghar_core.kit.errors import BadRequest, Forbidden, NotFound
from chargeghar_core.kit.openapi import WEBHOOK_SIGNATURE_SCHEME, errors
from chargeghar_core.kit.schemas import Envelope, Page, PageNumber
from chargeghar_core.payments.models import LedgerKind
from chargeghar_core.payments.nepal import EsewaProvider
from chargeghar_core.payments.providers import PaymentProvider, PaymentProviders, parse_captured_webhook
from chargeghar_core.payments.refunds import RefundService
from chargeghar_core.payments.repository import PaymentRepository, WalletRepository
from chargeghar_core.payments.schemas import (
    AdjustmentRequest,
    CallbackOut,
    ConfirmRequest,
    LedgerEntryOut,
    PaymentOut,
    RefundApproval,
    RefundOut,
    RefundRejection,
    RefundRequestIn,
    TopupOut,
    TopupRequest,
    WalletOut,
)
from chargeghar_core.payments.service import LOOKUP_PROVIDERS, PaymentService
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


LOOKUP_ERRORS = (
    (404, "PAYMENT_NOT_FOUND", "No top-up with this id (or pidx / transaction_uuid)"),
    (502, "PAYMENT_PROVIDER_ERROR", "The provider could not be reached or gave no usable answer; retry"),
)


def _lookup_provider(request: Request, name: str) -> Any:
    if name not in LOOKUP_PROVIDERS:
        raise BadRequest(
            "This provider is confirmed by signature, not by lookup", code="NOT_A_LOOKUP_PROVIDER"
        )
    provider: PaymentProvider = _providers(request).get(name)
    return provider


@router.post(
    "/api/payments/topups/{payment_id}/check",
    response_model=Envelope[PaymentOut],
    summary="Ask eSewa or Khalti now how my top-up stands (credits it once if they confirm it)",
    responses=errors(
        (400, "NOT_A_LOOKUP_PROVIDER", "The top-up is not an eSewa/Khalti one, or AMOUNT_MISMATCH"),
        (403, "FORBIDDEN", "Not a renter token"),
        *LOOKUP_ERRORS,
    ),
)
async def check_topup(
    payment_id: uuid.UUID, request: Request, session: DbSession, renter: CurrentRenter
) -> Envelope[PaymentOut]:
    payment = await PaymentRepository(session).get(payment_id)
    if payment is None or payment.user_id != renter.user_id:
        raise NotFound("Payment not found", code="PAYMENT_NOT_FOUND")
    provider = _lookup_provider(request, payment.provider)
    settled = await PaymentService(session, _settings(request)).settle_by_lookup(payment, provider)
    return Envelope(message=f"Payment {settled.status.lower()}", data=PaymentOut.of(settled))


@router.get(
    "/api/payments/callbacks/esewa",
    response_model=Envelope[CallbackOut],
    summary="eSewa success redirect: verifies the signed data, then confirms with eSewa's status check",
    description="eSewa sends the renter's browser here with `?data=<base64 JSON>`. The signature is checked "
    "first; the wallet is credited only when eSewa's status check API answers COMPLETE for our amount.",
    responses=errors(
        (400, "INVALID_CALLBACK", "Malformed data, a signature that does not verify, or AMOUNT_MISMATCH"),
        *LOOKUP_ERRORS,
    ),
    openapi_extra={"security": []},
)
async def esewa_success(
    request: Request, session: DbSession, data: Annotated[str, Query(min_length=8, max_length=4096)]
) -> Envelope[CallbackOut]:
    provider = _lookup_provider(request, "esewa")
    assert isinstance(provider, EsewaProvider)
    callback = provider.decode_callback(data)
    payment = await PaymentRepository(session).by_order("esewa", callback.transaction_uuid)
    if payment is None:
        raise NotFound("Payment not found", code="PAYMENT_NOT_FOUND")
    if callback.total_amount_paisa != payment.amount_paisa:
        raise BadRequest("The redirect is for another amount", code="AMOUNT_MISMATCH")
    settled = await PaymentService(session, _settings(request)).settle_by_lookup(payment, provider)
    return Envelope(message=f"Payment {settled.status.lower()}", data=CallbackOut.of(settled))


@router.get(
    "/api/payments/callbacks/esewa/failure/{transaction_uuid}",
    response_model=Envelope[CallbackOut],
    summary="eSewa failure redirect: records what eSewa's status check says about the top-up",
    responses=errors((400, "BAD_REQUEST", "AMOUNT_MISMATCH"), *LOOKUP_ERRORS),
    openapi_extra={"security": []},
)
async def esewa_failure(
    transaction_uuid: uuid.UUID, request: Request, session: DbSession
) -> Envelope[CallbackOut]:
    provider = _lookup_provider(request, "esewa")
    payment = await PaymentRepository(session).by_order("esewa", str(transaction_uuid))
    if payment is None:
        raise NotFound("Payment not found", code="PAYMENT_NOT_FOUND")
    settled = await PaymentService(session, _settings(request)).settle_by_lookup(payment, provider)
    return Envelope(message=f"Payment {settled.status.lower()}", data=CallbackOut.of(settled))


@router.get(
    "/api/payments/callbacks/khalti",
    response_model=Envelope[CallbackOut],
    summary="Khalti return URL: confirms the top-up with Khalti's lookup API before crediting",
    description="Khalti sends the renter's browser here with `pidx`, `status` and more; only `pidx` is used, "
    "and the wallet is credited only when `epayment/lookup` answers Completed for our amount.",
    responses=errors((400, "BAD_REQUEST", "AMOUNT_MISMATCH"), *LOOKUP_ERRORS),
    openapi_extra={"security": []},
)
async def khalti_return(
    request: Request, session: DbSession, pidx: Annotated[str, Query(min_length=1, max_length=100)]
) -> Envelope[CallbackOut]:
    provider = _lookup_provider(request, "khalti")
    payment = await PaymentRepository(session).by_order("khalti", pidx)
    if payment is None:
        raise NotFound("Payment not found", code="PAYMENT_NOT_FOUND")
    settled = await PaymentService(session, _settings(request)).settle_by_lookup(payment, provider)
    return Envelope(message=f"Payment {settled.status.lower()}", data=CallbackOut.of(settled))


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


# ------------------------------------------------------------------------------------------------ refunds


def _refunds(request: Request, session: DbSession) -> RefundService:
    return RefundService(session, _settings(request).currency, _providers(request))


@router.post(
    "/api/refunds",
    status_code=201,
    response_model=Envelope[RefundOut],
    summary="Ask for a refund of a charge (back to my wallet) or of a top-up (back to its payment)",
    responses=errors(
        (
            400,
            "NOT_REFUNDABLE",
            "NOT_REFUNDABLE, REFUND_NOT_SUPPORTED (provider has no refund API), AMOUNT_OUT_OF_RANGE, "
            "REFUND_TARGET_REQUIRED or UNKNOWN_PAYMENT_PROVIDER",
        ),
        (403, "FORBIDDEN", "Not a renter token"),
        (404, "CHARGE_NOT_FOUND", "No such charge or payment of mine (CHARGE_NOT_FOUND, PAYMENT_NOT_FOUND)"),
        (409, "REFUND_PENDING", "A request for this charge awaits a decision, or ALREADY_REFUNDED"),
    ),
)
async def request_refund(
    body: RefundRequestIn, request: Request, session: DbSession, renter: CurrentRenter
) -> Envelope[RefundOut]:
    refund = await _refunds(request, session).request(
        renter.user_id,
        ledger_entry_id=body.ledger_entry_id,
        payment_id=body.payment_id,
        amount_paisa=body.amount_paisa,
        reason=body.reason,
    )
    return Envelope(message="Refund requested", data=RefundOut.of(refund))


@router.get(
    "/api/refunds",
    response_model=Envelope[Page[RefundOut]],
    summary="My refund requests and their decisions, newest first",
)
async def my_refunds(
    request: Request,
    session: DbSession,
    renter: CurrentRenter,
    page: PageNumber = 1,
    page_size: PageSize = 20,
) -> Envelope[Page[RefundOut]]:
    rows, total = await _refunds(request, session).list(
        user_id=renter.user_id, status=None, limit=page_size, offset=(page - 1) * page_size
    )
    return Envelope(
        data=Page(items=[RefundOut.of(r) for r in rows], total=total, page=page, page_size=page_size)
    )


@admin_router.get(
    "/api/admin/refunds",
    response_model=Envelope[Page[RefundOut]],
    summary="Refund requests of all renters (filter by status or renter), newest first",
)
async def admin_refunds(
    request: Request,
    session: DbSession,
    staff: StaffUser,
    status: Annotated[str | None, Query(max_length=16, description="REQUESTED, APPROVED or REJECTED")] = None,
    user_id: uuid.UUID | None = None,
    page: PageNumber = 1,
    page_size: PageSize = 50,
) -> Envelope[Page[RefundOut]]:
    rows, total = await _refunds(request, session).list(
        user_id=user_id,
        status=status,
        limit=page_size,
        offset=(page - 1) * page_size,
    )
    return Envelope(
        data=Page(items=[RefundOut.of(r) for r in rows], total=total, page=page, page_size=page_size)
    )


@admin_router.post(
    "/api/admin/refunds/{refund_id}/approve",
    response_model=Envelope[RefundOut],
    summary="Approve a refund request, in full or in part, and pay it out",
    description="A charge is credited back to the wallet (REFUND ledger row); a top-up is debited from the "
    "wallet (PROVIDER_REFUND) and refunded through its provider in the same transaction.",
    responses=errors(
        (400, "AMOUNT_OUT_OF_RANGE", "More than requested or than is left of the charge"),
        (402, "INSUFFICIENT_FUNDS", "A top-up refund larger than the wallet's balance"),
        (404, "REFUND_NOT_FOUND", "No refund request with this id"),
        (409, "REFUND_ALREADY_DECIDED", "Approved or rejected before"),
        (502, "PAYMENT_PROVIDER_ERROR", "The provider refused or could not be reached; nothing changed"),
    ),
)
async def approve_refund(
    refund_id: uuid.UUID, body: RefundApproval, request: Request, session: DbSession, staff: StaffUser
) -> Envelope[RefundOut]:
    refund = await _refunds(request, session).approve(
        refund_id,
        staff_id=staff.user_id,
        staff_email=staff.email,
        amount_paisa=body.amount_paisa,
        note=body.note,
    )
    return Envelope(message="Refund approved", data=RefundOut.of(refund))


@admin_router.post(
    "/api/admin/refunds/{refund_id}/reject",
    response_model=Envelope[RefundOut],
    summary="Reject a refund request with a note the renter sees",
    responses=errors(
        (404, "REFUND_NOT_FOUND", "No refund request with this id"),
        (409, "REFUND_ALREADY_DECIDED", "Approved or rejected before"),
    ),
)
async def reject_refund(
    refund_id: uuid.UUID, body: RefundRejection, request: Request, session: DbSession, staff: StaffUser
) -> Envelope[RefundOut]:
    refund = await _refunds(request, session).reject(
        refund_id, staff_id=staff.user_id, staff_email=staff.email, note=body.note
    )
    return Envelope(message="Refund rejected", data=RefundOut.of(refund))
