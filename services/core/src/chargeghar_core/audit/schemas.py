"""API models of the audit-log endpoint."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class AuditEntryView(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "4f1c2b9e-2f55-4c47-9d8e-6c1b7a0e9d11",
                    "created_at": "2026-12-01T10:15:00Z",
                    "actor_id": "0b8f6c1e-8f0d-4f7e-9a55-2b1d1e0c9a77",
                    "actor_email": "ops@chargeghar.example",
                    "actor_role": "admin",
                    "action": "device.command",
                    "target_type": "station",
                    "target_id": "864601068948301",
                    "station_id": "5d7e1c40-3a55-4d2b-8f51-0f6a3c1e2b77",
                    "details": {"cmd": "wifi", "data": {"ssid": "cafe", "password": "***"}},
                    "outcome": "ok",
                    "elapsed_ms": 812.5,
                }
            ]
        },
    )

    id: uuid.UUID
    created_at: datetime
    actor_id: uuid.UUID
    actor_email: str
    actor_role: str
    action: str
    target_type: str
    target_id: str | None
    station_id: uuid.UUID | None
    details: dict[str, Any]
    outcome: str | None
    elapsed_ms: float | None
