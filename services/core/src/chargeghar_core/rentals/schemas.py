"""API models of the rentals domain. Money is in integer paisa (``*_paisa``)."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, model_validator

from chargeghar_core.kit.db import utcnow
from chargeghar_core.rentals.models import OUT_STATUSES, Rental
from chargeghar_core.rentals.service import charges_at


class StartRentalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

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

    @classmethod
    def of(cls, rental: Rental, now: datetime | None = None) -> RentalOut:
        accrued = 0
        if rental.status in OUT_STATUSES:
            accrued = charges_at(rental, now or utcnow()).late_fee
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
