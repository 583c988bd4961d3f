"""A renter is a ``users`` row with role ``renter`` plus this profile (phone, account status), the sessions
(one per logged-in device, each a refresh-token family) and the one-time login codes."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from chargeghar_core.kit.db import Base, TimestampMixin, utcnow


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
    # Set when the renter deleted the account: personal data is anonymised, rentals and ledger stay.
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)


class RenterSession(Base):
    """One logged-in device. Its id is the refresh-token family: every refresh token issued to the device
    carries it, so revoking the row (logout, device removal) refuses all of them."""

    __tablename__ = "renter_sessions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    device_name: Mapped[str] = mapped_column(String(100), default="")
    platform: Mapped[str] = mapped_column(String(16), default="")
    # FCM registration token of the app on this device; push notifications go to every live session's.
    push_token: Mapped[str | None] = mapped_column(String(512), default=None, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class OtpChallenge(Base):
    """A one-time login code sent to a phone or e-mail. Only keyed hashes are stored: of the destination
    (to find the challenge) and of the code (bound to the challenge id)."""

    __tablename__ = "renter_otp_challenges"
    __table_args__ = (
        CheckConstraint("channel IN ('sms', 'email')", name="channel_known"),
        Index("ix_renter_otp_challenges_destination", "destination_hash", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    destination_hash: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(8))
    code_hash: Mapped[str] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    consumed_at: Mapped[datetime | None] = mapped_column(default=None)
