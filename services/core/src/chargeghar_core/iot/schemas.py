"""OpenAPI documentation of the internal endpoint (the wire models themselves live in the shared library)."""

from __future__ import annotations

from typing import Any

from chargeghar_protocol.contract import EVENT_TYPES, BatchItemResult, ErrorEnvelope
from pydantic import BaseModel, ConfigDict

# contract.md §2.1, verbatim: what the legacy Java bridge sends.
LEGACY_FULL_EXAMPLE: dict[str, Any] = {
    "type": "full",
    "timestamp": 1762928776,
    "device": {
        "serial_number": "864601069946994",
        "imei": "864601069946994",
        "signal_strength": "31",
        "wifi_ssid": "",
        "last_heartbeat": "2025-11-12T06:26:16.509Z",
        "status": "ONLINE",
        "hardware_info": {"firmware_version": "2.1.5", "protocol_version": "0xA8"},
    },
    "station": {
        "serial_number": "864601069946994",
        "total_slots": 4,
        "pinboards": [{"index": 1, "io": 0, "temperature": 0, "soft_version": 4, "hard_version": 15}],
    },
    "slots": [
        {
            "slot_number": 1,
            "status": "AVAILABLE",
            "battery_level": 0,
            "slot_metadata": {
                "micro_switch": "1",
                "solenoid_valve": "0",
                "lock_count": 0,
                "last_updated": "2025-11-12T06:26:16.509Z",
            },
        },
        {
            "slot_number": 3,
            "status": "OCCUPIED",
            "battery_level": 100,
            "power_bank_serial": "40818052",
            "slot_metadata": {
                "micro_switch": "0",
                "solenoid_valve": "0",
                "lock_count": 0,
                "last_updated": "2025-11-12T06:26:16.509Z",
            },
        },
    ],
    "power_banks": [
        {
            "serial_number": "40818052",
            "status": "AVAILABLE",
            "battery_level": 100,
            "current_slot": 3,
            "hardware_info": {
                "temperature": 24,
                "voltage": 50,
                "current": 2,
                "soft_version": 25,
                "hard_version": 0,
                "micro_switch": "0",
                "solenoid_valve": "0",
                "area_code": 73,
            },
        }
    ],
}

RETURNED_EXAMPLE: dict[str, Any] = {
    "type": "returned",
    "timestamp": 1762928800,
    "device": {"serial_number": "864601069946994", "last_heartbeat": "2025-11-12T06:26:40Z"},
    "return_event": {
        "power_bank_serial": "40818052",
        "slot_number": 3,
        "battery_level": 95,
        "returned_at": "2025-11-12T06:26:40Z",
        "condition": "NORMAL",
        "hardware_info": {},
    },
}

STATUS_EXAMPLE: dict[str, Any] = {
    "type": "status",
    "timestamp": 1762928900,
    "device": {
        "serial_number": "864601069946994",
        "status": "OFFLINE",
        "hardware_info": {"signal_strength": 27, "backup_power": 0},
    },
}


class StationDataEnvelope(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "success": True,
                    "message": "Station data synchronised",
                    "data": {
                        "station_id": "0b8f6c1e-8f0d-4f7e-9a55-2b1d1e0c9a77",
                        "station_serial": "864601069946994",
                        "slots_updated": 4,
                        "powerbanks_updated": 1,
                        "returns_reconciled": 0,
                        "applied": True,
                        "timestamp": "2025-11-12T06:26:17Z",
                    },
                }
            ]
        }
    )

    success: bool = True
    message: str
    data: dict[str, Any]


class BatchData(BaseModel):
    results: list[BatchItemResult]


class BatchEnvelope(BaseModel):
    success: bool = True
    message: str
    data: BatchData


def _error(description: str, code: str, message: str) -> dict[str, Any]:
    return {
        "model": ErrorEnvelope,
        "description": description,
        "content": {"application/json": {"example": {"success": False, "message": message, "error": code}}},
    }


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error(
        "INVALID_JSON, INVALID_TYPE, VALIDATION_ERROR (details = field paths) or INVALID_TIMESTAMP",
        "VALIDATION_ERROR",
        "Request validation failed",
    ),
    401: _error("Missing, malformed or expired bearer token", "UNAUTHORIZED", "Token expired"),
    403: _error(
        "FORBIDDEN (not staff/service), IP_NOT_ALLOWED, MISSING_HEADERS or INVALID_SIGNATURE",
        "INVALID_SIGNATURE",
        "Invalid request signature",
    ),
    429: _error(
        "RATE_LIMITED (per caller, per minute)", "RATE_LIMITED", "Rate limit exceeded; retry in 12 s"
    ),
    500: _error(
        "SYNC_ERROR / RETURN_ERROR / STATUS_ERROR; the failure is in the sync log",
        "SYNC_ERROR",
        "Station event could not be processed",
    ),
}

SINGLE_EVENT_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": (
            "One station event, signed: X-Signature = base64(HMAC-SHA256(secret, raw body + X-Timestamp))"
        ),
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["type", "timestamp", "device"],
                    "properties": {"type": {"enum": list(EVENT_TYPES)}},
                },
                "examples": {
                    "full (legacy bridge)": {"value": LEGACY_FULL_EXAMPLE},
                    "returned": {"value": RETURNED_EXAMPLE},
                    "status": {"value": STATUS_EXAMPLE},
                },
            }
        },
    },
    # X-Signature / X-Timestamp are HMAC security schemes (kit/openapi.py, set for /api/internal/*).
    "parameters": [
        {
            "name": "X-Event-Id",
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": (
                "Extension: stable id of the logical event (UUID or content key). Same id = same event: a "
                "repeat answers 200 with the first result and `duplicate: true`. Without it the signature "
                "value is the idempotency key (legacy bridge). Cut to 200 characters."
            ),
        },
    ],
}

BATCH_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": '{"events": [<event>, ...]}, each with its own event_id, signed as one body',
        "content": {
            "application/json": {
                "example": {
                    "events": [
                        {**STATUS_EXAMPLE, "event_id": "b6a1c2d4-0001"},
                        {**LEGACY_FULL_EXAMPLE, "event_id": "b6a1c2d4-0002"},
                    ]
                }
            }
        },
    },
}
