"""The retention job deletes sync-log rows and processed-event keys older than their settings, and nothing
younger, in chunks, on PostgreSQL (the session database) and on SQLite (a migrated file)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from chargeghar_core.iot.models import ProcessedEvent
from chargeghar_core.iot.retention import RetentionJob
from chargeghar_core.kit.db import create_engine, create_sessionmaker, utcnow
from chargeghar_core.kit.migrate import migrate
from chargeghar_core.settings import DatabaseSettings, RetentionSettings
from chargeghar_core.stations.models import SyncLog
from core_support import make_settings, running_client
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

SETTINGS = RetentionSettings(sync_log_days=30, processed_event_days=7, batch_size=2)


def _log(created_at: datetime, tag: str) -> SyncLog:
    return SyncLog(
        id=uuid.uuid4(),
        event_type="status",
        event_id=f"{tag}-{uuid.uuid4().hex[:8]}",
        outcome="SUCCESS",
        payload={},
        duration_ms=1.0,
        created_at=created_at,
    )


def _key(created_at: datetime, tag: str) -> ProcessedEvent:
    return ProcessedEvent(event_key=f"{tag}-{uuid.uuid4().hex}", event_type="status", created_at=created_at)


async def _check_pruning(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    now = utcnow()
    old_logs = [_log(now - timedelta(days=31 + i), "old") for i in range(5)]
    young_logs = [_log(now - timedelta(days=29), "young"), _log(now, "young")]
    old_keys = [_key(now - timedelta(days=8 + i), "old") for i in range(3)]
    young_keys = [_key(now - timedelta(days=6), "young"), _key(now, "young")]
    async with sessionmaker() as session:
        session.add_all([*old_logs, *young_logs, *old_keys, *young_keys])
        await session.commit()

    report = await RetentionJob(sessionmaker, SETTINGS).run_once(now)

    async with sessionmaker() as session:
        log_ids = set(await session.scalars(select(SyncLog.id)))
        keys = set(await session.scalars(select(ProcessedEvent.event_key)))
    assert not log_ids & {log.id for log in old_logs}
    assert {log.id for log in young_logs} <= log_ids
    assert not keys & {key.event_key for key in old_keys}
    assert {key.event_key for key in young_keys} <= keys
    # batch_size=2: the five old rows took three chunks; other tests may have left no old rows behind.
    assert report.sync_logs_deleted >= 5
    assert report.processed_events_deleted >= 3


async def test_retention_deletes_only_old_rows_on_the_session_database(
    test_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await _check_pruning(test_sessionmaker)


@pytest.fixture
async def sqlite_sessionmaker(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    settings = DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'core.sqlite3'}")
    await migrate(settings)
    engine = create_engine(settings)
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


async def test_retention_deletes_only_old_rows_on_sqlite(
    sqlite_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await _check_pruning(sqlite_sessionmaker)


async def test_retention_runs_in_the_lifespan_and_stops_with_it(core_database_url: str) -> None:
    settings = make_settings(core_database_url, retention=RetentionSettings(interval_s=3600))
    async with running_client(settings) as client:
        (task,) = [t for t in asyncio.all_tasks() if t.get_name() == "retention"]
        assert not task.done() and client.app.state.settings.retention.enabled
    assert task.cancelled()
