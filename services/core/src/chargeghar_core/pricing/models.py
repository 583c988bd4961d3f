"""Pricing tables. Every amount is an integer number of paisa (minor units), never a float."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from chargeghar_core.kit.db import Base, TimestampMixin


class PaymentModel(StrEnum):
    PREPAID = "PREPAID"  # the package price is taken from the wallet when the rental starts
    POSTPAID = "POSTPAID"  # the minutes used are charged when the bank comes back


class LateFeePolicy(TimestampMixin, Base):
    """How a late return is charged: a multiple of the package's per-minute rate, a flat fee per started
    hour, or both; the first ``grace_minutes`` are free and each day of lateness is capped."""

    __tablename__ = "late_fee_policies"
    __table_args__ = (
        CheckConstraint("rate_multiplier_bp >= 0", name="rate_multiplier_non_negative"),
        CheckConstraint("flat_per_hour_paisa >= 0", name="flat_per_hour_non_negative"),
        CheckConstraint("grace_minutes >= 0", name="grace_non_negative"),
        CheckConstraint("daily_cap_paisa IS NULL OR daily_cap_paisa >= 0", name="daily_cap_non_negative"),
        # At most one default policy (used by packages that name none).
        Index(
            "ux_late_fee_policies_default",
            "is_default",
            unique=True,
            postgresql_where=text("is_default"),
            sqlite_where=text("is_default = 1"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100))
    # Basis points of the per-minute rate: 10000 = 1x, 15000 = 1.5x, 0 = no rate-based part.
    rate_multiplier_bp: Mapped[int] = mapped_column(default=10000)
    flat_per_hour_paisa: Mapped[int] = mapped_column(BigInteger, default=0)
    grace_minutes: Mapped[int] = mapped_column(default=0)
    daily_cap_paisa: Mapped[int | None] = mapped_column(BigInteger, default=None)
    is_default: Mapped[bool] = mapped_column(default=False)


class RentalPackage(TimestampMixin, Base):
    __tablename__ = "rental_packages"
    __table_args__ = (
        CheckConstraint("duration_minutes > 0", name="duration_positive"),
        CheckConstraint("price_paisa >= 0", name="price_non_negative"),
        CheckConstraint("payment_model IN ('PREPAID', 'POSTPAID')", name="payment_model_known"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(String(500), default="")
    duration_minutes: Mapped[int]
    price_paisa: Mapped[int] = mapped_column(BigInteger)
    payment_model: Mapped[str] = mapped_column(String(16), default=PaymentModel.PREPAID.value)
    is_active: Mapped[bool] = mapped_column(default=True)
    late_fee_policy_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("late_fee_policies.id", ondelete="SET NULL"), default=None
    )


class StationDiscount(TimestampMixin, Base):
    """A percentage off the package price (not off late fees) for rentals picked up at one station."""

    __tablename__ = "station_discounts"
    __table_args__ = (CheckConstraint("percent_bp BETWEEN 0 AND 10000", name="percent_range"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    station_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("stations.id", ondelete="CASCADE"), unique=True)
    # Basis points: 1000 = 10 % off.
    percent_bp: Mapped[int]
    is_active: Mapped[bool] = mapped_column(default=True)
    valid_until: Mapped[datetime | None] = mapped_column(default=None)
