"""Round trips of a full sync and of a batch on a real PostgreSQL connection pool, as production runs them:
no test transaction around the request, so BEGIN and COMMIT (sent by the driver itself, not as statements)
are counted too, and so are statement preparations."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import asyncpg
import pytest
from chargeghar_core.kit.db import create_engine
from chargeghar_core.settings import DatabaseSettings
from chargeghar_core.stations.models import Station, StationSlot, SyncLog
from core_support import INTERNAL_BATCH, CoreClient, full_event, make_settings, new_bank_serial, new_imei
from core_support import running_client as start_client
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

pytestmark = pytest.mark.postgres


class RoundTrips:
    """Statements (``before_cursor_execute``), plus what the driver sends on its own: BEGIN, COMMIT,
    ROLLBACK and the preparation of a statement not yet in the connection's cache."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.active = False

    def note(self, what: str) -> None:
        if self.active:
            self.sent.append(what)


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> RoundTrips:
    counter = RoundTrips()

    def counted(name: str, original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            counter.note(name)
            return await original(*args, **kwargs)

        return wrapper

    for name in ("start", "commit", "rollback"):
        monkeypatch.setattr(
            asyncpg.transaction.Transaction,
            name,
            counted(name.upper(), getattr(asyncpg.transaction.Transaction, name)),
        )
    monkeypatch.setattr(asyncpg.Connection, "prepare", counted("PREPARE", asyncpg.Connection.prepare))
    return counter


@pytest.fixture
async def client(committed_database_url: str, round_trips: RoundTrips) -> AsyncIterator[CoreClient]:
    if not committed_database_url.startswith("postgresql"):
        pytest.skip("round trips are counted on PostgreSQL")
    async with start_client(make_settings(committed_database_url)) as core_client:
        engine = core_client.app.state.engine.sync_engine
        listener = lambda *args: round_trips.note(args[2])  # noqa: E731
        event.listen(engine, "before_cursor_execute", listener)
        try:
            yield core_client
        finally:
            event.remove(engine, "before_cursor_execute", listener)


@pytest.fixture
async def reader(committed_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(DatabaseSettings(url=committed_database_url))
    yield engine
    await engine.dispose()


async def _measured(counter: RoundTrips, send: Callable[[], Awaitable[Any]]) -> tuple[list[str], Any]:
    counter.sent.clear()
    counter.active = True
    try:
        response = await send()
    finally:
        counter.active = False
    assert response.status_code == 200, response.text
    return list(counter.sent), response.json()


async def test_a_full_sync_is_one_round_trip(
    client: CoreClient, round_trips: RoundTrips, reader: AsyncEngine
) -> None:
    imei = new_imei()
    banks = [new_bank_serial() for _ in range(12)]
    layout = {n: banks[n - 1] if n <= 6 else None for n in range(1, 13)}
    assert (await client.sync(full_event(imei, layout))).status_code == 200  # creates the station
    for shift in (1, 2):
        # Steady state: banks move, one leaves; every statement is prepared on the connection by now.
        moved = {n: layout.get(n - shift) for n in range(1, 13)}
        sent, body = await _measured(round_trips, partial(client.sync, full_event(imei, moved)))
    assert len(sent) <= 2, sent
    assert not any(what in ("START", "COMMIT") for what in sent), sent
    assert body["data"]["applied"] is True and body["data"]["slots_updated"] == 12
    async with reader.connect() as connection:
        station = (await connection.execute(select(Station.id).where(Station.imei == imei))).scalar_one()
        occupied = await connection.execute(
            select(StationSlot.slot_number)
            .where(StationSlot.station_id == station, StationSlot.power_bank_id.is_not(None))
            .order_by(StationSlot.slot_number)
        )
        logs = await connection.scalar(
            select(func.count()).select_from(SyncLog).where(SyncLog.station_id == station)
        )
    assert list(occupied.scalars()) == [3, 4, 5, 6, 7, 8]
    assert logs == 3


async def _batch(client: CoreClient, counter: RoundTrips, size: int) -> list[str]:
    imeis = [new_imei() for _ in range(size)]
    banks = {imei: new_bank_serial() for imei in imeis}
    first = [{**full_event(imei, {1: banks[imei], 2: None}), "event_id": uuid.uuid4().hex} for imei in imeis]
    assert (await client.post_signed(INTERNAL_BATCH, {"events": first})).status_code == 200
    sent: list[str] = []
    for battery in (60, 61):
        events = [
            {**full_event(imei, {1: None, 2: banks[imei]}, battery=battery), "event_id": uuid.uuid4().hex}
            for imei in imeis
        ]
        sent, body = await _measured(counter, partial(client.post_signed, INTERNAL_BATCH, {"events": events}))
        assert all(item["success"] and item["data"]["applied"] for item in body["data"]["results"])
    return sent


async def test_a_batch_of_full_syncs_costs_the_same_round_trips_whatever_its_size(
    client: CoreClient, round_trips: RoundTrips
) -> None:
    small = await _batch(client, round_trips, 5)
    large = await _batch(client, round_trips, 20)
    # BEGIN, SAVEPOINT, the station locks, one statement for every snapshot, RELEASE, COMMIT.
    assert len(small) == len(large) <= 6, (small, large)


async def test_a_batch_with_several_snapshots_per_station_is_applied_in_waves(
    client: CoreClient, round_trips: RoundTrips, reader: AsyncEngine
) -> None:
    """The ingest sends up to 16 events of a station per batch: the k-th snapshots of all stations are
    applied together (one wave), a station's snapshots stay in order, and the cost grows with the number of
    waves, not with the number of stations."""

    def at(second: int) -> str:
        return f"2026-12-07T06:00:{second:02d}+00:00"

    async def batch(stations: int) -> tuple[list[str], list[str], dict[str, str]]:
        imeis = [new_imei() for _ in range(stations)]
        banks = {imei: new_bank_serial() for imei in imeis}
        first = [{**full_event(imei, {1: banks[imei], 2: None}, observed_at=at(0))} for imei in imeis]
        assert (await client.post_signed(INTERNAL_BATCH, {"events": first})).status_code == 200
        # Three snapshots per station, interleaved: the bank moves 1 → 2 → 1 → 2.
        events = []
        for second, slot in ((1, 2), (2, 1), (3, 2)):
            for imei in imeis:
                layout = {1: None, 2: None, slot: banks[imei]}
                events.append(
                    {**full_event(imei, layout, observed_at=at(second)), "event_id": uuid.uuid4().hex}
                )
        sent, body = await _measured(
            round_trips, partial(client.post_signed, INTERNAL_BATCH, {"events": events})
        )
        results = body["data"]["results"]
        assert all(item["success"] and item["data"]["applied"] for item in results), results
        return sent, imeis, banks

    few, _, _ = await batch(3)
    many, imeis, banks = await batch(12)
    # BEGIN, SAVEPOINT, then per wave the station locks and one statement for all its snapshots, RELEASE,
    # COMMIT: three waves, whatever the number of stations.
    # (A statement prepared the first time it is used on a connection is not a wave's cost.)
    few, many = ([what for what in sent if what != "PREPARE"] for sent in (few, many))
    assert len(few) == len(many) <= 4 + 3 * 2, (few, many)
    async with reader.connect() as connection:
        holders = await connection.execute(
            select(Station.imei, StationSlot.slot_number)
            .join(StationSlot, StationSlot.station_id == Station.id)
            .where(Station.imei.in_(imeis), StationSlot.power_bank_id.is_not(None))
        )
    # The last snapshot of each station (bank in slot 2) is what the database holds.
    assert sorted(holders.all()) == sorted((imei, 2) for imei in imeis)
    assert len(banks) == 12
