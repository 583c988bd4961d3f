"""The notification outbox and the renters' notification preferences."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from chargeghar_core.kit.db import Base, utcnow


class Channel(StrEnum):
    PUSH = "push"
    SMS = "sms"
    EMAIL = "email"


class OutboxStatus(StrEnum):
    PENDING = "PENDING"  # waiting for (another) attempt
    CLAIMED = "CLAIMED"  # leased by a worker, adapter not called yet (back to PENDING if the lease expires)
    SENDING = "SENDING"  # the adapter is being called
    SENT = "SENT"
    FAILED = "FAILED"  # permanent error or attempts exhausted
    SKIPPED = "SKIPPED"  # nothing to send to (no device, no phone, preferences off, account deleted)
    UNCERTAIN = "UNCERTAIN"  # a worker died after claiming it: maybe sent, never sent again (at-most-once)


class Language(StrEnum):
    ENGLISH = "en"
    NEPALI = "ne"


class NotificationOutbox(Base):
    __tablename__ = "notification_outbox"
    __table_args__ = (
        CheckConstraint("channel IN ('push', 'sms', 'email')", name="channel_known"),
        CheckConstraint(
            "status IN ('PENDING', 'CLAIMED', 'SENDING', 'SENT', 'FAILED', 'SKIPPED', 'UNCERTAIN')",
            name="status_known",
        ),
        Index("ix_notification_outbox_status_next", "status", "next_attempt_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    # (event, renter, channel): a second write of the same notification is a no-op, and the adapter gets
    # the key so that a provider able to deduplicate can do so.
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    event: Mapped[str] = mapped_column(String(40))
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None, index=True
    )
    channel: Mapped[str] = mapped_column(String(8))
    # Set for messages to an address that is not (yet) the account's (login codes, deletion notice);
    # otherwise the renter's current phone/e-mail/devices are looked up at delivery. Erased once done.
    destination: Mapped[str | None] = mapped_column(String(254), default=None)
    language: Mapped[str] = mapped_column(String(2), default=Language.ENGLISH.value)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # A login code, encrypted (Fernet) with a key derived from the OTP secret; erased once done.
    sealed_secret: Mapped[str | None] = mapped_column(String(500), default=None)
    status: Mapped[str] = mapped_column(String(12), default=OutboxStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_at: Mapped[datetime | None] = mapped_column(default=None)
    sent_at: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(String(500), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class NotificationPreference(Base):
    __tablename__ = "notification_preferences"
    __table_args__ = (CheckConstraint("language IN ('en', 'ne')", name="language_known"),)

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    language: Mapped[str] = mapped_column(String(2), default=Language.ENGLISH.value)
    push_enabled: Mapped[bool] = mapped_column(default=True)
    sms_enabled: Mapped[bool] = mapped_column(default=True)
    email_enabled: Mapped[bool] = mapped_column(default=True)
    modified_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
