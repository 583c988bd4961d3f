"""Idempotency record of every station event that has been applied (or recorded as stale)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from chargeghar_core.kit.db import Base, utcnow


class ProcessedEvent(Base):
    """Claimed inside the event's own transaction, so a rolled-back event can be retried, and the primary
    key makes two concurrent deliveries of one event serialise: the second sees the first's result."""

    __tablename__ = "processed_events"

    # X-Event-Id / the event's event_id, or for a legacy caller the X-Signature value.
    event_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(32))
    station_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    outcome: Mapped[str | None] = mapped_column(String(16), default=None)
    result: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
