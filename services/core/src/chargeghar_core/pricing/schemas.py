"""API models of the pricing domain (amounts in integer paisa, percentages in basis points)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

PaymentModelName = Literal["PREPAID", "POSTPAID"]


class PackageIn(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    description: str = Field(default="", max_length=500)
    duration_minutes: int = Field(gt=0, le=7 * 24 * 60)
    price_paisa: int = Field(ge=0)
    payment_model: PaymentModelName = "PREPAID"
    is_active: bool = True
    late_fee_policy_id: uuid.UUID | None = None


class PackageUpdate(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=100)
    description: str | None = Field(default=None, max_length=500)
    price_paisa: int | None = Field(default=None, ge=0)
    is_active: bool | None = None
    late_fee_policy_id: uuid.UUID | None = None


class PackageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    description: str
    duration_minutes: int
    price_paisa: int
    payment_model: str
    is_active: bool
    late_fee_policy_id: uuid.UUID | None


class PolicyIn(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    rate_multiplier_bp: int = Field(default=10000, ge=0, le=1_000_000)
    flat_per_hour_paisa: int = Field(default=0, ge=0)
    grace_minutes: int = Field(default=0, ge=0, le=24 * 60)
    daily_cap_paisa: int | None = Field(default=None, ge=0)
    is_default: bool = False


class PolicyOut(PolicyIn):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID


class DiscountIn(BaseModel):
    percent_bp: int = Field(ge=0, le=10000, description="1000 = 10 % off")
    is_active: bool = True
    valid_until: datetime | None = None


class DiscountOut(DiscountIn):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    station_id: uuid.UUID
