"""The core FastAPI application: ``create_app()`` builds it; the lifespan owns every long-lived client."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import structlog
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chargeghar_core import health
from chargeghar_core.audit.endpoints import router as audit_router
from chargeghar_core.auth.endpoints import router as auth_router
from chargeghar_core.auth.throttling import login_throttle
from chargeghar_core.auth.tokens import TokenService
from chargeghar_core.console import install_console
from chargeghar_core.devices.endpoints import admin_router as devices_admin_router
from chargeghar_core.devices.endpoints import internal_router as devices_internal_router
from chargeghar_core.iot.endpoints import router as iot_router
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
from chargeghar_core.payments.endpoints import admin_router as payments_admin_router
from chargeghar_core.payments.endpoints import router as payments_router
from chargeghar_core.payments.jobs import PaymentJobs
from chargeghar_core.payments.providers import build_providers
from chargeghar_core.powerbanks.endpoints import router as powerbanks_router
from chargeghar_core.powerbanks.service import ModelCatalog
from chargeghar_core.pricing.endpoints import admin_router as pricing_admin_router
from chargeghar_core.pricing.endpoints import router as pricing_router
from chargeghar_core.rentals.device_commands import IngestCommandClient
from chargeghar_core.rentals.endpoints import admin_router as rentals_admin_router
from chargeghar_core.rentals.endpoints import router as rentals_router
from chargeghar_core.rentals.jobs import RentalJobs, stop
from chargeghar_core.rentals.runtime import RentalRuntime
from chargeghar_core.renters.endpoints import admin_router as renters_admin_router
from chargeghar_core.renters.endpoints import router as renters_router
from chargeghar_core.reports.endpoints import router as reports_router
from chargeghar_core.reports.metrics import router as metrics_router
from chargeghar_core.settings import Settings, get_settings
from chargeghar_core.stations.endpoints import admin_router as stations_admin_router
from chargeghar_core.stations.endpoints import router as stations_router

logger = structlog.get_logger(__name__)

INTERNAL_PREFIXES = ("/api/internal/",)
# How long shutdown waits for popup settlements still running after their request answered.
DRAIN_TIMEOUT_S = 10.0

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


def tune_garbage_collector() -> None:
    """What start-up built (modules, routes, schemas, the ORM registry: ~220,000 objects) lives as long as
    the process. Frozen, a full collection no longer walks it (measured: full collections 1.6 s → 0.03 s of
    a worker's CPU under load); a larger young generation lets reference counting free a request's
    short-lived objects before a collection looks at them (GC ~10 % → ~0.1 % of the worker's CPU). Off
    outside production: a process that builds many apps (the tests) would keep freezing future garbage."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(7_000, 20, 20)


def create_app(settings: Settings | None = None) -> FastAPI:
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
        rental_tasks = _start_rentals(app, settings, sessionmaker, http_client)
        if settings.tune_gc:
            tune_garbage_collector()
        logger.info("core_started", environment=settings.environment, database=engine.dialect.name)
        try:
            yield
        finally:
            for task in rental_tasks:
                await stop(task)
            await app.state.rentals.drain(DRAIN_TIMEOUT_S)
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
    # The rentals domain's long-lived parts: settings now; sessions, the device-command client and the
    # payment providers when the lifespan starts (each only when not set already, e.g. by a test).
    app.state.rentals = RentalRuntime(settings=settings.rentals, payment_settings=settings.payments)
    app.state.payment_providers = None
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
    # Renters, pricing, payments, rentals (their jobs run in the lifespan; station events call them directly).
    for router in (
        renters_router,
        renters_admin_router,
        pricing_router,
        pricing_admin_router,
        payments_router,
        payments_admin_router,
        rentals_router,
        rentals_admin_router,
    ):
        app.include_router(router)
    # The operator console (/console): server-rendered pages over the same services as the API.
    if settings.console.enabled:
        install_console(app)
    install_openapi(app, internal_prefixes=INTERNAL_PREFIXES)
    if settings.docs_enabled:
        serve_docs_locally(app, openapi_url=openapi_url)
    return app


def _start_rentals(
    app: FastAPI,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    http_client: httpx.AsyncClient,
) -> list[asyncio.Task[None]]:
    """Complete the rentals runtime (what is not set already) and start the rental and payment jobs."""
    runtime: RentalRuntime = app.state.rentals
    rentals = runtime.settings
    if runtime.sessionmaker is None:
        runtime.sessionmaker = sessionmaker
    if runtime.commands is None:
        token = rentals.ingest_service_token
        runtime.commands = IngestCommandClient(
            http_client,
            base_url=rentals.ingest_url,
            hmac_secret=settings.hmac.secret.get_secret_value(),
            service_token=token.get_secret_value() if token is not None else None,
            http_margin_s=rentals.http_margin_s,
            busy_retry_s=rentals.busy_retry_s,
        )
    if app.state.payment_providers is None:
        app.state.payment_providers = build_providers(runtime.payment_settings, http_client)
    tasks: list[asyncio.Task[None]] = []
    if rentals.jobs_enabled:
        tasks.append(asyncio.create_task(RentalJobs(runtime).run_forever(), name="rental-jobs"))
        if runtime.payment_settings.payment_jobs_enabled:
            payment_jobs = PaymentJobs(
                runtime.sessions(), app.state.payment_providers, runtime.payment_settings
            )
            tasks.append(asyncio.create_task(payment_jobs.run_forever(), name="payment-jobs"))
    # Stopped in reverse order of start (payment jobs first, as before).
    tasks.reverse()
    return tasks
