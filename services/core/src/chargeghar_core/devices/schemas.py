"""API models of the device registry (admin endpoints and the ingest's internal check-in)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from chargeghar_core.devices.models import DeviceStatus

# What the ingest accepts as a station id (ASCII letters/digits, at most 32): IMEIs are 15 digits.
IMEI_PATTERN = r"^[A-Za-z0-9]{1,32}$"
Imei = Annotated[str, StringConstraints(pattern=IMEI_PATTERN)]


class DeviceView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    imei: str
    status: DeviceStatus
    first_seen_at: datetime | None
    last_seen_at: datetime | None
    approved_by: uuid.UUID | None
    approved_at: datetime | None
    revoked_by: uuid.UUID | None
    revoked_at: datetime | None
    note: str | None
    created_at: datetime


class DeviceRegister(BaseModel):
    """Register a station IMEI as approved (before it ever connects, or approving a pending one)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"imei": "864601069946994", "note": "Kathmandu mall, cabinet 3"}]},
    )

    imei: Imei
    note: str | None = Field(default=None, max_length=200)


class DeviceDecision(BaseModel):
    """Optional reason kept with an approval or revocation."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"note": "stolen cabinet"}]})

    note: str | None = Field(default=None, max_length=200)


class DeviceCheckIn(BaseModel):
    """The ingest's report of a connect (signed body of POST /api/internal/devices/{imei}/connect)."""

    model_config = ConfigDict(extra="forbid")

    # `open` provisioning: approve an unknown (or pending) IMEI on the spot. A revoked one stays revoked.
    approve: bool = False


class DeviceStatusView(BaseModel):
    imei: str
    status: DeviceStatus
    # True when this check-in created the row.
    created: bool
