"""API models of the pricing domain (amounts in integer paisa, percentages in basis points)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from chargeghar_core.kit.schemas import non_null

# Upper bounds: far above any real tariff (100,000 NPR), far below what a BIGINT sum could overflow.
MAX_PRICE_PAISA = 10_000_000

PaymentModelName = Literal["PREPAID", "POSTPAID"]


class PackageIn(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    description: str = Field(default="", max_length=500)
    duration_minutes: int = Field(gt=0, le=7 * 24 * 60)
    price_paisa: int = Field(ge=0, le=MAX_PRICE_PAISA)
    payment_model: PaymentModelName = "PREPAID"
    is_active: bool = True
    late_fee_policy_id: uuid.UUID | None = None


class PackageUpdate(BaseModel):
    """Omitted fields are left unchanged; ``late_fee_policy_id: null`` removes the policy."""

    name: str | None = Field(default=None, min_length=1, max_length=100)
    description: str | None = Field(default=None, max_length=500)
    price_paisa: int | None = Field(default=None, ge=0, le=MAX_PRICE_PAISA)
    is_active: bool | None = None
    late_fee_policy_id: uuid.UUID | None = None

    _not_null = non_null("name", "description", "price_paisa", "is_active")


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
    flat_per_hour_paisa: int = Field(default=0, ge=0, le=MAX_PRICE_PAISA)
    grace_minutes: int = Field(default=0, ge=0, le=24 * 60)
    daily_cap_paisa: int | None = Field(default=None, ge=0, le=MAX_PRICE_PAISA)
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
