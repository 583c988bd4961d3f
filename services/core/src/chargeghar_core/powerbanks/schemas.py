"""API models of the power-bank admin endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
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
