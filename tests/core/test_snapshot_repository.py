"""The iot repository on both dialects: claims (with the signature's replay claim and the station lock) and
the set-based writes of a full snapshot. Every test runs on SQLite and on PostgreSQL (marked ``postgres``:
skipped without a server, required in CI), so the dialect-specific statements are held to one behaviour.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from chargeghar_core.iot.models import ProcessedEvent
from chargeghar_core.iot.repository import (
    ProcessedEventRepository,
    SnapshotFinish,
    SnapshotWriter,
    SyncLogRow,
)
from chargeghar_core.iot.snapshots import (
    AppliedSnapshot,
    PlannedSlot,
    SnapshotPlan,
    SnapshotRepository,
    applicable_together,
)
from chargeghar_core.powerbanks.models import PowerBank, PowerBankConditionHistory
from chargeghar_core.powerbanks.repository import BankObservation
from chargeghar_core.stations.models import Station, StationSlot, StationStatusHistory, SyncLog
from chargeghar_core.stations.repository import SlotObservation
from core_support import new_bank_serial, new_imei
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession


@pytest.fixture
def db(dialect_db: AsyncSession) -> AsyncSession:
    """Every test here runs on both dialects (see tests/core/conftest.py)."""
    return dialect_db


NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


async def _station(db: AsyncSession, total_slots: int = 4) -> Station:
    imei = new_imei()
    station = Station(
        id=uuid.uuid4(), imei=imei, serial_number=imei, name=imei, total_slots=total_slots, hardware_info={}
    )
    db.add(station)
    await db.flush()
    return station


async def test_claim_is_first_delivery_only_and_locks_the_station(db: AsyncSession) -> None:
    repository = ProcessedEventRepository(db)
    station = await _station(db)
    key = uuid.uuid4().hex
    first = await repository.claim_and_lock(key, "status", station.imei, NOW, serials=["x"])
    again = await repository.claim_and_lock(key, "status", station.imei, NOW)
    unknown = await repository.claim_and_lock(uuid.uuid4().hex, "status", new_imei(), NOW)
    assert first.claimed and first.station is not None and first.station.id == station.id
    assert not again.claimed and not again.replayed
    assert unknown.claimed and unknown.station is None
    # PostgreSQL looks up open rentals in the same statement (none here); SQLite leaves it to rentals.
    assert first.rented in (frozenset(), None)


async def test_a_replayed_signature_is_refused_without_burning_the_new_event_id(db: AsyncSession) -> None:
    repository = ProcessedEventRepository(db)
    station = await _station(db)
    replay_key = f"sig:{uuid.uuid4().hex}"
    first = await repository.claim_and_lock(
        "e-" + uuid.uuid4().hex, "full", station.imei, NOW, replay_key=replay_key
    )
    new_id = "e-" + uuid.uuid4().hex
    replayed = await repository.claim_and_lock(new_id, "full", station.imei, NOW, replay_key=replay_key)
    assert first.claimed and not first.replayed
    assert not replayed.claimed and replayed.replayed
    keys = set((await db.execute(select(ProcessedEvent.event_key))).scalars())
    assert replay_key in keys and new_id not in keys, "a refused replay must not claim its new event id"


def _bank(serial: str, station: Station, slot: int, battery: int | None, **extra: object) -> BankObservation:
    return BankObservation(
        serial_number=serial,
        model="CD-20",
        capacity_mah=10000,
        status="AVAILABLE",
        battery_level=battery,
        hardware_info={},
        station_id=station.id,
        slot_number=slot,
        **extra,  # type: ignore[arg-type]
    )


def _finish(station: Station, key: str, total_slots: int, at: datetime) -> SnapshotFinish:
    return SnapshotFinish(
        station_values={
            "status": "ONLINE",
            "status_changed_at": at,
            "total_slots": total_slots,
            "hardware_info": {"signal_strength": "28"},
            "last_heartbeat": at,
            "observed_at": at,
            "modified_at": at,
        },
        event_key=key,
        result={"applied": True},
        log=SyncLogRow(
            station_id=station.id,
            station_key=station.imei,
            event_type="full",
            event_id=key,
            outcome="SUCCESS",
            payload_json='{"type": "full"}',
            duration_ms=1.0,
            created_at=at,
        ),
    )


async def _write(
    db: AsyncSession,
    station: Station,
    banks: list[BankObservation],
    slots: dict[int, str | None],
    at: datetime,
    total_slots: int = 4,
) -> dict[str, int]:
    key = uuid.uuid4().hex
    assert (await ProcessedEventRepository(db).claim_and_lock(key, "full", station.imei, at)).claimed
    writer = SnapshotWriter(db)
    written = await writer.write_banks(station.id, banks, at)
    observations = [
        SlotObservation(
            number,
            "OCCUPIED" if serial else "AVAILABLE",
            written[serial].battery_level if serial else 0,
            written[serial].id if serial else None,
            {"n": number},
        )
        for number, serial in slots.items()
    ]
    await writer.write_slots_and_finish(station.id, observations, _finish(station, key, total_slots, at), at)
    await db.flush()
    return {serial: bank.battery_level for serial, bank in written.items()}


async def _slots(db: AsyncSession, station: Station) -> dict[int, str | None]:
    rows = await db.execute(
        select(StationSlot.slot_number, PowerBank.serial_number)
        .outerjoin(PowerBank, PowerBank.id == StationSlot.power_bank_id)
        .where(StationSlot.station_id == station.id)
        .order_by(StationSlot.slot_number)
    )
    return {number: serial for number, serial in rows}


async def test_snapshot_writes_move_detach_keep_levels_and_record_conditions(db: AsyncSession) -> None:
    station = await _station(db)
    a, b, c = new_bank_serial(), new_bank_serial(), new_bank_serial()
    await _write(
        db,
        station,
        [_bank(a, station, 1, 80), _bank(b, station, 2, 70), _bank(c, station, 3, 60)],
        {1: a, 2: b, 3: c, 4: None},
        NOW,
    )
    assert await _slots(db, station) == {1: a, 2: b, 3: c, 4: None}

    # a moves to slot 4 with an unknown level, b reports a fault, c is gone.
    later = NOW + timedelta(minutes=1)
    levels = await _write(
        db,
        station,
        [_bank(a, station, 4, None), _bank(b, station, 2, 65, condition="FAULT", condition_code="0x24")],
        {1: None, 2: b, 3: None, 4: a},
        later,
    )
    assert await _slots(db, station) == {1: None, 2: b, 3: None, 4: a}
    assert levels[a] == 80, "an unknown level keeps the last known one"
    banks = {
        bank.serial_number: bank
        for bank in (
            await db.execute(
                select(PowerBank)
                .where(PowerBank.serial_number.in_([a, b, c]))
                .execution_options(populate_existing=True)
            )
        ).scalars()
    }
    assert (banks[a].current_slot_number, banks[a].battery_level) == (4, 80)
    assert (banks[b].condition, banks[b].condition_code) == ("FAULT", "0x24")
    assert banks[c].current_station_id is None and banks[c].current_slot_number is None
    history = (
        await db.execute(
            select(PowerBankConditionHistory.condition).where(
                PowerBankConditionHistory.power_bank_id == banks[b].id
            )
        )
    ).scalars()
    assert list(history) == ["FAULT"]
    logs = (await db.execute(select(SyncLog.outcome).where(SyncLog.station_id == station.id))).scalars()
    assert list(logs) == ["SUCCESS", "SUCCESS"]
    refreshed = await db.execute(
        select(Station.observed_at, Station.total_slots).where(Station.id == station.id)
    )
    assert refreshed.one() == (later, 4)


async def test_a_snapshot_takes_a_bank_from_another_station_and_drops_phantom_slots(db: AsyncSession) -> None:
    first, second = await _station(db), await _station(db, total_slots=2)
    bank = new_bank_serial()
    await _write(db, first, [_bank(bank, first, 1, 90)], {1: bank, 2: None, 3: None, 4: None}, NOW)
    # A phantom slot 9 at the second station (a stray slot event), then its snapshot (2 slots) has the bank.
    db.add(
        StationSlot(
            id=uuid.uuid4(), station_id=second.id, slot_number=9, status="AVAILABLE", slot_metadata={}
        )
    )
    await db.flush()
    later = NOW + timedelta(minutes=1)
    await _write(db, second, [_bank(bank, second, 2, 90)], {1: None, 2: bank}, later, total_slots=2)
    assert await _slots(db, second) == {1: None, 2: bank}
    assert (await _slots(db, first))[1] is None, "a bank is in one slot only"


# ------------------------------------------------------------------ one statement (iot.snapshots)


def _plan(
    station: Station,
    slots: dict[int, str | None],
    at: datetime,
    *,
    key: str | None = None,
    replay_key: str | None = None,
    total_slots: int = 4,
    batteries: dict[str, int | None] | None = None,
    faults: dict[str, str] | None = None,
    device_status: str | None = "ONLINE",
) -> SnapshotPlan:
    batteries = batteries or {}
    faults = faults or {}
    banks = [
        BankObservation(
            serial_number=serial,
            model="CD-20",
            capacity_mah=10000,
            status="AVAILABLE",
            battery_level=batteries.get(serial, 70),
            hardware_info={},
            station_id=None,
            slot_number=number,
            condition="FAULT" if serial in faults else "HEALTHY",
            condition_code=faults.get(serial),
        )
        for number, serial in slots.items()
        if serial
    ]
    return SnapshotPlan(
        event_key=key or uuid.uuid4().hex,
        event_type="full",
        replay_key=replay_key,
        imei=station.imei,
        observed_at=at,
        device_status=device_status,
        total_slots=total_slots,
        hardware_patch={"signal_strength": "28"},
        last_heartbeat=at,
        result={"applied": True, "station_id": "", "station_serial": ""},
        payload_json='{"type": "full"}',
        duration_ms=1.0,
        now=at,
        banks=banks,
        slots=[
            PlannedSlot(
                number,
                "OCCUPIED" if serial else "AVAILABLE",
                batteries.get(serial, 70) if serial else 0,
                serial,
                {"n": number},
            )
            for number, serial in slots.items()
        ],
    )


async def _apply(db: AsyncSession, *plans: SnapshotPlan) -> list[AppliedSnapshot] | None:
    repository = SnapshotRepository(db)
    applied = await repository.apply(plans)
    if not repository.available:
        assert applied is None, "only PostgreSQL applies a snapshot in one statement"
    return applied


async def _banks(db: AsyncSession, *serials: str) -> dict[str, PowerBank]:
    rows = await db.execute(
        select(PowerBank)
        .where(PowerBank.serial_number.in_(serials))
        .execution_options(populate_existing=True)
    )
    return {bank.serial_number: bank for bank in rows.scalars()}


async def test_one_statement_moves_detaches_keeps_levels_and_records_conditions(db: AsyncSession) -> None:
    station = await _station(db)
    a, b, c = new_bank_serial(), new_bank_serial(), new_bank_serial()
    first = _plan(station, {1: a, 2: b, 3: c, 4: None}, NOW, batteries={a: 80, b: 70, c: 60})
    applied = await _apply(db, first)
    if applied is None:
        return
    assert applied == [AppliedSnapshot(station.id, station.serial_number)]
    assert await _slots(db, station) == {1: a, 2: b, 3: c, 4: None}

    # a moves to slot 4 with an unknown level, b reports a fault, c is gone; c is RETIRED meanwhile.
    await db.execute(update(PowerBank).where(PowerBank.serial_number == c).values(status="RETIRED"))
    later = NOW + timedelta(minutes=1)
    second = _plan(
        station, {1: None, 2: b, 3: None, 4: a}, later, batteries={a: None, b: 65}, faults={b: "0x24"}
    )
    assert await _apply(db, second) is not None
    assert await _slots(db, station) == {1: None, 2: b, 3: None, 4: a}
    banks = await _banks(db, a, b, c)
    assert (banks[a].current_slot_number, banks[a].battery_level) == (4, 80), "unknown keeps the last level"
    assert (banks[b].condition, banks[b].condition_code, banks[b].battery_level) == ("FAULT", "0x24", 65)
    assert banks[c].current_station_id is None and banks[c].status == "RETIRED"
    slot_four = await db.scalar(
        select(StationSlot.battery_level).where(
            StationSlot.station_id == station.id, StationSlot.slot_number == 4
        )
    )
    assert slot_four == 80, "a slot shows its bank's last known level while the level is unknown"
    history = await db.execute(
        select(PowerBankConditionHistory.condition, PowerBankConditionHistory.previous_condition).where(
            PowerBankConditionHistory.power_bank_id == banks[b].id
        )
    )
    assert list(history) == [("FAULT", "HEALTHY")]
    stored = await db.execute(
        select(ProcessedEvent.outcome, ProcessedEvent.result).where(
            ProcessedEvent.event_key == second.event_key
        )
    )
    outcome, result = stored.one()
    assert outcome == "SUCCESS" and result["station_serial"] == station.serial_number
    logs = (await db.execute(select(SyncLog.outcome).where(SyncLog.station_id == station.id))).scalars()
    assert list(logs) == ["SUCCESS", "SUCCESS"]
    row = await db.execute(
        select(Station.observed_at, Station.status, Station.hardware_info)
        .where(Station.id == station.id)
        .execution_options(populate_existing=True)
    )
    observed_at, status, hardware = row.one()
    assert (observed_at, status, hardware["signal_strength"]) == (later, "ONLINE", "28")
    changes = await db.execute(
        select(StationStatusHistory.previous_status, StationStatusHistory.status).where(
            StationStatusHistory.station_id == station.id
        )
    )
    assert list(changes) == [("OFFLINE", "ONLINE")], "one history row: the status changed once"


async def test_one_statement_for_many_stations_moves_a_bank_and_drops_phantoms(db: AsyncSession) -> None:
    first, second = await _station(db), await _station(db, total_slots=2)
    bank, other = new_bank_serial(), new_bank_serial()
    if await _apply(db, _plan(first, {1: bank, 2: None, 3: None, 4: None}, NOW)) is None:
        return
    db.add(
        StationSlot(
            id=uuid.uuid4(), station_id=second.id, slot_number=9, status="AVAILABLE", slot_metadata={}
        )
    )
    await db.flush()
    later = NOW + timedelta(minutes=1)
    # One statement: the first station no longer has the bank (another one instead), the second has it.
    both = [
        _plan(first, {1: other, 2: None, 3: None}, later, total_slots=3),
        _plan(second, {1: None, 2: bank}, later, total_slots=2),
    ]
    applied = await _apply(db, *both)
    assert applied is not None and [snapshot.station_id for snapshot in applied] == [first.id, second.id]
    assert await _slots(db, first) == {1: other, 2: None, 3: None}, "slot 4 is beyond the cabinet now"
    assert await _slots(db, second) == {1: None, 2: bank}, "the phantom slot 9 is gone"
    banks = await _banks(db, bank)
    assert (banks[bank].current_station_id, banks[bank].current_slot_number) == (second.id, 2)


async def test_one_statement_writes_nothing_when_a_snapshot_needs_the_general_path(db: AsyncSession) -> None:
    station = await _station(db)
    bank = new_bank_serial()
    replay_key = f"sig:{uuid.uuid4().hex}"
    if await _apply(db, _plan(station, {1: bank}, NOW, replay_key=replay_key)) is None:
        return
    other = await _station(db)
    refused = {
        "stale": [_plan(station, {1: None}, NOW - timedelta(seconds=1))],
        "replayed signature": [_plan(station, {1: None}, NOW, replay_key=replay_key)],
        "unknown station": [_plan(Station(imei=new_imei()), {1: None}, NOW)],
        "one of two is stale": [
            _plan(other, {1: None}, NOW),
            _plan(station, {1: None}, NOW - timedelta(seconds=1)),
        ],
    }
    for reason, plans in refused.items():
        assert await _apply(db, *plans) is None, reason
        keys = [plan.event_key for plan in plans]
        claimed = await db.scalar(
            select(func.count()).select_from(ProcessedEvent).where(ProcessedEvent.event_key.in_(keys))
        )
        assert claimed == 0, reason
    assert await _slots(db, station) == {1: bank}
    assert await _slots(db, other) == {}
    repeated = _plan(station, {1: None}, NOW + timedelta(seconds=1))
    assert await _apply(db, repeated) is not None
    assert await _apply(db, repeated) is None, "a repeated event is the general path's (a duplicate)"


def test_snapshots_of_one_station_or_sharing_a_bank_are_not_applied_together() -> None:
    station, other = Station(imei=new_imei()), Station(imei=new_imei())
    bank = new_bank_serial()
    assert applicable_together([_plan(station, {1: bank}, NOW), _plan(other, {1: None}, NOW)])
    assert not applicable_together([_plan(station, {1: None}, NOW), _plan(station, {1: None}, NOW)])
    assert not applicable_together([_plan(station, {1: bank}, NOW), _plan(other, {2: bank}, NOW)])
    assert not applicable_together([])
