"""Rentals, their extensions and the audit trail of admin actions.

The reservation of a bank lives here, enforced by the database: two partial unique indexes allow at most
one open rental per power bank and at most one per renter (both work on PostgreSQL and SQLite).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from chargeghar_core.kit.db import Base, TimestampMixin, utcnow


class RentalStatus(StrEnum):
    PENDING_POPUP = "PENDING_POPUP"  # bank reserved, eject asked for, outcome not known yet
    ACTIVE = "ACTIVE"
    OVERDUE = "OVERDUE"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"  # the bank never left: reservation released, prepaid money refunded
    LOST = "LOST"  # overdue for too long: closed by the lost-bank policy


OPEN_STATUSES: tuple[str, ...] = (
    RentalStatus.PENDING_POPUP.value,
    RentalStatus.ACTIVE.value,
    RentalStatus.OVERDUE.value,
)
OUT_STATUSES: tuple[str, ...] = (RentalStatus.ACTIVE.value, RentalStatus.OVERDUE.value)

_OPEN_SQL = "status IN ('PENDING_POPUP', 'ACTIVE', 'OVERDUE')"


class Rental(TimestampMixin, Base):
    __tablename__ = "rentals"
    __table_args__ = (
        CheckConstraint(
            "status IN ('PENDING_POPUP', 'ACTIVE', 'OVERDUE', 'COMPLETED', 'CANCELLED', 'LOST')",
            name="status_known",
        ),
        CheckConstraint("amount_due_paisa >= 0", name="amount_due_non_negative"),
        CheckConstraint("charged_paisa >= 0", name="charged_non_negative"),
        Index(
            "ux_rentals_open_power_bank",
            "power_bank_id",
            unique=True,
            postgresql_where=text(_OPEN_SQL),
            sqlite_where=text(_OPEN_SQL),
        ),
        Index(
            "ux_rentals_open_user",
            "user_id",
            unique=True,
            postgresql_where=text(_OPEN_SQL),
            sqlite_where=text(_OPEN_SQL),
        ),
        Index("ix_rentals_status_due", "status", "due_at"),
        Index("ix_rentals_user_created", "user_id", "created_at"),
        # The operations views: completed today (dashboard), a bank's rentals (power-bank detail), dues.
        Index("ix_rentals_status_ended", "status", "ended_at"),
        Index("ix_rentals_bank_created", "power_bank_id", "created_at"),
        Index(
            "ix_rentals_with_dues",
            "user_id",
            postgresql_where=text("amount_due_paisa > 0"),
            sqlite_where=text("amount_due_paisa > 0"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    code: Mapped[str] = mapped_column(String(16), unique=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    package_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("rental_packages.id", ondelete="RESTRICT"))
    power_bank_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("power_banks.id", ondelete="RESTRICT"))
    power_bank_serial: Mapped[str] = mapped_column(String(64))
    station_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("stations.id", ondelete="RESTRICT"))
    station_imei: Mapped[str] = mapped_column(String(64))
    slot_number: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), default=RentalStatus.PENDING_POPUP.value)

    # The price terms as they were when the rental started (later package edits do not change them).
    payment_model: Mapped[str] = mapped_column(String(16))
    package_price_paisa: Mapped[int] = mapped_column(BigInteger)
    duration_minutes: Mapped[int]
    discount_bp: Mapped[int] = mapped_column(default=0)
    late_fee_terms: Mapped[dict[str, Any]] = mapped_column(default=dict)

    # The eject and, when its outcome was unclear, the `check` that decides it.
    popup_command_id: Mapped[str] = mapped_column(String(64))
    popup_requested_at: Mapped[datetime]
    popup_outcome: Mapped[str | None] = mapped_column(String(16), default=None)
    check_command_id: Mapped[str | None] = mapped_column(String(64), default=None)
    awaiting_check: Mapped[bool] = mapped_column(default=False)

    started_at: Mapped[datetime | None] = mapped_column(default=None)
    due_at: Mapped[datetime | None] = mapped_column(default=None)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    return_station_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("stations.id", ondelete="SET NULL"), default=None
    )
    return_slot_number: Mapped[int | None] = mapped_column(default=None)
    # A return reported only over device HTTP (unkeyed sign, forgeable): a claim, not a return. The rental
    # stays out until a 0x40 over MQTT, a `check` or a snapshot corroborates it (see complete_return).
    return_claimed_at: Mapped[datetime | None] = mapped_column(default=None)
    return_claim_station_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("stations.id", ondelete="SET NULL"), default=None
    )
    return_claim_slot_number: Mapped[int | None] = mapped_column(default=None)
    returned_on_time: Mapped[bool | None] = mapped_column(default=None)
    battery_at_start: Mapped[int | None] = mapped_column(default=None)
    battery_at_return: Mapped[int | None] = mapped_column(default=None)
    extension_count: Mapped[int] = mapped_column(default=0)

    # Money, in paisa: what the rental cost, what was taken from the wallet, what is still owed.
    usage_fee_paisa: Mapped[int] = mapped_column(BigInteger, default=0)
    late_fee_paisa: Mapped[int] = mapped_column(BigInteger, default=0)
    charged_paisa: Mapped[int] = mapped_column(BigInteger, default=0)
    refunded_paisa: Mapped[int] = mapped_column(BigInteger, default=0)
    amount_due_paisa: Mapped[int] = mapped_column(BigInteger, default=0)
    end_reason: Mapped[str | None] = mapped_column(String(200), default=None)


class RentalExtension(Base):
    __tablename__ = "rental_extensions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    rental_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("rentals.id", ondelete="CASCADE"), index=True)
    minutes: Mapped[int]
    price_paisa: Mapped[int] = mapped_column(BigInteger)
    previous_due_at: Mapped[datetime]
    new_due_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RentalAuditEntry(Base):
    """Who did what to a rental outside the normal flow (admin force-complete, lost-bank policy)."""

    __tablename__ = "rental_audit"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    rental_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("rentals.id", ondelete="CASCADE"), index=True)
    actor_user_id: Mapped[uuid.UUID | None] = mapped_column(default=None)  # None = the system (a job)
    action: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
