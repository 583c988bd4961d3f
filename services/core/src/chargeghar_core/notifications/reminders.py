"""Time-driven notifications: "due in 15 minutes" and "overdue" (at once, then every few hours, capped).

Safe to run on every replica at once: each reminder has its own idempotency key (rental, and the
reminder's number for overdue ones), so a second scan writes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chargeghar_core.kit.db import utcnow
from chargeghar_core.notifications.outbox import notify
from chargeghar_core.notifications.templates import Event
from chargeghar_core.rentals.models import Rental, RentalStatus
from chargeghar_core.settings import NotificationSettings

SCAN_LIMIT = 500


class ReminderScan:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: NotificationSettings,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.clock = clock

    async def run_once(self) -> int:
        now = self.clock()
        written = 0
        async with self.sessionmaker() as session:
            written += await self._due_soon(session, now)
            written += await self._overdue(session, now)
            await session.commit()
        return written

    async def _due_soon(self, session: AsyncSession, now: datetime) -> int:
        horizon = now + timedelta(minutes=self.settings.due_soon_minutes)
        rentals = await session.scalars(
            select(Rental)
            .where(
                Rental.status == RentalStatus.ACTIVE.value,
                Rental.due_at > now,
                Rental.due_at <= horizon,
            )
            .limit(SCAN_LIMIT)
        )
        written = 0
        for rental in rentals:
            payload = {"rental_id": str(rental.id), "rental_code": rental.code, "due_at": _iso(rental.due_at)}
            # Keyed by the due time too: an extension moves it, and the new one gets its own reminder.
            key = f"{rental.id}:{int(rental.due_at.timestamp()) if rental.due_at else 0}"
            written += await notify(session, Event.RENTAL_DUE_SOON, rental.user_id, key=key, payload=payload)
        return written

    async def _overdue(self, session: AsyncSession, now: datetime) -> int:
        every = timedelta(hours=self.settings.overdue_repeat_hours)
        oldest = now - every * self.settings.overdue_max_reminders
        rentals = await session.scalars(
            select(Rental)
            .where(
                Rental.status.in_([RentalStatus.ACTIVE.value, RentalStatus.OVERDUE.value]),
                Rental.due_at <= now,
                Rental.due_at > oldest,
            )
            .limit(SCAN_LIMIT)
        )
        written = 0
        for rental in rentals:
            assert rental.due_at is not None
            number = math.floor((now - rental.due_at) / every)
            if number >= self.settings.overdue_max_reminders:
                continue
            payload = {"rental_id": str(rental.id), "rental_code": rental.code, "due_at": _iso(rental.due_at)}
            written += await notify(
                session, Event.RENTAL_OVERDUE, rental.user_id, key=f"{rental.id}:{number}", payload=payload
            )
        return written


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
