"""Operations endpoints: health and metrics (open), and the signed admin calls over parked events."""

from __future__ import annotations

import hmac
import time
from dataclasses import asdict

import structlog
from chargeghar_protocol.contract import validation_error_details
from chargeghar_protocol.signing import SignatureError, verify_request_signature
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chargeghar_ingest.command_api import CALLER_HEADER, SERVICE_TOKEN_HEADER, error
from chargeghar_ingest.metrics import Metrics
from chargeghar_ingest.openapi import SIGNATURE_ERRORS, SIGNED_SECURITY, error_response
from chargeghar_ingest.runtime import IngestRuntime
from chargeghar_ingest.spool import PARKED, RedrivenEvent

log = structlog.get_logger(__name__)
router = APIRouter()


def _runtime(request: Request) -> IngestRuntime:
    runtime: IngestRuntime = request.app.state.runtime
    return runtime


async def _gauges(runtime: IngestRuntime) -> dict[str, float]:
    transport = runtime.transport
    return {
        "spool_pending_events": float(await runtime.spool.pending_count()),
        "dead_letter_rows": float(await runtime.spool.dead_letter_count()),
        # ALERT when above 0: events core kept failing, waiting for an operator to re-drive them.
        "parked_events": float(await runtime.spool.dead_letter_count(PARKED)),
        "mqtt_connected": 1.0 if transport is not None and transport.connected else 0.0,
        "mqtt_connects": float(transport.connect_count if transport is not None else 0),
        "mqtt_handler_errors": float(transport.handler_errors if transport is not None else 0),
        "uptime_seconds": round(time.time() - runtime.started_at, 3),
    }


@router.get("/health", summary="Liveness plus MQTT, Redis and spool state at a glance")
async def health(request: Request) -> JSONResponse:
    """Liveness plus what an operator wants at a glance; 200 even while MQTT reconnects (devices can
    still upload over HTTP and everything is spooled)."""
    runtime = _runtime(request)
    transport = runtime.transport
    body = {
        "status": "ok",
        "replica": runtime.replica,
        "mqtt": "disabled" if transport is None else ("connected" if transport.connected else "reconnecting"),
        "redis": "configured" if runtime.redis is not None else "in-process",
        "spool_pending": await runtime.spool.pending_count(),
        "parked_events": await runtime.spool.dead_letter_count(PARKED),
    }
    return JSONResponse(body)


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics_text(request: Request) -> Response:
    runtime = _runtime(request)
    values = runtime.metrics.snapshot(await _gauges(runtime))
    return Response(Metrics.render_prometheus(values), media_type="text/plain; version=0.0.4")


@router.get("/metrics.json", summary="The same metrics as one JSON object")
async def metrics_json(request: Request) -> JSONResponse:
    runtime = _runtime(request)
    return JSONResponse(runtime.metrics.snapshot(await _gauges(runtime)))


# ------------------------------------------------------------------------------------------ admin calls
# Signed like the command API (contract.md §3: HMAC of the raw body with the shared secret, X-Timestamp,
# and the service token when one is configured): core's operations API or an operator with the secret.


class RedriveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Dead-letter ids (parked or refused forwarder events); station / all_parked pick parked ones only.
    ids: list[int] = Field(default_factory=list, max_length=10_000)
    station: str | None = None
    all_parked: bool = False


def _refuse_unsigned(runtime: IngestRuntime, request: Request, body: bytes) -> JSONResponse | None:
    settings = runtime.settings
    try:
        verify_request_signature(
            settings.core.hmac_secret.get_secret_value(),
            body,
            request.headers.get("X-Timestamp"),
            request.headers.get("X-Signature"),
        )
    except SignatureError as exc:
        log.warning("ops.auth_failed", path=request.url.path, error=exc.code)
        return error(exc.http_status, exc.code, exc.message)
    token = settings.commands.service_token
    if token is not None:
        presented = request.headers.get(SERVICE_TOKEN_HEADER, "")
        if not hmac.compare_digest(presented.encode(), token.get_secret_value().encode()):
            return error(403, "FORBIDDEN", "Missing or wrong service token")
    return None


