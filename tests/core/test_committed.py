"""Behaviour that needs real commits (a second database, never rolled back): the FAILED sync-log row of a
rolled-back event survives, and concurrent deliveries of one event are applied once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

import pytest
from chargeghar_core.kit.db import create_engine
from chargeghar_core.settings import DatabaseSettings
from chargeghar_core.stations.models import Station, StationStatusHistory, SyncLog
from core_support import (
    ask_rentals_always,
    full_event,
    make_settings,
    new_bank_serial,
    new_imei,
    running_client,
    status_event,
)
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine


@pytest.fixture
async def committed_engine(committed_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(DatabaseSettings(url=committed_database_url))
    yield engine
    await engine.dispose()


async def _fail_after_writing(
    session: object,
    settings: object,
    currency: str,
    *,
    station_id: uuid.UUID,
    bank_serials: Sequence[str],
    observed_at: datetime,
    event_key: str,
) -> int:
    """The rentals step of a snapshot fails (after the event created and locked its station)."""
    raise RuntimeError("simulated failure after the station was written")


async def test_failed_event_is_rolled_back_but_its_failed_sync_log_row_is_kept(
    committed_database_url: str, committed_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    imei = new_imei()
    event_id = uuid.uuid4().hex
    settings = make_settings(committed_database_url)
    ask_rentals_always(monkeypatch, reconcile_snapshot=_fail_after_writing)
    async with running_client(settings) as client:
        response = await client.sync(full_event(imei, {1: new_bank_serial(), 2: None}), event_id=event_id)

    assert response.status_code == 500 and response.json()["error"] == "SYNC_ERROR"
    async with committed_engine.connect() as connection:
        stations = await connection.scalar(
            select(func.count()).select_from(Station).where(Station.imei == imei)
        )
        logs = (
            await connection.execute(
                select(SyncLog.outcome, SyncLog.station_key, SyncLog.station_id, SyncLog.error).where(
                    SyncLog.event_id == event_id
                )
            )
        ).all()
    assert stations == 0, "the station created by the failed event must be rolled back"
    assert len(logs) == 1
    outcome, station_key, station_id, error = logs[0]
    assert (outcome, station_key, station_id) == ("FAILED", imei, None)
    assert error is not None and "simulated failure" in error


async def test_failed_event_of_a_known_station_is_logged_against_it(
    committed_database_url: str, committed_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    imei = new_imei()
    settings = make_settings(committed_database_url)
    async with running_client(settings) as client:
        created = await client.sync(status_event(imei, "ONLINE"))
    event_id = uuid.uuid4().hex
    ask_rentals_always(monkeypatch, reconcile_snapshot=_fail_after_writing)
    async with running_client(settings) as client:
        failed = await client.sync(full_event(imei, {1: new_bank_serial()}), event_id=event_id)
    assert failed.status_code == 500
    async with committed_engine.connect() as connection:
        station_id = await connection.scalar(select(SyncLog.station_id).where(SyncLog.event_id == event_id))
    assert str(station_id) == created.json()["data"]["station_id"]


async def test_concurrent_deliveries_of_one_event_are_applied_once(
    committed_database_url: str, committed_engine: AsyncEngine
) -> None:
    imei = new_imei()
    settings = make_settings(committed_database_url)
    async with running_client(settings) as client:
        await client.sync(status_event(imei, "OFFLINE"))
        event_id = uuid.uuid4().hex
        event = status_event(imei, "ONLINE")
        responses = await asyncio.gather(*(client.sync(event, event_id=event_id) for _ in range(6)))

    assert [response.status_code for response in responses] == [200] * 6
    duplicates = [response.json()["data"].get("duplicate", False) for response in responses]
    assert sorted(duplicates) == [False] + [True] * 5
    async with committed_engine.connect() as connection:
        station_id = await connection.scalar(select(Station.id).where(Station.imei == imei))
        changes = await connection.scalar(
            select(func.count())
            .select_from(StationStatusHistory)
            .where(StationStatusHistory.station_id == station_id, StationStatusHistory.status == "ONLINE")
        )
        outcomes = (
            await connection.execute(select(SyncLog.outcome).where(SyncLog.event_id == event_id))
        ).scalars()
        assert sorted(outcomes) == ["DUPLICATE"] * 5 + ["SUCCESS"]
    assert changes == 1
