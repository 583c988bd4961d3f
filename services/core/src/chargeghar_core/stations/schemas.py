"""API models of the station endpoints (core's own public API, not the wire contract)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field, JsonValue

_STATION_EXAMPLE: dict[str, Any] = {
    "id": "0b8f6c1e-8f0d-4f7e-9a55-2b1d1e0c9a77",
    "serial_number": "CG-KTM-0001",
    "name": "Durbar Marg – Civil Mall",
    "latitude": 27.7104,
    "longitude": 85.3180,
    "address": "Durbar Marg, Kathmandu",
    "landmark": "Ground floor, next to the lift",
    "status": "ONLINE",
    "total_slots": 8,
    "is_maintenance": False,
    "rentable_banks": 5,
    "distance_km": 0.42,
    "last_heartbeat": "2025-11-12T06:26:16.509Z",
}


class StationSummary(BaseModel):
    model_config = ConfigDict(
        from_attributes=True, json_schema_extra={"examples": [cast(JsonValue, _STATION_EXAMPLE)]}
    )

    id: uuid.UUID
    serial_number: str
    name: str
    latitude: float
    longitude: float
    address: str
    landmark: str
    status: str
    total_slots: int
    is_maintenance: bool
    rentable_banks: int = 0
    distance_km: float | None = None
    last_heartbeat: datetime | None = None


class PowerBankInSlot(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    serial_number: str
    model: str
    capacity_mah: int
    status: str
    battery_level: int


class SlotView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    slot_number: int
    status: str
    battery_level: int
    power_bank: PowerBankInSlot | None = None


class StationDetail(StationSummary):
    slots: list[SlotView] = Field(default_factory=list)


class AdminStationView(StationSummary):
    imei: str
    is_deployed: bool
    hardware_info: dict[str, Any]
    observed_at: datetime | None = None
    status_changed_at: datetime | None = None
    created_at: datetime
    slots: list[SlotView] = Field(default_factory=list)


class StationUpdate(BaseModel):
    """Admin configuration of a station; omitted fields are left unchanged."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "Durbar Marg – Civil Mall",
                    "serial_number": "CG-KTM-0001",
                    "latitude": 27.7104,
                    "longitude": 85.3180,
                    "address": "Durbar Marg, Kathmandu",
                    "landmark": "Ground floor, next to the lift",
                    "is_deployed": True,
                }
            ]
        },
    )

    name: str | None = Field(default=None, min_length=1, max_length=200)
    serial_number: str | None = Field(default=None, min_length=1, max_length=64)
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)
    address: str | None = Field(default=None, max_length=500)
    landmark: str | None = Field(default=None, max_length=200)
    is_deployed: bool | None = None
    is_maintenance: bool | None = None


class StatusHistoryView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    previous_status: str | None
    status: str
    trigger: str
    changed_at: datetime
    previous_duration_s: float | None


class SyncLogView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    station_key: str | None
    event_type: str
    event_id: str | None
    outcome: str
    payload: dict[str, Any]
    error: str | None
    duration_ms: float
    created_at: datetime
