"""Stations (cabinets), their slots, status history and the sync log of every inbound event."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from chargeghar_protocol.contract import SlotStatus, StationStatus
from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from chargeghar_core.kit.db import Base, TimestampMixin, utcnow
from chargeghar_core.powerbanks.models import PowerBank


class SyncOutcome(StrEnum):
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    DUPLICATE = "DUPLICATE"
    STALE = "STALE"


def _in(column: str, values: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Station(TimestampMixin, Base):
    __tablename__ = "stations"
    __table_args__ = (
        CheckConstraint(_in("status", StationStatus), name="status_known"),
        CheckConstraint("total_slots >= 0", name="total_slots_non_negative"),
        Index("ix_stations_deployed_status", "is_deployed", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    # The device identity on MQTT; every inbound event names the station by it.
    imei: Mapped[str] = mapped_column(String(64), unique=True)
    # The human serial printed on the QR code: set by an admin, never overwritten by a sync.
    serial_number: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    latitude: Mapped[float] = mapped_column(default=0.0)
    longitude: Mapped[float] = mapped_column(default=0.0)
    address: Mapped[str] = mapped_column(String(500), default="")
    landmark: Mapped[str] = mapped_column(String(200), default="")
    total_slots: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(String(16), default=StationStatus.OFFLINE.value)
    status_changed_at: Mapped[datetime | None] = mapped_column(default=None)
    # Hidden from renters until an admin has set a real name and location.
    is_deployed: Mapped[bool] = mapped_column(default=False)
    is_maintenance: Mapped[bool] = mapped_column(default=False)
    hardware_info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    last_heartbeat: Mapped[datetime | None] = mapped_column(default=None)
    # Observation time of the newest snapshot applied; an older snapshot arriving late is not applied.
    observed_at: Mapped[datetime | None] = mapped_column(default=None)

    slots: Mapped[list[StationSlot]] = relationship(
        back_populates="station", lazy="raise", order_by="StationSlot.slot_number"
    )


class StationSlot(TimestampMixin, Base):
    __tablename__ = "station_slots"
    __table_args__ = (
        UniqueConstraint("station_id", "slot_number"),
        CheckConstraint(_in("status", SlotStatus), name="status_known"),
        CheckConstraint("slot_number >= 0", name="slot_number_non_negative"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    station_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("stations.id", ondelete="CASCADE"))
    slot_number: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), default=SlotStatus.AVAILABLE.value)
    battery_level: Mapped[int] = mapped_column(default=0)
    # A bank is physically in at most one slot anywhere: the unique constraint enforces it.
    power_bank_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("power_banks.id", ondelete="SET NULL"), unique=True, default=None
    )
    # Sensor bits (micro switch, solenoid valve, lock count), error code and text as the device sent them.
    slot_metadata: Mapped[dict[str, Any]] = mapped_column(default=dict)

    station: Mapped[Station] = relationship(back_populates="slots", lazy="raise")
    power_bank: Mapped[PowerBank | None] = relationship(lazy="raise")


class StationStatusHistory(Base):
    __tablename__ = "station_status_history"
    __table_args__ = (Index("ix_station_status_history_station_changed", "station_id", "changed_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    station_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("stations.id", ondelete="CASCADE"))
    previous_status: Mapped[str | None] = mapped_column(String(16), default=None)
    status: Mapped[str] = mapped_column(String(16))
    # What caused the change: "full", "status", "returned", "slot_event", "admin", "created".
    trigger: Mapped[str] = mapped_column(String(32))
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Seconds spent in previous_status (None for the first status a station ever had).
    previous_duration_s: Mapped[float | None] = mapped_column(default=None)
    # Which presence channel changed ("mqtt", "http"), for status events that name one.
    channel: Mapped[str | None] = mapped_column(String(16), default=None)


class DeviceFaultCounter(Base):
    """Device-reported failures counted per station, source and code (failed returns, failed slot events),
    so a fleet-wide fault shows up as one growing number rather than scattered log lines."""

    __tablename__ = "device_fault_counters"
    __table_args__ = (UniqueConstraint("station_id", "source", "code"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    station_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("stations.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(32))  # "return_failed", "slot_event"
    code: Mapped[str] = mapped_column(String(16))  # "0x24"
    count: Mapped[int] = mapped_column(default=0)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)


class SyncLog(Base):
    """One row per inbound station event, whatever happened to it (written even when processing fails)."""

    __tablename__ = "sync_logs"
    __table_args__ = (
        CheckConstraint(_in("outcome", SyncOutcome), name="outcome_known"),
        Index("ix_sync_logs_station_created", "station_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    station_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("stations.id", ondelete="SET NULL"), default=None
    )
    # The station key as sent (IMEI or serial), kept even when no station row matches.
    station_key: Mapped[str | None] = mapped_column(String(64), default=None)
    event_type: Mapped[str] = mapped_column(String(32))
    event_id: Mapped[str | None] = mapped_column(String(200), default=None, index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    duration_ms: Mapped[float] = mapped_column(default=0.0)
    # Indexed for the retention job, which deletes by age across all stations.
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
