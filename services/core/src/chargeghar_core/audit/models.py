"""The staff audit log: one row per staff action, written in the transaction of the change it records."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Float, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from chargeghar_core.kit.db import Base, utcnow


class StaffAuditEntry(Base):
    __tablename__ = "staff_audit_log"
    __table_args__ = (
        Index("ix_staff_audit_log_actor_created", "actor_id", "created_at"),
        Index("ix_staff_audit_log_station_created", "station_id", "created_at"),
        Index("ix_staff_audit_log_action_created", "action", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # No foreign keys: the log outlives accounts and stations, and must never block their deletion.
    actor_id: Mapped[uuid.UUID]
    actor_email: Mapped[str] = mapped_column(String(254))
    actor_role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(128), default=None)
    station_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    outcome: Mapped[str | None] = mapped_column(String(32), default=None)
    elapsed_ms: Mapped[float | None] = mapped_column(Float, default=None)