@router.get(
    "/internal/ops/dead-letters",
    summary="Newest dead letters and parked events (signed)",
    responses={
        200: {
            "description": "`data.items`: id, time, source, station, reason, detail, event id/type, raw size",
            "content": {
                "application/json": {
                    "example": {"success": True, "message": "0 dead letters", "data": {"items": []}}
                }
            },
        },
        **SIGNATURE_ERRORS,
    },
    openapi_extra={"security": SIGNED_SECURITY},
)
async def list_dead_letters(
    request: Request, reason: str | None = None, station: str | None = None, limit: int = 100
) -> JSONResponse:
    """Newest dead letters (``reason=parked`` for the parked events), without their raw bytes."""
    runtime = _runtime(request)
    refusal = _refuse_unsigned(runtime, request, await request.body())
    if refusal is not None:
        return refusal
    rows = await runtime.spool.dead_letters(limit=max(1, min(limit, 1000)), reason=reason, station=station)
    items = [
        {
            "id": row.id,
            "created_at": row.created_at,
            "source": row.source,
            "station": row.station,
            "reason": row.reason,
            "detail": row.detail,
            "event_id": row.event_id,
            "event_type": (row.body or {}).get("type"),
            "raw_len": row.raw_len,
            "raw_sha256": row.raw_sha256,
        }
        for row in rows
    ]
    return JSONResponse({"success": True, "message": f"{len(items)} dead letters", "data": {"items": items}})


@router.post(
    "/internal/ops/redrive",
    summary="Re-drive parked (or refused) events to core (signed)",
    responses={
        200: {
            "description": "`data.count` and `data.redriven` (dead-letter id, event id, station, spool seq)",
            "content": {
                "application/json": {
                    "example": {
                        "success": True,
                        "message": "0 events re-driven",
                        "data": {"count": 0, "redriven": []},
                    }
                }
            },
        },
        **SIGNATURE_ERRORS,
        400: error_response(
            "VALIDATION_ERROR", "INVALID_TIMESTAMP, or VALIDATION_ERROR: name ids, a station, or all_parked"
        ),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "What to re-drive, signed over these exact bytes",
            "content": {
                "application/json": {
                    "schema": RedriveRequest.model_json_schema(),
                    "examples": {
                        "by id": {"value": {"ids": [17, 18]}},
                        "one station": {"value": {"station": "864601069946994"}},
                        "everything parked": {"value": {"all_parked": True}},
                    },
                }
            },
        },
        "security": SIGNED_SECURITY,
    },
)
async def redrive(request: Request) -> JSONResponse:
    """Put parked (or refused) events back into the spool at their original place, attempts reset."""
    runtime = _runtime(request)
    body = await request.body()
    refusal = _refuse_unsigned(runtime, request, body)
    if refusal is not None:
        return refusal
    try:
        selection = RedriveRequest.model_validate_json(body)
    except ValidationError as exc:
        return error(400, "VALIDATION_ERROR", "Invalid re-drive request", validation_error_details(exc))
    if not selection.ids and selection.station is None and not selection.all_parked:
        return error(400, "VALIDATION_ERROR", "Name ids, a station, or all_parked")
    moved = await runtime.spool.redrive(
        ids=selection.ids, station=selection.station, all_parked=selection.all_parked
    )
    record_redrive(runtime.metrics, moved, by=request.headers.get(CALLER_HEADER) or "ops-api")
    data = {"count": len(moved), "redriven": [asdict(m) for m in moved]}
    return JSONResponse({"success": True, "message": f"{len(moved)} events re-driven", "data": data})


def record_redrive(metrics: Metrics | None, moved: list[RedrivenEvent], *, by: str) -> None:
    if metrics is not None and moved:
        metrics.inc("events_redriven_total", len(moved))
    for event in moved:
        log.warning(
            "ops.event_redriven",
            by=by,
            dead_letter_id=event.dead_letter_id,
            event_id=event.event_id,
            station_id=event.station,
            seq=event.seq,
        )
