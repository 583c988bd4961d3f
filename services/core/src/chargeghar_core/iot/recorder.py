"""Writes the sync-log row of a failed event on its own connection, after the event rolled back."""

from __future__ import annotations

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chargeghar_core.stations.models import SyncLog
from chargeghar_core.stations.repository import SyncLogRepository

logger = structlog.get_logger(__name__)


class FailureRecorder:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = sessionmaker

    async def record(self, entry: SyncLog) -> None:
        """Best effort by design: failing to log must not change the answer about the event itself."""
        try:
            async with self._sessionmaker() as session:
                await SyncLogRepository(session).add_resolving_station(entry)
                await session.commit()
        except Exception:
            logger.exception("sync_log_failure_not_recorded", event_id=entry.event_id, error=entry.error)
