"""API models of the operations endpoints (dashboard, staff device commands)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class StationCounts(BaseModel):
    total: int = 0
    online: int = 0
    offline: int = 0
    maintenance: int = 0
    not_deployed: int = 0


class BankCounts(BaseModel):
    total: int = 0
    rentable: int = Field(default=0, description="AVAILABLE and HEALTHY")
    rented: int = 0
    device_fault: int = Field(default=0, description="The cabinet reports a fault (any operator status)")
    maintenance: int = 0
    damaged: int = 0
    retired: int = 0
    lost: int = 0


class RentalCounts(BaseModel):
    pending_popup: int = 0
    active: int = 0
    overdue: int = 0
    completed_today: int = 0
    outstanding_dues_paisa: int = 0


class SyncHealth(BaseModel):
    applied_last_hour: int = 0
    failed_last_hour: int = 0
    applied_last_day: int = 0
    failed_last_day: int = 0
    parked_events: int | None = Field(
        default=None,
        description="Dead or parked events live in the ingest's spool (`chargeghar ingest-dead-letters`); "
        "not reported by core (null)",
    )


class MoneyToday(BaseModel):
    top_ups_paisa: int = 0
    rental_revenue_paisa: int = Field(default=0, description="Rental charges and late fees taken today")
    refunds_paisa: int = Field(
        default=0, description="Refunds to wallets plus refunds to the payment provider"
    )


class Dashboard(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "generated_at": "2026-12-01T10:15:00Z",
                    "day_started_at": "2026-11-30T18:15:00Z",
                    "stations": {
                        "total": 120,
                        "online": 101,
                        "offline": 9,
                        "maintenance": 2,
                        "not_deployed": 8,
                    },
                    "banks": {
                        "total": 900,
                        "rentable": 610,
                        "rented": 240,
                        "device_fault": 12,
                        "maintenance": 20,
                        "damaged": 5,
                        "retired": 10,
                        "lost": 3,
                    },
                    "rentals": {
                        "pending_popup": 1,
                        "active": 230,
                        "overdue": 10,
                        "completed_today": 512,
                        "outstanding_dues_paisa": 125000,
                    },
                    "sync": {
                        "applied_last_hour": 4200,
                        "failed_last_hour": 2,
                        "applied_last_day": 98000,
                        "failed_last_day": 31,
                        "parked_events": None,
                    },
                    "money_today": {
                        "top_ups_paisa": 450000,
                        "rental_revenue_paisa": 380000,
                        "refunds_paisa": 5000,
                    },
                }
            ]
        }
    )

    generated_at: datetime
    day_started_at: datetime = Field(description="Start of today in Nepal time (UTC+05:45), as UTC")
    stations: StationCounts
    banks: BankCounts
    rentals: RentalCounts
    sync: SyncHealth
    money_today: MoneyToday


StaffCommandName = Literal[
    "check",
    "check_all",
    "upload_all",
    "popup",
    "popup_sn",
    "reboot",
    "getWifi",
    "setWifi",
    "setMode",
    "volume",
]


class StaffCommand(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"cmd": "check"},
                {"cmd": "popup", "data": "3"},
                {"cmd": "popup_sn", "data": "40818052"},
                {"cmd": "setWifi", "username": "cafe-wifi", "password": "s3cret"},
                {"cmd": "volume", "data": "60"},
            ]
        },
    )

    cmd: StaffCommandName
    data: str = Field(
        default="", max_length=64, description="Slot (popup), serial (popup_sn), 0-100 (volume)"
    )
    io: Literal["0", "1"] | None = None
    username: str | None = Field(default=None, min_length=1, max_length=64, description="setWifi: the SSID")
    password: str | None = Field(default=None, max_length=64, description="setWifi: masked in every log")
    timeout_s: float = Field(default=15.0, gt=0, le=60)


class StaffCommandResult(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "command_id": "9b2e2f7e-0d7c-4d8b-b1f4-6f9b2a0c1d22",
                    "cmd": "popup",
                    "outcome": "ok",
                    "reply": {"slot": 3, "result": 1, "sn": "40818052"},
                    "elapsed_ms": 812,
                }
            ]
        }
    )

    command_id: str
    cmd: str
    outcome: Literal["ok", "failed", "timeout"]
    reply: dict[str, Any] | None
    elapsed_ms: int
