"""Retention: the sync log and the processed-event keys grow with every event and are pruned by age.

Runs in the lifespan of every replica; safe with several (chunks are claimed with SKIP LOCKED on
PostgreSQL, and deleting what another replica already deleted is a no-op). Each chunk is its own short
transaction, so pruning a large backlog never holds a long lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chargeghar_core.iot.repository import RetentionRepository
from chargeghar_core.kit.db import utcnow
from chargeghar_core.settings import RetentionSettings

logger = structlog.get_logger(__name__)

# An unbound chunk-delete method of RetentionRepository: (repository, cutoff, limit) -> rows deleted.
_ChunkDelete = Callable[[RetentionRepository, datetime, int], Awaitable[int]]


@dataclass(frozen=True, slots=True)
class RetentionReport:
    sync_logs_deleted: int
    processed_events_deleted: int


class RetentionJob:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], settings: RetentionSettings) -> None:
        self._sessionmaker = sessionmaker
        self._settings = settings

    async def run_once(self, now: datetime | None = None) -> RetentionReport:
        now = now or utcnow()
        sync_logs = await self._prune(
            RetentionRepository.delete_sync_logs_before, now - timedelta(days=self._settings.sync_log_days)
        )
        processed = await self._prune(
            RetentionRepository.delete_processed_events_before,
            now - timedelta(days=self._settings.processed_event_days),
        )
        report = RetentionReport(sync_logs, processed)
        if sync_logs or processed:
            logger.info("retention_pruned", sync_logs_deleted=sync_logs, processed_events_deleted=processed)
        return report

    async def _prune(self, delete_chunk: _ChunkDelete, cutoff: datetime) -> int:
        total = 0
        while True:
            async with self._sessionmaker() as session:
                deleted = await delete_chunk(RetentionRepository(session), cutoff, self._settings.batch_size)
                await session.commit()
            total += deleted
            if deleted < self._settings.batch_size:
                return total

    async def run_forever(self) -> None:
        while True:
            # Sleep first: a process that starts and stops at once (tests, CLI) never runs a round.
            await asyncio.sleep(self._settings.interval_s)
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A failed round (database restart) is retried at the next interval.
                logger.exception("retention_failed")
