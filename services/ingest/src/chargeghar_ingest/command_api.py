"""``POST /internal/devices/{imei}/commands`` — core asks a station to do something (contract.md §3)."""

from __future__ import annotations

import hmac
import json
from typing import Any

import structlog
from chargeghar_protocol.contract import (
    CommandRequest,
    CommandResult,
    ErrorEnvelope,
    SuccessEnvelope,
    mask_command_secrets,
    validation_error_details,
)
from chargeghar_protocol.signing import SignatureError, verify_request_signature
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from redis.exceptions import RedisError

from chargeghar_ingest.commands import CommandRejected
from chargeghar_ingest.openapi import SIGNATURE_ERRORS, SIGNED_SECURITY, error_response
from chargeghar_ingest.runtime import IngestRuntime

log = structlog.get_logger(__name__)
router = APIRouter()

SERVICE_TOKEN_HEADER = "X-Service-Token"  # noqa: S105 - a header name, not a secret
CALLER_HEADER = "X-Caller"


def error(status: int, code: str, message: str, details: dict[str, Any] | None = None) -> JSONResponse:
    return JSONResponse(
        ErrorEnvelope(message=message, error=code, details=details).to_wire(), status_code=status
    )


def _command_body_schema() -> dict[str, Any]:
    """The request model's schema, with what each field means (the body is read raw: it is signed)."""
    schema = CommandRequest.model_json_schema()
    meaning = {
        "cmd": "The device command (protocol.md §5)",
        "data": "popup_sn: the bank's decimal serial; popup: slot 1-255; setMode: wifi|4g; volume: 0-100",
        "io": 'popup: "0" or "1" (which side of a double cabinet); defaults to "0"',
        "username": "setWifi: the SSID",
        "password": "setWifi: the Wi-Fi password (masked in the audit log)",
        "command_id": "Idempotency key: a command_id sent before is refused (409 CONFLICT), never resent",
        "timeout_s": "How long to wait for the device's reply (at most the configured maximum)",
    }
    for name, text in meaning.items():
        schema["properties"][name]["description"] = text
    return schema


COMMAND_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A command, signed over these exact bytes (contract.md §3)",
        "content": {
            "application/json": {
                "schema": _command_body_schema(),
                "examples": {
                    "eject a power bank": {
                        "value": {
                            "cmd": "popup_sn",
                            "data": "40818052",
                            "command_id": "3f2b6c1a-9d4e-4f1a-8b2c-7e6d5c4b3a21",
                            "timeout_s": 15,
                        }
                    },
                    "eject from a slot": {"value": {"cmd": "popup", "data": "3", "io": "0"}},
                    "ask for a snapshot": {"value": {"cmd": "check"}},
                },
            }
        },
    },
    "parameters": [
        {
            "name": CALLER_HEADER,
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": "Who asks (kept in the audit log); defaults to core",
        }
    ],
    "security": SIGNED_SECURITY,
}


@router.post(
    "/internal/devices/{imei}/commands",
    summary="Send a command to a station and wait for its reply",
    description=(
        "One command in flight per station (across replicas); the station must be online. Ejects "
        "(`popup_sn`, `popup`) go out at QoS 0 and are never retried. The answer is 200 whatever the device "
        "did: `data.outcome` is `ok`, `failed` or `timeout` (a late reply still reaches core as a "
        "`command_result` event)."
    ),
    response_model=SuccessEnvelope[CommandResult],
    responses={
        **SIGNATURE_ERRORS,
        400: error_response(
            "VALIDATION_ERROR", "INVALID_TIMESTAMP, or VALIDATION_ERROR: a bad imei or command (field paths)"
        ),
        409: error_response(
            "DEVICE_BUSY",
            "DEVICE_BUSY (another command in flight), DEVICE_OFFLINE, or CONFLICT (command_id sent before)",
        ),
        503: error_response("SERVICE_UNAVAILABLE", "Redis (station lock, presence) unavailable; retry later"),
    },
    openapi_extra=COMMAND_DOC,
)
async def send_command(imei: str, request: Request) -> JSONResponse:
    runtime: IngestRuntime = request.app.state.runtime
    settings = runtime.settings
    body = await request.body()
    correlation_id = request.headers.get("X-Correlation-Id")
    with structlog.contextvars.bound_contextvars(station_id=imei, correlation_id=correlation_id):
        try:
            verify_request_signature(
                settings.core.hmac_secret.get_secret_value(),
                body,
                request.headers.get("X-Timestamp"),
                request.headers.get("X-Signature"),
            )
        except SignatureError as exc:
            log.warning("command.auth_failed", error=exc.code)
            return error(exc.http_status, exc.code, exc.message)
        token = settings.commands.service_token
        if token is not None:
            presented = request.headers.get(SERVICE_TOKEN_HEADER, "")
            if not hmac.compare_digest(presented.encode(), token.get_secret_value().encode()):
                return error(403, "FORBIDDEN", "Missing or wrong service token")
        if not (imei.isascii() and imei.isalnum() and len(imei) <= 32):
            return error(400, "VALIDATION_ERROR", "imei must be the station's alphanumeric id")
        caller = request.headers.get(CALLER_HEADER) or "core"
        try:
            command = CommandRequest.model_validate_json(body)
        except ValidationError as exc:
            await _audit_invalid(runtime, imei, body, caller, correlation_id)
            return error(400, "VALIDATION_ERROR", "Invalid command", validation_error_details(exc))
        try:
            result = await runtime.commands.execute(
                imei, command, caller=caller, correlation_id=correlation_id
            )
        except CommandRejected as exc:
            return error(exc.http_status, exc.code, exc.message)  # audited by the command service
        except (RedisError, OSError, TimeoutError) as exc:
            # Without the shared lock/presence no command may go out (it could double an eject).
            log.error("command.coordination_unavailable", error=repr(exc))
            await runtime.commands.audit_refused(
                imei,
                cmd=command.cmd,
                command_id=command.command_id,
                caller=caller,
                payload=command.audit_payload(),
                code="SERVICE_UNAVAILABLE",
                http_status=503,
                correlation_id=correlation_id,
            )
            return error(503, "SERVICE_UNAVAILABLE", "Coordination store unavailable; retry later")
    envelope: SuccessEnvelope[dict[str, Any]] = SuccessEnvelope(
        message="Command finished", data=result.model_dump(mode="json")
    )
    return JSONResponse(envelope.model_dump(mode="json"))


async def _audit_invalid(
    runtime: IngestRuntime, imei: str, body: bytes, caller: str, correlation_id: str | None
) -> None:
    """A signed command that is not a valid command (unknown cmd, bad data, ...): audited as refused with
    what it asked, secrets masked. (Unsigned requests are not audited: anyone could fill the trail.)"""
    try:
        raw = json.loads(body)
    except ValueError:
        raw = None
    asked: dict[str, Any] = raw if isinstance(raw, dict) else {}
    cmd, command_id = asked.get("cmd"), asked.get("command_id")
    await runtime.commands.audit_refused(
        imei,
        cmd=cmd if isinstance(cmd, str) and cmd else "(invalid)",
        command_id=command_id if isinstance(command_id, str) else None,
        caller=caller,
        payload=mask_command_secrets(asked) if raw is not None else {"body": "(not a JSON object)"},
        code="VALIDATION_ERROR",
        http_status=400,
        correlation_id=correlation_id,
    )
