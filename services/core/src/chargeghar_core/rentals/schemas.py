"""API models of the rentals domain. Money is in integer paisa (``*_paisa``)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from chargeghar_core.kit.db import utcnow
from chargeghar_core.rentals.models import OUT_STATUSES, Rental
from chargeghar_core.rentals.service import charges_at


class StartRentalRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"station_serial": "KTM-THAMEL-01", "package_id": "5d0c2a8e-3b7f-4c1e-9f4a-1b2c3d4e5f60"},
                {
                    "station_id": "0b8f6c1e-8f0d-4f7e-9a55-2b1d1e0c9a77",
                    "package_id": "5d0c2a8e-3b7f-4c1e-9f4a-1b2c3d4e5f60",
                    "power_bank_serial": "40818052",
                },
            ]
        },
    )

    station_id: uuid.UUID | None = None
    station_serial: str | None = Field(default=None, max_length=64, description="The QR-code serial")
    package_id: uuid.UUID
    power_bank_serial: str | None = Field(
        default=None, pattern=r"^[0-9]{1,10}$", description="Take this bank instead of the best one"
    )

    @model_validator(mode="after")
    def _station_named(self) -> StartRentalRequest:
        if self.station_id is None and not self.station_serial:
            raise ValueError("give station_id or station_serial")
        return self


class ForceCompleteRequest(BaseModel):
    reason: str = Field(min_length=3, max_length=2000)


# A rental just started (for the API docs).
RENTAL_EXAMPLE: dict[str, Any] = {
    "id": "9e3f1c2a-6b5d-4e8f-8a7b-0c1d2e3f4a5b",
    "code": "R7K2M9QXA4",
    "status": "ACTIVE",
    "user_id": "2c4e6a8b-1d3f-4a5c-9e7b-6d8f0a2c4e6b",
    "station_id": "0b8f6c1e-8f0d-4f7e-9a55-2b1d1e0c9a77",
    "slot_number": 3,
    "power_bank_serial": "40818052",
    "package_id": "5d0c2a8e-3b7f-4c1e-9f4a-1b2c3d4e5f60",
    "payment_model": "PREPAID",
    "popup_requested_at": "2025-11-12T06:30:00Z",
    "started_at": "2025-11-12T06:30:02Z",
    "due_at": "2025-11-12T07:30:02Z",
    "ended_at": None,
    "return_station_id": None,
    "return_slot_number": None,
    "returned_on_time": None,
    "battery_at_start": 100,
    "battery_at_return": None,
    "extension_count": 0,
    "package_price_paisa": 5000,
    "discount_bp": 0,
    "usage_fee_paisa": 5000,
    "late_fee_paisa": 0,
    "charged_paisa": 5000,
    "refunded_paisa": 0,
    "amount_due_paisa": 0,
    "accrued_late_fee_paisa": 0,
    "end_reason": None,
    "return_claim": None,
}

# How long a return reported only over device HTTP is shown as "claimed" without corroboration; after it,
# "expired" (operators: the cabinet never confirmed it; a snapshot or 0x40 can still end the rental).
RETURN_CLAIM_TTL = timedelta(hours=1)


class ReturnClaimOut(BaseModel):
    """A return reported only over device HTTP, not (yet) corroborated by MQTT, a `check` or a snapshot."""

    claimed_at: datetime
    station_id: uuid.UUID | None
    slot_number: int | None
    expires_at: datetime
    state: Literal["claimed", "expired", "confirmed"]

    @classmethod
    def of(cls, rental: Rental, now: datetime) -> ReturnClaimOut | None:
        if rental.return_claimed_at is None:
            return None
        expires_at = rental.return_claimed_at + RETURN_CLAIM_TTL
        state: Literal["claimed", "expired", "confirmed"]
        if rental.status not in OUT_STATUSES:
            state = "confirmed"
        else:
            state = "claimed" if now < expires_at else "expired"
        return cls(
            claimed_at=rental.return_claimed_at,
            station_id=rental.return_claim_station_id,
            slot_number=rental.return_claim_slot_number,
            expires_at=expires_at,
            state=state,
        )


class RentalOut(BaseModel):
    id: uuid.UUID
    code: str
    status: str
    user_id: uuid.UUID
    station_id: uuid.UUID
    slot_number: int
    power_bank_serial: str
    package_id: uuid.UUID
    payment_model: str
    popup_requested_at: datetime
    started_at: datetime | None
    due_at: datetime | None
    ended_at: datetime | None
    return_station_id: uuid.UUID | None
    return_slot_number: int | None
    returned_on_time: bool | None
    battery_at_start: int | None
    battery_at_return: int | None
    extension_count: int
    package_price_paisa: int
    discount_bp: int
    usage_fee_paisa: int
    late_fee_paisa: int
    charged_paisa: int
    refunded_paisa: int
    amount_due_paisa: int
    # For a rental still out: what the late fee would be if it came back now (computed, not charged).
    accrued_late_fee_paisa: int
    end_reason: str | None
    # A return the device reported only over HTTP (a claim, see ReturnClaimOut); null when none.
    return_claim: ReturnClaimOut | None = None

    @classmethod
    def of(cls, rental: Rental, now: datetime | None = None) -> RentalOut:
        accrued = 0
        now = now or utcnow()
        if rental.status in OUT_STATUSES:
            accrued = charges_at(rental, now).late_fee
        return cls(
            id=rental.id,
            code=rental.code,
            status=rental.status,
            user_id=rental.user_id,
            station_id=rental.station_id,
            slot_number=rental.slot_number,
            power_bank_serial=rental.power_bank_serial,
            package_id=rental.package_id,
            payment_model=rental.payment_model,
            popup_requested_at=rental.popup_requested_at,
            started_at=rental.started_at,
            due_at=rental.due_at,
            ended_at=rental.ended_at,
            return_station_id=rental.return_station_id,
            return_slot_number=rental.return_slot_number,
            returned_on_time=rental.returned_on_time,
            battery_at_start=rental.battery_at_start,
            battery_at_return=rental.battery_at_return,
            extension_count=rental.extension_count,
            package_price_paisa=rental.package_price_paisa,
            discount_bp=rental.discount_bp,
            usage_fee_paisa=rental.usage_fee_paisa,
            late_fee_paisa=rental.late_fee_paisa,
            charged_paisa=rental.charged_paisa,
            refunded_paisa=rental.refunded_paisa,
            amount_due_paisa=rental.amount_due_paisa,
            accrued_late_fee_paisa=accrued,
            end_reason=rental.end_reason,
            return_claim=ReturnClaimOut.of(rental, now),
        )


class ReceiptLine(BaseModel):
    label: str
    amount_paisa: int


class ReceiptOut(BaseModel):
    rental: RentalOut
    lines: list[ReceiptLine]
    total_paisa: int
    paid_paisa: int
    refunded_paisa: int
    amount_due_paisa: int


class DuesPaid(BaseModel):
    paid_paisa: int
    still_due_paisa: int


class AvailableBank(BaseModel):
    power_bank_serial: str
    slot_number: int
    battery_level: int


class StationAvailability(BaseModel):
    station_id: uuid.UUID
    station_serial: str
    station_status: str
    rentable_now: bool
    rentable_banks: int
    banks: list[AvailableBank]


# ------------------------------------------------------------------ staff corrections of a finished rental

# The same ceiling as prices: no single rental is worth more than Rs 100,000.
MAX_RENTAL_AMOUNT_PAISA = 10_000_000


class RentalOverrideRequest(BaseModel):
    """Exactly one of ``ended_at`` (charges recomputed for that end) or ``total_paisa`` (what the rental
    costs in all, package price included)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "ended_at": "2026-11-30T10:15:00Z",
                    "reason": "Bank was back at 10:15; the cabinet was offline",
                },
                {"total_paisa": 5000, "reason": "Late fee forgiven: station closed early"},
            ]
        },
    )

    ended_at: datetime | None = Field(default=None, description="Corrected end time (with a UTC offset)")
    total_paisa: int | None = Field(default=None, ge=0, le=MAX_RENTAL_AMOUNT_PAISA)
    reason: str = Field(min_length=3, max_length=2000)

    @model_validator(mode="after")
    def one_correction(self) -> RentalOverrideRequest:
        if (self.ended_at is None) == (self.total_paisa is None):
            raise ValueError("give exactly one of ended_at and total_paisa")
        if self.ended_at is not None and self.ended_at.tzinfo is None:
            raise ValueError("ended_at needs a UTC offset")
        return self


class WaiveDueRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"reason": "Goodwill after a faulty bank"}, {"amount_paisa": 1500, "reason": "Half"}]
        },
    )

    amount_paisa: int | None = Field(
        default=None, gt=0, le=MAX_RENTAL_AMOUNT_PAISA, description="Omitted: the whole due"
    )
    reason: str = Field(min_length=3, max_length=2000)


class WalletRefundRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"amount_paisa": 2500, "reason": "Bank was empty at pick-up"}]},
    )

    amount_paisa: int | None = Field(
        default=None, gt=0, le=MAX_RENTAL_AMOUNT_PAISA, description="Omitted: all that was collected"
    )
    reason: str = Field(min_length=3, max_length=2000)
