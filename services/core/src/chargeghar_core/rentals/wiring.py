"""Plugging the renters, pricing, payments and rentals domains into core's app.

``install_rentals(app)`` (called once by ``create_app``) registers the routers, installs the station-event
hooks and wraps the app's lifespan so that, on start-up, the rentals runtime gets core's sessionmaker and
pooled HTTP client, the background jobs run, and in-flight popup settlements are drained on shutdown.
``configure_rentals(app, ...)`` replaces settings or clients before the app starts (tests, tools).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from chargeghar_core.payments.endpoints import admin_router as payments_admin_router
from chargeghar_core.payments.endpoints import router as payments_router
from chargeghar_core.payments.jobs import PaymentJobs
from chargeghar_core.payments.providers import PaymentProviders, build_providers
from chargeghar_core.pricing.endpoints import admin_router as pricing_admin_router
from chargeghar_core.pricing.endpoints import router as pricing_router
from chargeghar_core.rentals.device_commands import DeviceCommands, IngestCommandClient
from chargeghar_core.rentals.endpoints import admin_router as rentals_admin_router
from chargeghar_core.rentals.endpoints import router as rentals_router
from chargeghar_core.rentals.hooks import rental_iot_hooks
from chargeghar_core.rentals.jobs import RentalJobs, stop
from chargeghar_core.rentals.runtime import RentalRuntime
from chargeghar_core.rentals.settings import PaymentSettings, RentalSettings
from chargeghar_core.renters.endpoints import admin_router as renters_admin_router
from chargeghar_core.renters.endpoints import router as renters_router
from chargeghar_core.settings import Settings

DRAIN_TIMEOUT_S = 10.0


def install_rentals(app: FastAPI, *, install_hooks: bool = True) -> RentalRuntime:
    """Register everything once; ``install_hooks=False`` keeps station-event hooks given to create_app."""
    existing: RentalRuntime | None = getattr(app.state, "rentals", None)
    if existing is not None:
        return existing
    runtime = RentalRuntime(settings=RentalSettings(), payment_settings=PaymentSettings())
    app.state.rentals = runtime
    app.state.payment_providers = None
    if install_hooks:
        app.state.iot_hooks = rental_iot_hooks(runtime)
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
    _wrap_lifespan(app, runtime)
    return runtime


def configure_rentals(
    app: FastAPI,
    *,
    rental_settings: RentalSettings | None = None,
    payment_settings: PaymentSettings | None = None,
    commands: DeviceCommands | None = None,
    providers: PaymentProviders | None = None,
) -> RentalRuntime:
    """Replace settings or clients of an app's rentals runtime (before the app starts)."""
    runtime = install_rentals(app)
    if rental_settings is not None:
        runtime.settings = rental_settings
    if payment_settings is not None:
        runtime.payment_settings = payment_settings
    if commands is not None:
        runtime.commands = commands
    if providers is not None:
        app.state.payment_providers = providers
    return runtime


def _wrap_lifespan(app: FastAPI, runtime: RentalRuntime) -> None:
    core_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        async with core_lifespan(app) as state:
            settings = runtime.settings
            core_settings: Settings = app.state.settings
            http_client: httpx.AsyncClient = app.state.http_client
            if runtime.sessionmaker is None:
                runtime.sessionmaker = app.state.sessionmaker
            if runtime.commands is None:
                token = settings.ingest_service_token
                runtime.commands = IngestCommandClient(
                    http_client,
                    base_url=settings.ingest_url,
                    hmac_secret=core_settings.hmac.secret.get_secret_value(),
                    service_token=token.get_secret_value() if token is not None else None,
                    http_margin_s=settings.http_margin_s,
                    busy_retry_s=settings.busy_retry_s,
                )
            if app.state.payment_providers is None:
                app.state.payment_providers = build_providers(runtime.payment_settings, http_client)
            jobs_task: asyncio.Task[None] | None = None
            if settings.jobs_enabled:
                jobs_task = asyncio.create_task(RentalJobs(runtime).run_forever(), name="rental-jobs")
            payment_jobs_task: asyncio.Task[None] | None = None
            if settings.jobs_enabled and runtime.payment_settings.payment_jobs_enabled:
                payment_jobs = PaymentJobs(
                    runtime.sessions(), app.state.payment_providers, runtime.payment_settings
                )
                payment_jobs_task = asyncio.create_task(payment_jobs.run_forever(), name="payment-jobs")
            try:
                yield state
            finally:
                if payment_jobs_task is not None:
                    await stop(payment_jobs_task)
                if jobs_task is not None:
                    await stop(jobs_task)
                await runtime.drain(DRAIN_TIMEOUT_S)

    app.router.lifespan_context = lifespan
