"""The notifications runtime of one app: OTP keys and rate limiter for the login-code endpoints, and the
outbox worker the lifespan starts and stops."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chargeghar_core.kit.ratelimit import InProcessRateLimiter, RateLimiter
from chargeghar_core.notifications.providers import Providers, build_providers
from chargeghar_core.notifications.sealing import OtpKeys
from chargeghar_core.notifications.worker import OutboxWorker
from chargeghar_core.settings import NotificationSettings, Settings


@dataclass(slots=True)
class NotificationRuntime:
    settings: NotificationSettings
    keys: OtpKeys
    limiter: RateLimiter
    worker: OutboxWorker | None = None
    task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        if self.worker is not None:
            self.worker.wake()


def otp_runtime(app: FastAPI) -> NotificationRuntime:
    runtime: NotificationRuntime | None = getattr(app.state, "notifications", None)
    if runtime is None:
        settings: Settings = app.state.settings
        runtime = NotificationRuntime(settings.notifications, OtpKeys(settings), InProcessRateLimiter())
        app.state.notifications = runtime
    return runtime


def start_notifications(
    app: FastAPI,
    sessionmaker: async_sessionmaker[AsyncSession],
    http_client: httpx.AsyncClient,
    limiter: RateLimiter,
) -> NotificationRuntime:
    """Called by the lifespan: shares the app's rate limiter (Redis-backed when configured), builds the
    providers (unless a test set ``app.state.notification_providers``) and starts the worker."""
    settings: Settings = app.state.settings
    runtime = otp_runtime(app)
    runtime.limiter = limiter
    providers: Providers | None = getattr(app.state, "notification_providers", None)
    if providers is None:
        providers = build_providers(settings, http_client)
        app.state.notification_providers = providers
    runtime.worker = OutboxWorker(sessionmaker, providers, settings)
    if settings.notifications.worker_enabled:
        runtime.task = asyncio.create_task(runtime.worker.run_forever(), name="notification-outbox")
    return runtime


async def stop_notifications(app: FastAPI) -> None:
    runtime: NotificationRuntime | None = getattr(app.state, "notifications", None)
    if runtime is None or runtime.task is None:
        return
    runtime.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runtime.task
    runtime.task = None
