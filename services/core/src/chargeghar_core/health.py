"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from chargeghar_core.kit.errors import error_body
from chargeghar_core.kit.openapi import errors

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness: the process answers (no dependency is checked)")
async def health() -> dict[str, Any]:
    return {"success": True, "message": "ok", "data": {"status": "ok"}}


@router.get(
    "/health/ready",
    summary="Readiness: the database (and Redis when configured) answer",
    responses=errors(
        (503, "SERVICE_UNAVAILABLE", "Not ready: `details.checks` names the dependency that failed")
    ),
)
async def ready(request: Request) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        async with request.app.state.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    redis = request.app.state.redis
    if redis is not None:
        try:
            await redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"error: {type(exc).__name__}"
    if all(value == "ok" for value in checks.values()):
        return JSONResponse({"success": True, "message": "ready", "data": checks})
    return JSONResponse(error_body("SERVICE_UNAVAILABLE", "Not ready", {"checks": checks}), status_code=503)
