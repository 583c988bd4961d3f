"""Wallets, the append-only ledger of every balance change, and top-up payments.

Invariant: a wallet's ``balance_paisa`` equals the sum of its ledger rows' ``amount_paisa``; both change in
the same transaction under the wallet's row lock, and the balance can never go below zero.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from chargeghar_core.kit.db import Base, TimestampMixin, utcnow


class LedgerKind(StrEnum):
    TOPUP = "TOPUP"
    RENTAL_CHARGE = "RENTAL_CHARGE"
    LATE_FEE = "LATE_FEE"
    REFUND = "REFUND"
    ADJUSTMENT = "ADJUSTMENT"
    # A top-up sent back to the renter's original payment (eSewa/Khalti/...): leaves the wallet.
    PROVIDER_REFUND = "PROVIDER_REFUND"


class PaymentStatus(StrEnum):
    CREATED = "CREATED"
    CAPTURED = "CAPTURED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"  # never completed at the provider within the expiry time


class RefundStatus(StrEnum):
    REQUESTED = "REQUESTED"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"


class RefundDestination(StrEnum):
    WALLET = "WALLET"  # a charge (ledger debit) credited back to the wallet
    ORIGINAL_PAYMENT = "ORIGINAL_PAYMENT"  # a top-up returned through its provider


class Wallet(TimestampMixin, Base):
    __tablename__ = "wallets"
    __table_args__ = (CheckConstraint("balance_paisa >= 0", name="balance_non_negative"),)

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    balance_paisa: Mapped[int] = mapped_column(BigInteger, default=0)
    currency: Mapped[str] = mapped_column(String(3), default="NPR")
    # Bumped by every change: the UPDATE that bumps it is also the portable row lock (see WalletService).
    version: Mapped[int] = mapped_column(BigInteger, default=0)


class LedgerEntry(Base):
    __tablename__ = "wallet_ledger"
    __table_args__ = (
        CheckConstraint(
            "kind IN ('TOPUP', 'RENTAL_CHARGE', 'LATE_FEE', 'REFUND', 'ADJUSTMENT', 'PROVIDER_REFUND')",
            name="kind_known",
        ),
        CheckConstraint("amount_paisa <> 0", name="amount_non_zero"),
        Index("ix_wallet_ledger_user_created", "user_id", "created_at"),
        # Money of a day or a report window across all renters (dashboard, revenue report).
        Index("ix_wallet_ledger_created", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("wallets.user_id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    # Signed: credits are positive, debits negative.
    amount_paisa: Mapped[int] = mapped_column(BigInteger)
    balance_after_paisa: Mapped[int] = mapped_column(BigInteger)
    rental_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("rentals.id", ondelete="SET NULL"), default=None, index=True
    )
    payment_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("payments.id", ondelete="SET NULL"), default=None
    )
    # What makes a change happen at most once ("rental:<id>:refund", "payment:<id>:capture", ...).
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    note: Mapped[str] = mapped_column(String(300), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Payment(TimestampMixin, Base):
    """A top-up through a payment provider: created with the provider's order, captured once."""

    __tablename__ = "payments"
    __table_args__ = (
        CheckConstraint("amount_paisa > 0", name="amount_positive"),
        CheckConstraint("status IN ('CREATED', 'CAPTURED', 'FAILED', 'EXPIRED')", name="status_known"),
        UniqueConstraint("provider", "provider_order_id"),
        UniqueConstraint("provider", "provider_payment_id"),
        Index("ix_payments_user_created", "user_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(32))
    provider_order_id: Mapped[str] = mapped_column(String(100))
    provider_payment_id: Mapped[str | None] = mapped_column(String(100), default=None)
    amount_paisa: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16), default=PaymentStatus.CREATED.value)
    captured_at: Mapped[datetime | None] = mapped_column(default=None)
    failure_reason: Mapped[str | None] = mapped_column(String(300), default=None)
    # Last server-side lookup at the provider (eSewa status check, Khalti lookup) by the re-check job.
    checked_at: Mapped[datetime | None] = mapped_column(default=None)


class RefundRequest(TimestampMixin, Base):
    """A renter's request to get a charge (a ledger debit) or a top-up (a payment) back, and its decision.

    Approving posts the ledger row(s) in the same transaction as the status change (compare-and-set from
    REQUESTED), so a request is paid out at most once; approved amounts per charge never exceed the charge.
    """

    __tablename__ = "refund_requests"
    __table_args__ = (
        CheckConstraint("amount_requested_paisa > 0", name="amount_requested_positive"),
        CheckConstraint(
            "amount_approved_paisa IS NULL OR amount_approved_paisa > 0", name="amount_approved_positive"
        ),
        CheckConstraint("status IN ('REQUESTED', 'APPROVED', 'REJECTED')", name="status_known"),
        CheckConstraint("destination IN ('WALLET', 'ORIGINAL_PAYMENT')", name="destination_known"),
        CheckConstraint("(ledger_entry_id IS NULL) <> (payment_id IS NULL)", name="exactly_one_target"),
        Index("ix_refund_requests_user_created", "user_id", "created_at"),
        Index("ix_refund_requests_status_created", "status", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    ledger_entry_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("wallet_ledger.id", ondelete="SET NULL"), default=None, index=True
    )
    payment_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("payments.id", ondelete="SET NULL"), default=None, index=True
    )
    destination: Mapped[str] = mapped_column(String(20))
    amount_requested_paisa: Mapped[int] = mapped_column(BigInteger)
    amount_approved_paisa: Mapped[int | None] = mapped_column(BigInteger, default=None)
    reason: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(16), default=RefundStatus.REQUESTED.value)
    decided_by: Mapped[uuid.UUID | None] = mapped_column(default=None)  # the staff account (no FK: audit)
    decided_by_email: Mapped[str | None] = mapped_column(String(320), default=None)
    decision_note: Mapped[str | None] = mapped_column(String(500), default=None)
    decided_at: Mapped[datetime | None] = mapped_column(default=None)
    provider_refund_ref: Mapped[str | None] = mapped_column(String(200), default=None)
