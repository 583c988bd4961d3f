"""API models of the operations views (amounts in integer paisa; days in UTC)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class TransactionSource(StrEnum):
    LEDGER = "ledger"  # wallet ledger rows (every money movement of a wallet)
    PAYMENT = "payment"  # top-ups through a payment provider (created, captured, failed, expired)


class GroupBy(StrEnum):
    DAY = "day"
    STATION = "station"
    PACKAGE = "package"


class TransactionView(BaseModel):
    """One ledger row or one payment; fields that do not apply to the source are null."""

    source: TransactionSource
    id: uuid.UUID
    user_id: uuid.UUID
    user_email: str | None
    kind: str = Field(description="Ledger kind (TOPUP, RENTAL_CHARGE, ...) or, for a payment, `PAYMENT`")
    status: str | None = Field(description="Payment status; null for ledger rows (they are final)")
    amount_paisa: int = Field(description="Ledger: signed (credits positive); payment: the amount asked")
    balance_after_paisa: int | None
    rental_id: uuid.UUID | None
    payment_id: uuid.UUID | None
    provider: str | None
    note: str
    created_at: datetime

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "source": "ledger",
                    "id": "7b0f6f7e-3f59-4f1c-9a55-0f1c2f1e9a10",
                    "user_id": "2c1d9a4e-1111-4b7a-9d55-7e0c2f1e9a22",
                    "user_email": "renter@example.com",
                    "kind": "RENTAL_CHARGE",
                    "status": None,
                    "amount_paisa": -5000,
                    "balance_after_paisa": 5000,
                    "rental_id": "4f6e2c1a-2222-4c3b-8e66-1a2b3c4d5e6f",
                    "payment_id": None,
                    "provider": None,
                    "note": "Rental CG7K2P9Q",
                    "created_at": "2026-11-30T09:12:00Z",
                }
            ]
        }
    )


class TransactionTotals(BaseModel):
    count: int = Field(ge=0)
    credits_paisa: int = Field(description="Sum of the positive amounts matched by the filters")
    debits_paisa: int = Field(description="Sum of the negative amounts matched by the filters (≤ 0)")


class TransactionPage(BaseModel):
    items: list[TransactionView]
    total: int = Field(ge=0)
    page: int = Field(ge=1)
    page_size: int = Field(ge=1)
    totals: TransactionTotals


class RevenueRow(BaseModel):
    key: str = Field(
        description="The day (YYYY-MM-DD, UTC), the station id or the package id; `none` when "
        "a ledger row names no rental"
    )
    label: str = Field(description="The day again, the station's name and serial, or the package's name")
    rental_charges_paisa: int = Field(description="RENTAL_CHARGE debits taken (positive)")
    late_fees_paisa: int = Field(description="LATE_FEE debits taken (positive)")
    refunds_paisa: int = Field(description="REFUND credits given back (positive)")
    net_paisa: int = Field(description="rental_charges + late_fees - refunds")
    rentals: int = Field(ge=0, description="Distinct rentals with a charge, fee or refund in the group")


class RevenueTotals(BaseModel):
    rental_charges_paisa: int
    late_fees_paisa: int
    refunds_paisa: int
    net_paisa: int
    rentals: int
    topups_paisa: int = Field(description="TOPUP credits (money renters put in; not revenue)")
    provider_refunds_paisa: int = Field(description="PROVIDER_REFUND debits (top-ups sent back; positive)")
    adjustments_paisa: int = Field(description="ADJUSTMENT rows by staff, signed (not revenue)")


class RevenueReport(BaseModel):
    from_date: date
    to_date: date
    group_by: GroupBy
    currency: str
    rows: list[RevenueRow]
    totals: RevenueTotals

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "from_date": "2026-11-01",
                    "to_date": "2026-11-30",
                    "group_by": "day",
                    "currency": "NPR",
                    "rows": [
                        {
                            "key": "2026-11-02",
                            "label": "2026-11-02",
                            "rental_charges_paisa": 15000,
                            "late_fees_paisa": 2000,
                            "refunds_paisa": 5000,
                            "net_paisa": 12000,
                            "rentals": 3,
                        }
                    ],
                    "totals": {
                        "rental_charges_paisa": 15000,
                        "late_fees_paisa": 2000,
                        "refunds_paisa": 5000,
                        "net_paisa": 12000,
                        "rentals": 3,
                        "topups_paisa": 50000,
                        "provider_refunds_paisa": 0,
                        "adjustments_paisa": 0,
                    },
                }
            ]
        }
    )


class SyncLogEntry(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    station_id: uuid.UUID | None
    station_key: str | None
    station_serial: str | None = None
    event_type: str
    event_id: str | None
    outcome: str
    payload: dict[str, Any]
    error: str | None
    duration_ms: float
    created_at: datetime


class ParkedEvent(BaseModel):
    """A dead letter of the ingest as its ops API lists it (no raw bytes)."""

    model_config = ConfigDict(extra="allow")

    id: int
    station: str | None = None
    reason: str | None = None
    detail: str | None = None
    event_id: str | None = None
    event_type: str | None = None


class RedriveRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"ids": [12, 13], "reason": "core bug fixed in 1.4.2"}]},
    )

    ids: list[int] = Field(default_factory=list, max_length=1000, description="Dead-letter ids to re-drive")
    station: str | None = Field(default=None, max_length=64, description="All parked events of this station")
    all_parked: bool = Field(default=False, description="Every parked event")
    reason: str = Field(min_length=3, max_length=500, description="Why (kept in the staff audit log)")


class RedriveResult(BaseModel):
    count: int = Field(ge=0, description="Events put back into the ingest's spool")
    redriven: list[dict[str, Any]] = Field(description="Dead-letter id, event id, station, spool seq of each")
