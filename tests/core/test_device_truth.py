"""Device truth in core: faults heal with the device, unknown is not zero, failed returns and slot events are
recorded and counted, slot numbers follow the cabinet's layout, loose-typed hardware_info is accepted."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from chargeghar_core.powerbanks.models import PowerBank, PowerBankConditionHistory
from chargeghar_core.stations.models import DeviceFaultCounter, Station, StationSlot, SyncLog
from chargeghar_core.stations.repository import StationRepository
from core_support import CoreClient, full_event, new_bank_serial, new_imei
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

# Every hole state code the device may report for a slot holding a bank (protocol.md §4.12.1), plus an
# undocumented one, with the fault it must record.
HOLE_FAULTS = [
    ("0x02", "MAINTENANCE"),
    ("0x03", "MAINTENANCE"),
    ("0x04", "MAINTENANCE"),
    ("0x05", "DAMAGED"),
    ("0x06", "DAMAGED"),
    ("0x07", "MAINTENANCE"),
    ("0x08", "MAINTENANCE"),
    ("0x09", "MAINTENANCE"),
    ("0x0a", "MAINTENANCE"),
    ("0x3c", "MAINTENANCE"),  # unknown code: a fault, never AVAILABLE
]


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _faulty(event: dict[str, Any], slot_number: int, code: str, bank_status: str) -> dict[str, Any]:
    """What the ingest sends for a bank in a fault hole state (events.map_hole_state)."""
    for slot in event["slots"]:
        if slot["slot_number"] == slot_number:
            slot["status"] = "ERROR"
            slot["slot_metadata"]["error_code"] = code
    for bank in event["power_banks"]:
        if bank["current_slot"] == slot_number:
            bank["status"] = bank_status
    return event


async def _bank(session: AsyncSession, serial: str) -> PowerBank:
    row = await session.execute(
        select(PowerBank).where(PowerBank.serial_number == serial).execution_options(populate_existing=True)
    )
    return row.scalar_one()


async def _station(session: AsyncSession, imei: str) -> Station:
    row = await session.execute(
        select(Station).where(Station.imei == imei).execution_options(populate_existing=True)
    )
    return row.scalar_one()


async def _slot_numbers(session: AsyncSession, station_id: uuid.UUID) -> list[int]:
    rows = await session.execute(
        select(StationSlot.slot_number)
        .where(StationSlot.station_id == station_id)
        .order_by(StationSlot.slot_number)
    )
    return list(rows.scalars())


async def _history(session: AsyncSession, bank_id: uuid.UUID) -> list[tuple[str | None, str, str | None]]:
    rows = await session.execute(
        select(
            PowerBankConditionHistory.previous_condition,
            PowerBankConditionHistory.condition,
            PowerBankConditionHistory.condition_code,
        )
        .where(PowerBankConditionHistory.power_bank_id == bank_id)
        .order_by(PowerBankConditionHistory.changed_at)
    )
    return [(previous, condition, code) for previous, condition, code in rows]


async def _rentable(client: CoreClient, session: AsyncSession, imei: str) -> int:
    station = await _station(session, imei)
    counts = await StationRepository(session).rentable_counts([station.id])
    return counts.get(station.id, 0)


# ------------------------------------------------------------------------------------------- faults heal


@pytest.mark.parametrize(("code", "device_status"), HOLE_FAULTS)
async def test_a_device_fault_clears_with_the_next_healthy_snapshot(
    client: CoreClient, session: AsyncSession, code: str, device_status: str
) -> None:
    imei = new_imei()
    bank = new_bank_serial()
    start = datetime.now(UTC)
    healthy = full_event(imei, {1: bank, 2: None}, observed_at=_iso(start))
    assert (await client.sync(healthy)).status_code == 200
    assert await _rentable(client, session, imei) == 1

    fault = _faulty(
        full_event(imei, {1: bank, 2: None}, observed_at=_iso(start + timedelta(seconds=1))),
        1,
        code,
        device_status,
    )
    assert (await client.sync(fault)).status_code == 200
    row = await _bank(session, bank)
    assert (row.status, row.condition, row.condition_code) == ("AVAILABLE", "FAULT", code)
    assert await _rentable(client, session, imei) == 0

    recovered = full_event(imei, {1: bank, 2: None}, observed_at=_iso(start + timedelta(seconds=2)))
    assert (await client.sync(recovered)).status_code == 200
    row = await _bank(session, bank)
    assert (row.status, row.condition, row.condition_code) == ("AVAILABLE", "HEALTHY", None)
    assert await _rentable(client, session, imei) == 1
    assert await _history(session, row.id) == [("HEALTHY", "FAULT", code), ("FAULT", "HEALTHY", None)]


async def test_an_operator_status_survives_healthy_snapshots(
    client: CoreClient, session: AsyncSession
) -> None:
    imei = new_imei()
    bank = new_bank_serial()
    assert (await client.sync(full_event(imei, {1: bank}))).status_code == 200
    row = await _bank(session, bank)
    row.status = "MAINTENANCE"  # the operator's decision
    await session.flush()
    later = _iso(datetime.now(UTC) + timedelta(seconds=1))
    assert (await client.sync(full_event(imei, {1: bank}, observed_at=later))).status_code == 200
    row = await _bank(session, bank)
    assert (row.status, row.condition) == ("MAINTENANCE", "HEALTHY")
    assert await _rentable(client, session, imei) == 0


async def test_a_failed_slot_event_faults_the_bank_and_a_successful_one_heals_it(
    client: CoreClient, session: AsyncSession
) -> None:
    imei = new_imei()
    bank = new_bank_serial()
    assert (await client.sync(full_event(imei, {1: bank, 2: None}))).status_code == 200
    failed = _slot_event(imei, 1, 0x24, bank, slot_status="ERROR", bank_status="MAINTENANCE")
    response = await client.sync(failed)
    assert response.status_code == 200, response.text
    row = await _bank(session, bank)
    assert (row.status, row.condition, row.condition_code) == ("AVAILABLE", "FAULT", "0x24")
    ok = await client.sync(_slot_event(imei, 1, 0x01, bank, slot_status="OCCUPIED", bank_status="AVAILABLE"))
    assert ok.status_code == 200
    row = await _bank(session, bank)
    assert (row.status, row.condition) == ("AVAILABLE", "HEALTHY")
    counts = await StationRepository(session).fault_counts((await _station(session, imei)).id)
    assert counts == {("slot_event", "0x24"): 1}


def _slot_event(
    imei: str, slot_number: int, state: int, bank: str | None, *, slot_status: str, bank_status: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "slot_event",
        "timestamp": 1762928800,
        "device": {"serial_number": imei, "imei": imei},
        "slot_number": slot_number,
        "state_code": state,
        "state_name": "SUCCESS" if state == 1 else f"UNKNOWN_0x{state:02x}",
        "slot_status": slot_status,
        "event_id": str(uuid.uuid4()),
    }
    if bank is not None:
        body["power_bank_serial"] = bank
        body["power_bank_status"] = bank_status
    return body


# ------------------------------------------------------------------------------------------- unknown battery


async def test_an_unknown_battery_never_overwrites_a_known_one(
    client: CoreClient, session: AsyncSession
) -> None:
    imei = new_imei()
    bank = new_bank_serial()
    start = datetime.now(UTC)
    assert (
        await client.sync(full_event(imei, {1: bank}, battery=88, observed_at=_iso(start)))
    ).status_code == 200
    unknown = full_event(imei, {1: bank}, observed_at=_iso(start + timedelta(seconds=1)))
    unknown["slots"][0]["battery_level"] = 255  # what a 0xFF byte means on the wire
    del unknown["power_banks"][0]["battery_level"]  # ... and how our ingest sends it (omitted)
    assert (await client.sync(unknown)).status_code == 200
    row = await _bank(session, bank)
    assert row.battery_level == 88
    assert row.hardware_info["battery_unknown"] is True
    slot = (
        await session.execute(
            select(StationSlot)
            .where(StationSlot.power_bank_id == row.id)
            .execution_options(populate_existing=True)
        )
    ).scalar_one()
    assert slot.battery_level == 88
    assert slot.slot_metadata["battery_unknown"] is True


# ------------------------------------------------------------------------------------------- failed returns


async def test_a_failed_return_is_recorded_and_counted_per_code(
    client: CoreClient, session: AsyncSession
) -> None:
    imei = new_imei()
    assert (await client.sync(full_event(imei, {1: None, 2: None}))).status_code == 200
    for _ in range(2):
        failed = {
            "type": "return_failed",
            "timestamp": 1762928800,
            "device": {"serial_number": imei, "imei": imei},
            "slot_number": 2,
            "state_code": 0x24,
            "state_name": "AREA_CODE_ERROR",
            "power_bank_serial": "40818052",
            "event_id": str(uuid.uuid4()),
        }
        response = await client.sync(failed)
        assert response.status_code == 200, response.text
        assert response.json()["data"]["state_code"] == "0x24"
    station = await _station(session, imei)
    assert await StationRepository(session).fault_counts(station.id) == {("return_failed", "0x24"): 2}
    logged = await session.execute(
        select(SyncLog.outcome).where(SyncLog.station_id == station.id, SyncLog.event_type == "return_failed")
    )
    assert list(logged.scalars()) == ["SUCCESS", "SUCCESS"]
    counter = await session.execute(
        select(DeviceFaultCounter).where(DeviceFaultCounter.station_id == station.id)
    )
    assert counter.scalar_one().count == 2


# ------------------------------------------------------------------------------------------- slot layout


async def test_slot_events_outside_the_layout_are_refused(client: CoreClient, session: AsyncSession) -> None:
    imei = new_imei()
    bank = new_bank_serial()
    assert (await client.sync(full_event(imei, {1: None, 2: None, 3: None, 4: None}))).status_code == 200
    phantom = await client.sync(
        _slot_event(imei, 40, 0x01, bank, slot_status="OCCUPIED", bank_status="AVAILABLE")
    )
    assert phantom.status_code == 400
    assert phantom.json()["details"] == {"slot_number": ["unknown slot (station has 4)"]}
    failed_return = {
        "type": "return_failed",
        "timestamp": 1762928800,
        "device": {"serial_number": imei, "imei": imei},
        "slot_number": 40,
        "state_code": 0x24,
        "state_name": "AREA_CODE_ERROR",
    }
    assert (await client.sync(failed_return)).status_code == 400
    station = await _station(session, imei)
    assert await _slot_numbers(session, station.id) == [1, 2, 3, 4]


async def test_a_full_snapshot_removes_slots_it_does_not_list(
    client: CoreClient, session: AsyncSession
) -> None:
    imei = new_imei()
    assert (await client.sync(full_event(imei, {1: None, 2: None, 3: None, 4: None}))).status_code == 200
    station = await _station(session, imei)
    session.add(StationSlot(id=uuid.uuid4(), station_id=station.id, slot_number=40, slot_metadata={}))
    await session.flush()
    later = _iso(datetime.now(UTC) + timedelta(seconds=1))
    snapshot = full_event(imei, {1: None, 2: None, 3: None, 4: None}, observed_at=later)
    assert (await client.sync(snapshot)).status_code == 200
    assert await _slot_numbers(session, station.id) == [1, 2, 3, 4]


# ---------------------------------------------------------------------------------- loose hardware_info


async def test_loose_typed_hardware_info_and_slot_metadata_are_accepted(
    client: CoreClient, session: AsyncSession
) -> None:
    imei = new_imei()
    bank = new_bank_serial()
    event = full_event(imei, {1: bank, 2: None})
    event["slots"][0]["slot_metadata"] = {"micro_switch": True, "solenoid_valve": 0, "lock_count": "2"}
    event["power_banks"][0]["hardware_info"] = {
        "temperature": 24.5,
        "soft_version": "1.3.2",
        "hard_version": "v2",
        "area_code": "NP-01",
        "micro_switch": False,
        "solenoid_valve": "1",
        "vendor_field": {"x": 1},
    }
    response = await client.sync(event)
    assert response.status_code == 200, response.text
    row = await _bank(session, bank)
    assert row.hardware_info == {
        "temperature": 24.5,
        "soft_version": "1.3.2",
        "hard_version": "v2",
        "area_code": "NP-01",
        "micro_switch": "0",
        "solenoid_valve": "1",
        "vendor_field": {"x": 1},
    }
    slot = (
        await session.execute(
            select(StationSlot)
            .where(StationSlot.power_bank_id == row.id)
            .execution_options(populate_existing=True)
        )
    ).scalar_one()
    assert (slot.slot_metadata["micro_switch"], slot.slot_metadata["solenoid_valve"]) == ("1", "0")
    assert slot.slot_metadata["lock_count"] == "2"


async def test_a_full_sync_without_status_keeps_the_station_status(
    client: CoreClient, session: AsyncSession
) -> None:
    imei = new_imei()
    event = full_event(imei, {1: None})
    del event["device"]["status"]  # an HTTP upload: says nothing about the MQTT link
    assert (await client.sync(event)).status_code == 200
    assert (await _station(session, imei)).status == "OFFLINE"
