"""The long-lived parts of the rentals domain: where sessions come from, the device-command client and
the background tasks (popups still being settled after the API answered 202, and the periodic jobs)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chargeghar_core.rentals.device_commands import DeviceCommands
from chargeghar_core.rentals.settings import PaymentSettings, RentalSettings

logger = structlog.get_logger(__name__)

T = TypeVar("T")


@dataclass
class RentalRuntime:
    settings: RentalSettings
    payment_settings: PaymentSettings
    sessionmaker: async_sessionmaker[AsyncSession] | None = None
    commands: DeviceCommands | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def sessions(self) -> async_sessionmaker[AsyncSession]:
        if self.sessionmaker is None:
            raise RuntimeError("rentals runtime not started (the app lifespan sets the sessionmaker)")
        return self.sessionmaker

    def device_commands(self) -> DeviceCommands:
        if self.commands is None:
            raise RuntimeError("rentals runtime not started (no device-command client)")
        return self.commands

    def spawn(self, coroutine: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Run work that must finish even when the request that started it has answered already."""
        task = asyncio.create_task(coroutine, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("rentals_task_failed", task=task.get_name(), error=repr(task.exception()))

    async def drain(self, timeout_s: float) -> None:
        """Wait for in-flight settlements (bounded); whatever is left is re-checked by the job later."""
        if not self.tasks:
            return
        _done, pending = await asyncio.wait(set(self.tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
