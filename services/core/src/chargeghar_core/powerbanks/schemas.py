"""API models of the power-bank admin endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class PowerBankView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    serial_number: str
    model: str
    capacity_mah: int
    status: str
    battery_level: int
    hardware_info: dict[str, Any]
    current_station_id: uuid.UUID | None
    current_slot_number: int | None
    total_rentals: int
    charge_cycles: int
    last_seen_at: datetime | None


class PowerBankModelView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    serial_prefix: str
    model: str
    capacity_mah: int


class PowerBankModelCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"serial_prefix": "4081", "model": "CG-10K", "capacity_mah": 10000}]},
    )

    serial_prefix: str = Field(min_length=1, max_length=32)
    model: str = Field(min_length=1, max_length=64)
    capacity_mah: int = Field(gt=0, le=100_000)


class BankStatusFilter(StrEnum):
    """Every operator status a bank can have (the protocol's four plus RETIRED and LOST)."""

    AVAILABLE = "AVAILABLE"
    RENTED = "RENTED"
    MAINTENANCE = "MAINTENANCE"
    DAMAGED = "DAMAGED"
    RETIRED = "RETIRED"
    LOST = "LOST"


class OperatorStatusChange(StrEnum):
    """What an operator may set: ``found`` ends LOST (the bank is AVAILABLE again)."""

    AVAILABLE = "available"
    MAINTENANCE = "maintenance"
    RETIRED = "retired"
    LOST = "lost"
    FOUND = "found"


class PowerBankStatusUpdate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"status": "maintenance", "reason": "Cracked casing reported by a renter"}]
        },
    )

    status: OperatorStatusChange
    reason: str = Field(min_length=3, max_length=500)


class BankLocation(BaseModel):
    where: str = Field(description="in_slot, on_rental or unknown")
    station_id: uuid.UUID | None = None
    station_name: str | None = None
    station_serial: str | None = None
    slot_number: int | None = None
    rental_id: uuid.UUID | None = None
    rental_code: str | None = None


class ConditionChangeView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    previous_condition: str | None
    previous_code: str | None
    condition: str
    condition_code: str | None
    station_id: uuid.UUID | None
    slot_number: int | None
    source: str
    changed_at: datetime


class BatteryReading(BaseModel):
    at: datetime
    battery_level: int
    source: str = Field(description="last_report, rental_start or rental_return")


class BankRentalView(BaseModel):
    id: uuid.UUID
    code: str
    status: str
    user_id: uuid.UUID
    station_id: uuid.UUID
    slot_number: int
    started_at: datetime | None
    due_at: datetime | None
    ended_at: datetime | None
    return_station_id: uuid.UUID | None
    battery_at_start: int | None
    battery_at_return: int | None
    charged_paisa: int
    created_at: datetime


class OperatorActionView(BaseModel):
    at: datetime
    actor_email: str
    action: str
    details: dict[str, Any]
    outcome: str | None


class PowerBankDetail(PowerBankView):
    condition: str
    condition_code: str | None
    condition_changed_at: datetime | None
    rentable: bool = Field(description="AVAILABLE, HEALTHY and in a slot")
    location: BankLocation
    condition_history: list[ConditionChangeView]
    battery_history: list[BatteryReading]
    rentals: list[BankRentalView]
    operator_actions: list[OperatorActionView]
