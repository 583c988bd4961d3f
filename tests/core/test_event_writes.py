"""The set-based writes of the small station events (``iot.event_writes``) on both dialects: every test runs
on SQLite (the same definitions one statement at a time) and on PostgreSQL (one statement of CTEs; marked
``postgres``), so the two are held to one behaviour. The endpoint-level rules are in test_internal_events.py
and test_device_truth.py; these check the statements themselves, including what the endpoint cannot reach
directly (a stale event, the claim folded into the statement)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from chargeghar_core.iot import event_writes
from chargeghar_core.iot.event_writes import EventKeys, SlotInput, StatusInput
from chargeghar_core.iot.models import ProcessedEvent
from chargeghar_core.kit.db import create_engine, dialect_name
from chargeghar_core.powerbanks.models import PowerBank, PowerBankConditionHistory
from chargeghar_core.settings import DatabaseSettings
from chargeghar_core.stations.models import (
    DeviceFaultCounter,
    Station,
    StationSlot,
    StationStatusHistory,
    SyncLog,
)
from core_support import new_bank_serial, new_imei
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


@pytest.fixture
def db(dialect_db: AsyncSession) -> AsyncSession:
    """Every test here runs on both dialects (see tests/core/conftest.py)."""
    return dialect_db


NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


async def _station(db: AsyncSession, *, total_slots: int = 4, **values: Any) -> Station:
    imei = new_imei()
    station = Station(
        id=uuid.uuid4(),
        imei=imei,
        serial_number=f"S-{imei}",
        name=imei,
        total_slots=total_slots,
        hardware_info=values.pop("hardware_info", {}),
        **values,
    )
    db.add(station)
    await db.flush()
    return station


async def _claimed(db: AsyncSession, event_type: str) -> str:
    key = uuid.uuid4().hex
    db.add(ProcessedEvent(event_key=key, event_type=event_type, created_at=NOW))
    await db.flush()
    return key


def _keys(key: str, event_type: str, imei: str, *, replay_key: str | None = None) -> EventKeys:
    return EventKeys(
        event_key=key,
        event_type=event_type,
        imei=imei,
        now=NOW,
        replay_key=replay_key,
        station_key=imei,
        payload_json=f'{{"type": "{event_type}"}}',
        duration_ms=1.5,
    )


async def _fresh(db: AsyncSession, model: Any, **where: Any) -> Any:
    query = select(model).filter_by(**where).execution_options(populate_existing=True)
    return (await db.execute(query)).scalars().all()


async def _stored(db: AsyncSession, key: str) -> tuple[ProcessedEvent, list[SyncLog]]:
    processed = (await _fresh(db, ProcessedEvent, event_key=key))[0]
    return processed, list(await _fresh(db, SyncLog, event_id=key))


def _status(reported: str, *, at: datetime = NOW, **values: Any) -> StatusInput:
    return StatusInput(
        reported=reported,
        observed_at=at,
        channel=values.get("channel"),
        channels=values.get("channels"),
        hardware_info=values.get("hardware_info"),
        last_heartbeat=values.get("last_heartbeat"),
    )


# ------------------------------------------------------------------------------------------- status


async def test_status_changes_the_station_records_history_result_and_sync_log(db: AsyncSession) -> None:
    before = NOW - timedelta(minutes=10)
    station = await _station(
        db,
        status="OFFLINE",
        status_changed_at=before,
        hardware_info={"fw": "1", "channels": {"http": "ONLINE"}},
    )
    key = await _claimed(db, "status")
    applied = await event_writes.apply_status(
        db,
        dialect_name(db),
        _keys(key, "status", station.imei),
        _status(
            "ONLINE", channel="mqtt", channels={"mqtt": "ONLINE"}, hardware_info={"fw": "2", "board": "x"}
        ),
        station,
    )
    assert applied.calc is not None and applied.calc["stale"] is False
    assert applied.calc["result"] == {
        "station_id": str(station.id),
        "station_serial": station.serial_number,
        "status": "ONLINE",
        "status_changed": True,
        "applied": True,
    }
    (row,) = await _fresh(db, Station, id=station.id)
    assert (row.status, row.status_changed_at, row.last_heartbeat) == ("ONLINE", NOW, NOW)
    assert row.hardware_info == {"fw": "2", "board": "x", "channels": {"http": "ONLINE", "mqtt": "ONLINE"}}
    (history,) = await _fresh(db, StationStatusHistory, station_id=station.id)
    assert (history.previous_status, history.status, history.channel) == ("OFFLINE", "ONLINE", "mqtt")
    assert history.previous_duration_s == pytest.approx(600.0)
    processed, logs = await _stored(db, key)
    assert (processed.outcome, processed.station_id) == ("SUCCESS", station.id)
    assert processed.result == applied.calc["result"]
    assert [(log.outcome, log.station_id, log.payload) for log in logs] == [
        ("SUCCESS", station.id, {"type": "status"})
    ]


async def test_status_keeps_maintenance_and_an_offline_report_does_not_move_the_heartbeat(
    db: AsyncSession,
) -> None:
    heartbeat = NOW - timedelta(hours=1)
    station = await _station(
        db, status="MAINTENANCE", is_maintenance=True, status_changed_at=heartbeat, last_heartbeat=heartbeat
    )
    applied = await event_writes.apply_status(
        db,
        dialect_name(db),
        _keys(await _claimed(db, "status"), "status", station.imei),
        _status("OFFLINE"),
        station,
    )
    assert applied.calc is not None and applied.calc["result"]["status_changed"] is False
    (row,) = await _fresh(db, Station, id=station.id)
    # Maintenance pins the status; the effective status is not OFFLINE, so the heartbeat moves.
    assert row.status == "MAINTENANCE" and row.last_heartbeat == NOW
    assert await _fresh(db, StationStatusHistory, station_id=station.id) == []


async def test_a_status_older_than_the_last_change_is_stale_and_writes_only_its_result(
    db: AsyncSession,
) -> None:
    station = await _station(db, status="ONLINE", status_changed_at=NOW)
    key = await _claimed(db, "status")
    applied = await event_writes.apply_status(
        db,
        dialect_name(db),
        _keys(key, "status", station.imei),
        _status("OFFLINE", at=NOW - timedelta(seconds=5)),
        station,
    )
    assert applied.calc is not None and applied.calc["stale"] is True
    assert applied.calc["result"]["applied"] is False and applied.calc["result"]["status"] == "ONLINE"
    (row,) = await _fresh(db, Station, id=station.id)
    assert row.status == "ONLINE"
    processed, logs = await _stored(db, key)
    assert processed.outcome == "STALE" and [log.outcome for log in logs] == ["STALE"]


@pytest.mark.postgres
async def test_direct_status_claims_locks_and_applies_in_one_statement(
    postgres_dialect_url: str,
) -> None:
    engine = create_engine(DatabaseSettings(url=postgres_dialect_url))
    try:
        async with engine.connect() as connection:
            outer = await connection.begin()
            maker = async_sessionmaker(bind=connection, join_transaction_mode="create_savepoint")
            async with maker() as db:
                station = await _station(db, status="OFFLINE")
                key = uuid.uuid4().hex
                keys = _keys(key, "status", station.imei, replay_key=f"sig:{key}")
                first = await event_writes.apply_status(db, "postgresql", keys, _status("ONLINE"), None)
                assert (first.claimed, first.replayed) == (True, False)
                assert first.calc is not None and first.calc["result"]["status"] == "ONLINE"
                again = await event_writes.apply_status(db, "postgresql", keys, _status("ONLINE"), None)
                assert (again.claimed, again.replayed, again.calc) == (False, True, None)
                assert len(await _fresh(db, SyncLog, event_id=key)) == 1
                unknown = _keys(uuid.uuid4().hex, "status", new_imei())
                missing = await event_writes.apply_status(db, "postgresql", unknown, _status("ONLINE"), None)
                # Claimed, but there is no station to apply to: the caller creates it.
                assert missing.claimed is True and missing.calc is None
            await outer.rollback()
    finally:
        await engine.dispose()


# ------------------------------------------------------------------------------------------- slots and banks


def _slot(kind: str, slot_number: int, serial: str | None, **values: Any) -> SlotInput:
    defaults: dict[str, Any] = {
        "kind": kind,
        "slot_number": slot_number,
        "observed_at": NOW,
        "slot_status": "OCCUPIED" if serial else "AVAILABLE",
        "battery_level": None,
        "bank_serial": serial,
        "new_bank_model": "PB-TEST",
        "new_bank_capacity": 5000,
        "bank_condition": None,
        "bank_condition_code": None,
        "bank_hardware_info": None,
        "metadata_patch": {"last_return_at": NOW.isoformat()},
        "fault_code": None,
        "stale_by_snapshot": kind == "slot_event",
        "moves_bank": kind != "return_failed",
        "heartbeat": None,
        "result_fields": {"slot_number": slot_number},
    }
    return SlotInput(**{**defaults, **values})


async def _apply_slot(db: AsyncSession, station: Station, slot: SlotInput) -> event_writes.Applied:
    key = await _claimed(db, slot.kind)
    return await event_writes.apply_slot(
        db,
        dialect_name(db),
        _keys(key, slot.kind, station.imei),
        slot,
        station,
        stale_fields={"applied": False},
        condition_at=NOW,
    )


async def _bank(db: AsyncSession, serial: str, **values: Any) -> PowerBank:
    bank = PowerBank(
        id=uuid.uuid4(), serial_number=serial, model="M", capacity_mah=1, hardware_info={}, **values
    )
    db.add(bank)
    await db.flush()
    return bank


async def test_a_returned_bank_is_created_and_placed_with_its_battery(db: AsyncSession) -> None:
    station = await _station(db)
    serial = new_bank_serial()
    applied = await _apply_slot(
        db,
        station,
        _slot("returned", 2, serial, battery_level=64, bank_hardware_info={"temp": 30}, heartbeat=NOW),
    )
    assert applied.calc is not None
    assert applied.calc["result"] == {
        "slot_number": 2,
        "station_id": str(station.id),
        "station_serial": station.serial_number,
        "battery_level": 64,
    }
    (bank,) = await _fresh(db, PowerBank, serial_number=serial)
    assert (bank.model, bank.capacity_mah, bank.status, bank.battery_level) == (
        "PB-TEST",
        5000,
        "AVAILABLE",
        64,
    )
    assert (bank.current_station_id, bank.current_slot_number, bank.hardware_info) == (
        station.id,
        2,
        {"temp": 30},
    )
    (slot,) = await _fresh(db, StationSlot, station_id=station.id, slot_number=2)
    assert (slot.status, slot.battery_level, slot.power_bank_id) == ("OCCUPIED", 64, bank.id)
    assert slot.slot_metadata == {"last_return_at": NOW.isoformat()}
    (row,) = await _fresh(db, Station, id=station.id)
    assert row.last_heartbeat == NOW


async def test_a_return_moves_the_bank_from_its_old_slot_and_detaches_the_displaced_one(
    db: AsyncSession,
) -> None:
    station = await _station(db)
    moved = await _bank(db, new_bank_serial(), battery_level=40, status="LOST")
    displaced = await _bank(db, new_bank_serial(), current_station_id=station.id, current_slot_number=3)
    db.add_all(
        [
            StationSlot(
                id=uuid.uuid4(),
                station_id=station.id,
                slot_number=1,
                status="OCCUPIED",
                power_bank_id=moved.id,
            ),
            StationSlot(
                id=uuid.uuid4(),
                station_id=station.id,
                slot_number=3,
                status="OCCUPIED",
                power_bank_id=None,
                slot_metadata={"keep": 1},
            ),
        ]
    )
    await db.flush()
    # Unknown battery now: the slot shows the bank's stored level. A LOST bank is found.
    applied = await _apply_slot(db, station, _slot("returned", 3, moved.serial_number))
    assert applied.calc is not None and applied.calc["result"]["battery_level"] == 40
    (old,) = await _fresh(db, StationSlot, station_id=station.id, slot_number=1)
    assert (old.status, old.power_bank_id) == ("AVAILABLE", None)
    (new,) = await _fresh(db, StationSlot, station_id=station.id, slot_number=3)
    assert (new.power_bank_id, new.battery_level) == (moved.id, 40)
    assert new.slot_metadata == {"keep": 1, "last_return_at": NOW.isoformat()}
    (bank,) = await _fresh(db, PowerBank, id=moved.id)
    assert (bank.status, bank.current_slot_number) == ("AVAILABLE", 3)
    (gone,) = await _fresh(db, PowerBank, id=displaced.id)
    assert (gone.current_station_id, gone.current_slot_number) == (None, None)


async def test_operator_holds_survive_a_return_and_damage_is_a_condition(db: AsyncSession) -> None:
    station = await _station(db)
    retired = await _bank(db, new_bank_serial(), status="RETIRED")
    applied = await _apply_slot(
        db,
        station,
        _slot("returned", 1, retired.serial_number, bank_condition="FAULT", bank_condition_code="DAMAGED"),
    )
    assert applied.calc is not None
    (bank,) = await _fresh(db, PowerBank, id=retired.id)
    assert (bank.status, bank.condition, bank.condition_code, bank.condition_changed_at) == (
        "RETIRED",
        "FAULT",
        "DAMAGED",
        NOW,
    )
    (history,) = await _fresh(db, PowerBankConditionHistory, power_bank_id=retired.id)
    assert (history.previous_condition, history.condition, history.source) == ("HEALTHY", "FAULT", "returned")


async def test_a_slot_event_faults_the_bank_counts_the_code_and_a_good_one_heals_it(db: AsyncSession) -> None:
    station = await _station(db)
    serial = new_bank_serial()
    failed = _slot(
        "slot_event",
        2,
        serial,
        battery_level=70,
        bank_condition="FAULT",
        bank_condition_code="0x03",
        fault_code="0x03",
        metadata_patch={"state_code": 3, "state_name": "X"},
    )
    assert (await _apply_slot(db, station, failed)).calc is not None
    (bank,) = await _fresh(db, PowerBank, serial_number=serial)
    assert (bank.condition, bank.condition_code) == ("FAULT", "0x03")
    (counter,) = await _fresh(db, DeviceFaultCounter, station_id=station.id)
    assert (counter.source, counter.code, counter.count) == ("slot_event", "0x03", 1)
    healed = _slot(
        "slot_event",
        2,
        serial,
        bank_condition="HEALTHY",
        metadata_patch={"state_code": 1, "state_name": "OK"},
    )
    assert (await _apply_slot(db, station, healed)).calc is not None
    (bank,) = await _fresh(db, PowerBank, serial_number=serial)
    assert (bank.condition, bank.condition_code, bank.battery_level) == ("HEALTHY", None, 70)
    changes = await _fresh(db, PowerBankConditionHistory, power_bank_id=bank.id)
    assert sorted((c.previous_condition, c.condition) for c in changes) == [
        ("FAULT", "HEALTHY"),
        ("HEALTHY", "FAULT"),
    ]
    (slot,) = await _fresh(db, StationSlot, station_id=station.id, slot_number=2)
    assert slot.slot_metadata == {"state_code": 1, "state_name": "OK"}


async def test_a_slot_event_older_than_the_snapshot_is_stale_and_a_slot_outside_the_layout_refused(
    db: AsyncSession,
) -> None:
    station = await _station(db, observed_at=NOW)
    key = await _claimed(db, "slot_event")
    stale = _slot("slot_event", 1, None, observed_at=NOW - timedelta(seconds=1))
    applied = await event_writes.apply_slot(
        db,
        dialect_name(db),
        _keys(key, "slot_event", station.imei),
        stale,
        station,
        stale_fields={"applied": False},
        condition_at=NOW,
    )
    assert applied.calc is not None and applied.calc["stale"] is True
    assert applied.calc["result"] == {
        "applied": False,
        "station_id": str(station.id),
        "station_serial": station.serial_number,
    }
    assert await _fresh(db, StationSlot, station_id=station.id) == []
    assert (await _stored(db, key))[0].outcome == "STALE"
    refused = await _apply_slot(db, station, _slot("slot_event", 9, None))
    assert refused.calc is not None and refused.calc["refused"] is True and refused.calc["total_slots"] == 4
    assert await _fresh(db, StationSlot, station_id=station.id) == []


async def test_a_failed_return_is_counted_and_noted_on_an_existing_slot_only(db: AsyncSession) -> None:
    station = await _station(db)
    db.add(StationSlot(id=uuid.uuid4(), station_id=station.id, slot_number=1, slot_metadata={"a": 1}))
    await db.flush()
    note = {"last_return_failure": {"state_code": "0x24", "at": NOW.isoformat()}}
    for slot_number in (1, 2, 1):
        failure = _slot("return_failed", slot_number, None, fault_code="0x24", metadata_patch=note)
        assert (await _apply_slot(db, station, failure)).calc is not None
    (counter,) = await _fresh(db, DeviceFaultCounter, station_id=station.id)
    assert (counter.source, counter.code, counter.count) == ("return_failed", "0x24", 3)
    slots = await _fresh(db, StationSlot, station_id=station.id)
    assert [(slot.slot_number, slot.slot_metadata) for slot in slots] == [(1, {"a": 1, **note})]


# ------------------------------------------------------------------------------------------- command results


@pytest.mark.parametrize("known", [True, False])
async def test_a_command_result_is_recorded_with_its_station(db: AsyncSession, known: bool) -> None:
    station = await _station(db)
    imei = station.imei if known else new_imei()
    key = await _claimed(db, "command_result")
    applied = await event_writes.apply_command_record(
        db,
        dialect_name(db),
        _keys(key, "command_result", imei),
        result_fields={"command_id": "c-1", "settled": None},
        command_id="c-1",
        reply_serial=None,
        settles=True,
        direct=False,
    )
    assert applied.calc is not None and applied.calc["refused"] is False
    expected_id = station.id if known else None
    assert applied.calc["result"] == {
        "command_id": "c-1",
        "settled": None,
        "station_id": str(expected_id) if known else None,
    }
    processed, logs = await _stored(db, key)
    assert (processed.outcome, processed.station_id) == ("SUCCESS", expected_id)
    assert [(log.outcome, log.station_id) for log in logs] == [("SUCCESS", expected_id)]
