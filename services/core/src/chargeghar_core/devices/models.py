"""Known devices: one row per station IMEI, pending until an admin approves it (or registers it directly)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, String
from sqlalchemy.orm import Mapped, mapped_column

from chargeghar_core.kit.db import Base, TimestampMixin


class DeviceStatus(StrEnum):
    PENDING = "pending"  # seen at connect, waiting for an admin; gets no credentials under `registry`
    APPROVED = "approved"  # may connect
    REVOKED = "revoked"  # refused at connect and at the broker's login


class Device(TimestampMixin, Base):
    __tablename__ = "devices"
    __table_args__ = (CheckConstraint("status IN ('pending', 'approved', 'revoked')", name="status_known"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    imei: Mapped[str] = mapped_column(String(32), unique=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    # First and latest connect the ingest reported (None for an IMEI registered before it ever called).
    first_seen_at: Mapped[datetime | None] = mapped_column(default=None)
    last_seen_at: Mapped[datetime | None] = mapped_column(default=None)
    # Who approved / revoked and when (user ids, no FK: an audit trail outlives the account).
    approved_by: Mapped[uuid.UUID | None] = mapped_column(default=None)
    approved_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_by: Mapped[uuid.UUID | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    note: Mapped[str | None] = mapped_column(String(200), default=None)
