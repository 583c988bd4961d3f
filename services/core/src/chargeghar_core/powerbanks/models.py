"""Power banks and the table that maps a serial prefix to a model and capacity."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from chargeghar_protocol.contract import PowerBankStatus
from sqlalchemy import CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from chargeghar_core.kit.db import Base, TimestampMixin, utcnow


class OperatorStatus:
    """Statuses only an operator sets (on top of the protocol's AVAILABLE/RENTED/MAINTENANCE/DAMAGED)."""

    RETIRED = "RETIRED"  # out of service for good; device reports never make it rentable again
    LOST = "LOST"  # not where it should be; a cabinet that reports it in a slot makes it AVAILABLE again


class BankCondition:
    """What the cabinet reports about a bank, apart from the operator's ``status``: it follows the device
    and heals when the device says so. ``condition_code`` keeps the device's fault code ("0x03")."""

    HEALTHY = "HEALTHY"
    FAULT = "FAULT"


class PowerBank(TimestampMixin, Base):
    __tablename__ = "power_banks"
    __table_args__ = (
        CheckConstraint(
            "status IN ('AVAILABLE', 'RENTED', 'MAINTENANCE', 'DAMAGED', 'RETIRED', 'LOST')",
            name="status_known",
        ),
        CheckConstraint("battery_level BETWEEN 0 AND 100", name="battery_level_range"),
        CheckConstraint("condition IN ('HEALTHY', 'FAULT')", name="condition_known"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    serial_number: Mapped[str] = mapped_column(String(64), unique=True)
    model: Mapped[str] = mapped_column(String(64))
    capacity_mah: Mapped[int]
    # The operator's (and the rentals flow's) decision: AVAILABLE, RENTED, MAINTENANCE, DAMAGED. Device
    # reports never set MAINTENANCE/DAMAGED; they set ``condition``. Rentable = AVAILABLE and HEALTHY.
    status: Mapped[str] = mapped_column(String(16), default=PowerBankStatus.AVAILABLE.value)
    condition: Mapped[str] = mapped_column(
        String(16), default=BankCondition.HEALTHY, server_default="HEALTHY"
    )
    condition_code: Mapped[str | None] = mapped_column(String(16), default=None)
    condition_changed_at: Mapped[datetime | None] = mapped_column(default=None)
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


class PowerBankConditionHistory(Base):
    """One row per change of a bank's device-reported condition (fault set or cleared)."""

    __tablename__ = "power_bank_condition_history"
    __table_args__ = (Index("ix_power_bank_condition_history_bank_changed", "power_bank_id", "changed_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    power_bank_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("power_banks.id", ondelete="CASCADE"))
    previous_condition: Mapped[str | None] = mapped_column(String(16), default=None)
    previous_code: Mapped[str | None] = mapped_column(String(16), default=None)
    condition: Mapped[str] = mapped_column(String(16))
    condition_code: Mapped[str | None] = mapped_column(String(16), default=None)
    station_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("stations.id", ondelete="SET NULL"), default=None
    )
    slot_number: Mapped[int | None] = mapped_column(default=None)
    # What reported it: "full", "slot_event", "returned".
    source: Mapped[str] = mapped_column(String(32))
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)
