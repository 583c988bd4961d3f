"""Operations endpoints: health and metrics."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from chargeghar_ingest.metrics import Metrics
from chargeghar_ingest.runtime import IngestRuntime

router = APIRouter()


def _runtime(request: Request) -> IngestRuntime:
    runtime: IngestRuntime = request.app.state.runtime
    return runtime


async def _gauges(runtime: IngestRuntime) -> dict[str, float]:
    transport = runtime.transport
    return {
        "spool_pending_events": float(await runtime.spool.pending_count()),
        "dead_letter_rows": float(await runtime.spool.dead_letter_count()),
        "mqtt_connected": 1.0 if transport is not None and transport.connected else 0.0,
        "mqtt_connects": float(transport.connect_count if transport is not None else 0),
        "mqtt_handler_errors": float(transport.handler_errors if transport is not None else 0),
        "uptime_seconds": round(time.time() - runtime.started_at, 3),
    }


@router.get("/health")
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
    }
    return JSONResponse(body)


@router.get("/metrics")
async def metrics_text(request: Request) -> Response:
    runtime = _runtime(request)
    values = runtime.metrics.snapshot(await _gauges(runtime))
    return Response(Metrics.render_prometheus(values), media_type="text/plain; version=0.0.4")


@router.get("/metrics.json")
async def metrics_json(request: Request) -> JSONResponse:
    runtime = _runtime(request)
    return JSONResponse(runtime.metrics.snapshot(await _gauges(runtime)))
