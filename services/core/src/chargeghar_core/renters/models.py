"""A renter is a ``users`` row with role ``renter`` plus this profile (phone, account status)."""

from __future__ import annotations

import uuid
from enum import StrEnum

from sqlalchemy import CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from chargeghar_core.kit.db import Base, TimestampMixin


class AccountStatus(StrEnum):
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"


class RenterProfile(TimestampMixin, Base):
    __tablename__ = "renter_profiles"
    __table_args__ = (CheckConstraint("status IN ('ACTIVE', 'SUSPENDED')", name="status_known"),)

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    # E.164 digits with a leading "+"; a renter may log in with it instead of the e-mail.
    phone: Mapped[str | None] = mapped_column(String(20), unique=True, default=None)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[str] = mapped_column(String(16), default=AccountStatus.ACTIVE.value)
    status_reason: Mapped[str | None] = mapped_column(String(500), default=None)
