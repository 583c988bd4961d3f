"""API models of the payments domain (amounts in integer paisa)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from chargeghar_core.payments.models import LedgerEntry, Payment, RefundRequest


class WalletOut(BaseModel):
    balance_paisa: int
    currency: str
    amount_due_paisa: int


class LedgerEntryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    kind: str
    amount_paisa: int
    balance_after_paisa: int
    rental_id: uuid.UUID | None
    payment_id: uuid.UUID | None
    note: str
    created_at: datetime

    @classmethod
    def of(cls, entry: LedgerEntry) -> LedgerEntryOut:
        return cls.model_validate(entry)


class TopupRequest(BaseModel):
    # At most 100,000 NPR per top-up: a sane ceiling, and far from any BIGINT overflow of the balance.
    amount_paisa: int = Field(gt=0, le=10_000_000)
    provider: str | None = Field(default=None, max_length=32)


class PaymentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    provider: str
    provider_order_id: str
    provider_payment_id: str | None
    amount_paisa: int
    currency: str
    status: str
    created_at: datetime
    captured_at: datetime | None

    @classmethod
    def of(cls, payment: Payment) -> PaymentOut:
        return cls.model_validate(payment)


class CallbackOut(BaseModel):
    """What a provider redirect learns: the top-up's state, nothing about the renter."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    provider: str
    amount_paisa: int
    currency: str
    status: str

    @classmethod
    def of(cls, payment: Payment) -> CallbackOut:
        return cls.model_validate(payment)


class TopupOut(BaseModel):
    payment: PaymentOut
    checkout: dict[str, Any]


class ConfirmRequest(BaseModel):
    provider_payment_id: str = Field(min_length=1, max_length=100)
    signature: str = Field(min_length=1, max_length=200)


class AdjustmentRequest(BaseModel):
    amount_paisa: int = Field(description="Positive credits, negative debits; never zero")
    reason: str = Field(min_length=3, max_length=250)


class RefundRequestIn(BaseModel):
    """Exactly one target: a charge (ledger row) back to the wallet, or a top-up back to its payment."""

    ledger_entry_id: uuid.UUID | None = None
    payment_id: uuid.UUID | None = None
    amount_paisa: int | None = Field(default=None, gt=0, le=10_000_000, description="Default: all of it")
    reason: str = Field(min_length=3, max_length=500)


class RefundApproval(BaseModel):
    amount_paisa: int | None = Field(
        default=None, gt=0, le=10_000_000, description="Approve part of the request; default: all of it"
    )
    note: str | None = Field(default=None, max_length=500)


class RefundRejection(BaseModel):
    note: str = Field(min_length=3, max_length=500)


class RefundOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    user_id: uuid.UUID
    ledger_entry_id: uuid.UUID | None
    payment_id: uuid.UUID | None
    destination: str
    amount_requested_paisa: int
    amount_approved_paisa: int | None
    reason: str
    status: str
    decided_by_email: str | None
    decision_note: str | None
    decided_at: datetime | None
    provider_refund_ref: str | None
    created_at: datetime

    @classmethod
    def of(cls, refund: RefundRequest) -> RefundOut:
        return cls.model_validate(refund)
