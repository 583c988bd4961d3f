"""The core FastAPI application: ``create_app()`` builds it; the lifespan owns every long-lived client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import structlog
from fastapi import FastAPI
from redis.asyncio import Redis

from chargeghar_core import health
from chargeghar_core.audit.endpoints import router as audit_router
from chargeghar_core.auth.endpoints import router as auth_router
from chargeghar_core.auth.throttling import login_throttle
from chargeghar_core.auth.tokens import TokenService
from chargeghar_core.devices.endpoints import admin_router as devices_admin_router
from chargeghar_core.devices.endpoints import internal_router as devices_internal_router
from chargeghar_core.iot.endpoints import router as iot_router
from chargeghar_core.iot.hooks import IotHooks
from chargeghar_core.iot.recorder import FailureRecorder
from chargeghar_core.iot.retention import RetentionJob
from chargeghar_core.iot.security import InternalGate
from chargeghar_core.kit.db import create_engine, create_sessionmaker
from chargeghar_core.kit.errors import install_error_handlers
from chargeghar_core.kit.guard import RequestGuardMiddleware
from chargeghar_core.kit.logging import CorrelationIdMiddleware, configure_logging
from chargeghar_core.kit.metrics import RequestMetricsMiddleware
from chargeghar_core.kit.migrate import ensure_sqlite_directory, upgrade_database
from chargeghar_core.kit.openapi import install_openapi, serve_docs_locally
from chargeghar_core.kit.ratelimit import (
    FallbackRateLimiter,
    InProcessRateLimiter,
    RateLimiter,
    RedisRateLimiter,
)
from chargeghar_core.notifications.runtime import start_notifications, stop_notifications
from chargeghar_core.operations.endpoints import router as operations_router
from chargeghar_core.powerbanks.endpoints import router as powerbanks_router
from chargeghar_core.powerbanks.service import ModelCatalog
from chargeghar_core.rentals.wiring import install_rentals
from chargeghar_core.reports.endpoints import router as reports_router
from chargeghar_core.reports.metrics import router as metrics_router
from chargeghar_core.settings import Settings, get_settings
from chargeghar_core.stations.endpoints import admin_router as stations_admin_router
from chargeghar_core.stations.endpoints import router as stations_router

logger = structlog.get_logger(__name__)

INTERNAL_PREFIXES = ("/api/internal/",)

API_DESCRIPTION = """\
Every answer is an envelope: `{"success": true, "message": "...", "data": {...}}`, or on error
`{"success": false, "message": "<human text>", "error": "<CODE>", "details": {...}}` with the HTTP status
documented for each operation. Bad input is a **400** `VALIDATION_ERROR` whose `details` map field paths to
messages (never FastAPI's 422). A **503** (`DATABASE_UNAVAILABLE`, `REDIS_UNAVAILABLE`) carries `Retry-After`.

Authentication: a bearer JWT (staff/service accounts: `POST /api/admin/login`; renters:
`POST /api/renters/login`). The internal station-data endpoints also need an HMAC signature of the raw body
(`X-Signature`, `X-Timestamp`; contract.md §2).
"""

OPENAPI_TAGS: list[dict[str, Any]] = [
    {"name": "health", "description": "Liveness and readiness probes for orchestrators."},
    {"name": "auth", "description": "Staff and service-account login; token refresh (rotating)."},
    {
        "name": "internal",
        "description": "Station events from the ingest (bearer + HMAC-signed, contract.md §2).",
    },
    {"name": "stations", "description": "Public station map and station detail."},
    {"name": "admin: stations", "description": "Station configuration, sync log and status history (staff)."},
    {
        "name": "admin: power banks",
        "description": "Power-bank inventory and the serial-prefix model table (staff).",
    },
    {
        "name": "admin: devices",
        "description": "The station registry: which IMEIs get MQTT credentials (register, approve, revoke).",
    },
    {
        "name": "admin: operations",
        "description": "Fleet dashboard, staff device commands, the staff audit log (staff; viewers read).",
    },
    {"name": "renters", "description": "Renter sign-up, login and profile."},
    {"name": "renters admin", "description": "Renter accounts (staff)."},
    {"name": "pricing", "description": "Rental packages on offer."},
    {"name": "pricing admin", "description": "Packages, late-fee policies and station discounts (staff)."},
    {"name": "payments", "description": "Wallet, top-ups and the payment provider's webhook."},
    {"name": "payments admin", "description": "Manual wallet adjustments (staff)."},
    {"name": "rentals", "description": "Start, extend, cancel and look up rentals (renter)."},
    {"name": "rentals admin", "description": "All rentals; ending one by hand (staff)."},
    {
        "name": "admin: reports",
        "description": "Transactions, the revenue report, the fleet sync log, parked events (staff).",
    },
]


def create_app(settings: Settings | None = None, *, hooks: IotHooks | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, json_logs=settings.json_logs)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.db.is_sqlite:
            ensure_sqlite_directory(settings.db.url)
        engine = create_engine(settings.db)
        if settings.auto_migrate:
            await upgrade_database(engine, settings.db)
        redis = (
            Redis.from_url(
                settings.redis.url,
                # Short: every Redis call on a request path has a fallback or a typed 503, and a frozen
                # Redis must not hold requests for the default (unbounded) read time.
                socket_timeout=settings.redis.socket_timeout_s,
                socket_connect_timeout=settings.redis.socket_timeout_s,
            )
            if settings.redis.url
            else None
        )
        # One pooled client for calls to the ingest's command API (contract.md §3).
        http_client = httpx.AsyncClient(timeout=httpx.Timeout(20.0, connect=3.0))
        limiter: RateLimiter = InProcessRateLimiter()
        if redis is not None:
            limiter = FallbackRateLimiter(
                RedisRateLimiter(redis, settings.redis.prefix),
                limiter,
                retry_after_s=settings.redis.outage_retry_s,
            )
        sessionmaker = create_sessionmaker(engine)
        app.state.engine = engine
        app.state.sessionmaker = sessionmaker
        app.state.redis = redis
        app.state.http_client = http_client
        app.state.internal_gate = InternalGate(settings, limiter)
        app.state.login_throttle = login_throttle(settings, redis)
        app.state.failure_recorder = FailureRecorder(sessionmaker)
        # Outbox worker: push, SMS and e-mail to renters; login codes share the rate limiter.
        start_notifications(app, sessionmaker, http_client, limiter)
        retention_task = (
            asyncio.create_task(
                RetentionJob(sessionmaker, settings.retention).run_forever(), name="retention"
            )
            if settings.retention.enabled
            else None
        )
        logger.info("core_started", environment=settings.environment, database=engine.dialect.name)
        try:
            yield
        finally:
            await stop_notifications(app)
            if retention_task is not None:
                retention_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await retention_task
            await http_client.aclose()
            if redis is not None:
                await redis.aclose()
            await engine.dispose()
            logger.info("core_stopped")

    openapi_url = "/openapi.json"
    app = FastAPI(
        title="ChargeGhar core",
        version="0.1.0",
        summary="Stations, slots, power banks, renters, rentals, payments and the internal station-data API",
        description=API_DESCRIPTION,
        openapi_tags=OPENAPI_TAGS,
        lifespan=lifespan,
        # Served by serve_docs_locally instead: FastAPI's pages load Swagger UI / ReDoc from a CDN.
        docs_url=None,
        redoc_url=None,
        openapi_url=openapi_url if settings.docs_enabled else None,
    )
    app.state.settings = settings
    app.state.tokens = TokenService(settings.jwt)
    app.state.login_throttle = login_throttle(settings)  # the lifespan shares it through Redis when set
    app.state.iot_hooks = hooks or IotHooks()
    app.state.model_catalog = ModelCatalog()
    install_error_handlers(app)
    # NUL / surrogates / deep JSON refused with a 400 before any endpoint. The internal endpoints check
    # their bodies themselves, after the signature over the raw bytes (contract.md §2 order).
    app.add_middleware(
        RequestGuardMiddleware,
        skip_body_prefixes=INTERNAL_PREFIXES,
        max_body_bytes=settings.max_body_bytes,
    )
    app.add_middleware(CorrelationIdMiddleware)
    app.add_middleware(RequestMetricsMiddleware)  # outermost: times every answer, by route template
    app.include_router(health.router)
    app.include_router(metrics_router)
    app.include_router(reports_router)
    app.include_router(auth_router)
    app.include_router(iot_router)
    app.include_router(stations_router)
    app.include_router(stations_admin_router)
    app.include_router(powerbanks_router)
    app.include_router(devices_admin_router)
    app.include_router(devices_internal_router)
    app.include_router(audit_router)
    app.include_router(operations_router)
    # Renters, pricing, payments, rentals: routers, station-event hooks (unless given), jobs in the lifespan.
    install_rentals(app, install_hooks=hooks is None)
    install_openapi(app, internal_prefixes=INTERNAL_PREFIXES)
    if settings.docs_enabled:
        serve_docs_locally(app, openapi_url=openapi_url)
    return app
