"""``POST /internal/devices/{imei}/commands`` — core asks a station to do something (contract.md §3)."""

from __future__ import annotations

import hmac
from typing import Any

import structlog
from chargeghar_protocol.contract import (
    CommandRequest,
    ErrorEnvelope,
    SuccessEnvelope,
    validation_error_details,
)
from chargeghar_protocol.signing import SignatureError, verify_request_signature
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from redis.exceptions import RedisError

from chargeghar_ingest.commands import CommandRejected
from chargeghar_ingest.runtime import IngestRuntime

log = structlog.get_logger(__name__)
router = APIRouter()

SERVICE_TOKEN_HEADER = "X-Service-Token"  # noqa: S105 - a header name, not a secret
CALLER_HEADER = "X-Caller"


def error(status: int, code: str, message: str, details: dict[str, Any] | None = None) -> JSONResponse:
    return JSONResponse(
        ErrorEnvelope(message=message, error=code, details=details).to_wire(), status_code=status
    )


@router.post("/internal/devices/{imei}/commands")
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
        try:
            command = CommandRequest.model_validate_json(body)
        except ValidationError as exc:
            return error(400, "VALIDATION_ERROR", "Invalid command", validation_error_details(exc))
        try:
            result = await runtime.commands.execute(
                imei, command, caller=request.headers.get(CALLER_HEADER) or "core"
            )
        except CommandRejected as exc:
            return error(exc.http_status, exc.code, exc.message)
        except (RedisError, OSError, TimeoutError) as exc:
            # Without the shared lock/presence no command may go out (it could double an eject).
            log.error("command.coordination_unavailable", error=repr(exc))
            return error(503, "SERVICE_UNAVAILABLE", "Coordination store unavailable; retry later")
    envelope: SuccessEnvelope[dict[str, Any]] = SuccessEnvelope(
        message="Command finished", data=result.model_dump(mode="json")
    )
    return JSONResponse(envelope.model_dump(mode="json"))
