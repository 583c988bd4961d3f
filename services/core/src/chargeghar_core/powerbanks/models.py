"""Power banks and the table that maps a serial prefix to a model and capacity."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from chargeghar_protocol.contract import PowerBankStatus
from sqlalchemy import CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from chargeghar_core.kit.db import Base, TimestampMixin


class PowerBank(TimestampMixin, Base):
    __tablename__ = "power_banks"
    __table_args__ = (
        CheckConstraint("status IN ('AVAILABLE', 'RENTED', 'MAINTENANCE', 'DAMAGED')", name="status_known"),
        CheckConstraint("battery_level BETWEEN 0 AND 100", name="battery_level_range"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    serial_number: Mapped[str] = mapped_column(String(64), unique=True)
    model: Mapped[str] = mapped_column(String(64))
    capacity_mah: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), default=PowerBankStatus.AVAILABLE.value)
    battery_level: Mapped[int] = mapped_column(default=0)
    hardware_info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Where the bank physically is (both None while rented out or lost).
    current_station_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("stations.id", ondelete="SET NULL"), default=None, index=True
    )
    current_slot_number: Mapped[int | None] = mapped_column(default=None)
    total_rentals: Mapped[int] = mapped_column(default=0)
    charge_cycles: Mapped[int] = mapped_column(default=0)
    last_seen_at: Mapped[datetime | None] = mapped_column(default=None)


class PowerBankModel(TimestampMixin, Base):
    """Serial prefix → model; the longest matching prefix wins, no match falls back to the default model."""

    __tablename__ = "power_bank_models"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    serial_prefix: Mapped[str] = mapped_column(String(32), unique=True)
    model: Mapped[str] = mapped_column(String(64))
    capacity_mah: Mapped[int]
