"""Frame → event mapping (contract.md §2.1–§2.4, protocol.md §4.2, §8.2, §9 #4/#11/#12, §4.12.1)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from chargeghar_protocol.codec import (
    BoardRecord,
    CabinetSnapshot,
    Heartbeat,
    HoleRecord,
    ReturnReport,
    SlotStateReport,
    decode_frame,
    decode_hex,
    encode_frame,
)
from chargeghar_protocol.contract import (
    PowerBankStatus,
    SlotStatus,
    StationStatus,
    parse_station_event,
)
from chargeghar_protocol.events import (
    HOLE_STATE_STATUSES,
    heartbeat_to_status_event,
    is_successful_return,
    map_hole_state,
    map_slot_report_state,
    normalize_signal,
    pinboard_io,
    return_to_returned_event,
    slot_report_to_slot_event,
    snapshot_to_full_event,
)

IMEI = "864601069946994"
RECEIVED_AT = datetime(2025, 11, 12, 6, 26, 16, 509000, tzinfo=UTC)

# protocol.md §4.2 / §9 #2: the real 0x10 upload of station 864601069946994.
REAL_UPLOAD_FRAME = (
    "A8 00 47 10  01 04 00 00 04 0F"
    "  01 00 00 00 00 00 00 00 00 00 01 00 00 00 80  02 00 00 00 00 00 00 00 00 00 01 00 00 00 80"
    "  03 01 00 E4 49 02 6E D5 84 64 18 32 02 19 00  04 00 00 00 00 00 00 00 00 00 01 00 00 00 80  9C"
)
# protocol.md §8.2: what the legacy bridge sent to Django for that frame (all four slots).
LEGACY_FULL: dict[str, Any] = {
    "type": "full",
    "timestamp": 1762928776,
    "device": {
        "serial_number": IMEI,
        "imei": IMEI,
        "signal_strength": "31",
        "wifi_ssid": "",
        "last_heartbeat": "2025-11-12T06:26:16.509Z",
        "status": "ONLINE",
        "hardware_info": {"firmware_version": "2.1.5", "protocol_version": "0xA8"},
    },
    "station": {
        "serial_number": IMEI,
        "total_slots": 4,
        "pinboards": [{"index": 1, "io": 0, "temperature": 0, "soft_version": 4, "hard_version": 15}],
    },
    "slots": [
        {
            "slot_number": number,
            "status": "AVAILABLE",
            "battery_level": 0,
            "slot_metadata": {
                "micro_switch": "1",
                "solenoid_valve": "0",
                "lock_count": 0,
                "last_updated": "2025-11-12T06:26:16.509Z",
            },
        }
        for number in (1, 2)
    ]
    + [
        {
            "slot_number": 3,
            "status": "OCCUPIED",
            "battery_level": 100,
            "power_bank_serial": "40818052",
            "slot_metadata": {
                "micro_switch": "0",
                "solenoid_valve": "0",
                "lock_count": 0,
                "last_updated": "2025-11-12T06:26:16.509Z",
            },
        },
        {
            "slot_number": 4,
            "status": "AVAILABLE",
            "battery_level": 0,
            "slot_metadata": {
                "micro_switch": "1",
                "solenoid_valve": "0",
                "lock_count": 0,
                "last_updated": "2025-11-12T06:26:16.509Z",
            },
        },
    ],
    "power_banks": [
        {
            "serial_number": "40818052",
            "status": "AVAILABLE",
            "battery_level": 100,
            "current_slot": 3,
            "hardware_info": {
                "temperature": 24,
                "voltage": 50,
                "current": 2,
                "soft_version": 25,
                "hard_version": 0,
                "micro_switch": "0",
                "solenoid_valve": "0",
                "area_code": 73,
            },
        }
    ],
}


def _real_snapshot() -> CabinetSnapshot:
    frame = decode_hex(REAL_UPLOAD_FRAME, strict=True)
    assert isinstance(frame, CabinetSnapshot)
    return frame


def _hole(number: int, state: int, sn: int, *, soc: int = 80, temp: int = 25, sensor: int = 0) -> HoleRecord:
    return HoleRecord(
        hole=number,
        state=state,
        bank_current_raw=0,
        bank_voltage_raw=0xE0 if sn else 0,
        area=73 if sn else 0,
        sn_int=sn,
        soc_byte=soc,
        temp_byte=temp,
        charge_voltage_byte=50,
        charge_current_byte=2,
        soft_version=25 if sn else 0,
        sensor=sensor,
    )


def _snapshot(*holes: HoleRecord) -> CabinetSnapshot:
    board = BoardRecord(
        address=0x01, reserved1=len(holes), reserved2=0, temp=0, soft_version=4, hard_version=15
    )
    snapshot = CabinetSnapshot(boards=(board,), holes=holes, holes_per_board=(len(holes),))
    # Through the real encoder and decoder, so the test also proves such a frame is representable.
    decoded = decode_frame(encode_frame(snapshot), layout=(len(holes),))
    assert isinstance(decoded, CabinetSnapshot)
    return decoded


# --------------------------------------------------------------------------- 0x10 → full


def test_real_upload_frame_gives_the_legacy_json_field_by_field() -> None:
    event = snapshot_to_full_event(_real_snapshot(), imei=IMEI, signal="CSQ:31", received_at=RECEIVED_AT)
    wire = event.to_wire()

    assert wire["type"] == LEGACY_FULL["type"]
    assert wire["timestamp"] == LEGACY_FULL["timestamp"]
    # No invented firmware version: the device did not send one.
    legacy_device = json.loads(json.dumps(LEGACY_FULL["device"]))
    del legacy_device["hardware_info"]["firmware_version"]
    assert wire["device"] == legacy_device
    assert wire["station"] == LEGACY_FULL["station"]
    assert len(wire["slots"]) == 4
    for produced, legacy in zip(wire["slots"], LEGACY_FULL["slots"], strict=True):
        assert produced == legacy, f"slot {legacy['slot_number']}"
    assert wire["power_banks"] == LEGACY_FULL["power_banks"]
    # Only the extensions are added.
    assert set(wire) - set(LEGACY_FULL) == {"observed_at"}
    assert wire["observed_at"] == "2025-11-12T06:26:16.509Z"


def test_real_upload_frame_is_byte_identical_to_legacy_when_firmware_is_known() -> None:
    event = snapshot_to_full_event(
        _real_snapshot(), imei=IMEI, signal="CSQ:31", received_at=RECEIVED_AT, firmware_version="2.1.5"
    )
    legacy_bytes = json.dumps(LEGACY_FULL, separators=(",", ":")).encode()
    assert event.model_copy(update={"observed_at": None}).to_wire_json() == legacy_bytes


def test_full_event_survives_the_wire() -> None:
    event = snapshot_to_full_event(
        _real_snapshot(), imei=IMEI, signal="CSQ:31", received_at=RECEIVED_AT, event_id="evt-1"
    )
    assert parse_station_event(event.to_wire_json()) == event
    assert event.event_id == "evt-1"


def test_received_at_in_another_zone_or_naive_is_utc() -> None:
    nepal = timezone(timedelta(hours=5, minutes=45))
    for received in (RECEIVED_AT.astimezone(nepal), RECEIVED_AT.replace(tzinfo=None)):
        event = snapshot_to_full_event(_real_snapshot(), imei=IMEI, received_at=received)
        assert event.timestamp == 1762928776
        assert event.to_wire()["device"]["last_heartbeat"] == "2025-11-12T06:26:16.509Z"


def test_vendor_8_port_frame_lists_every_slot_and_bank() -> None:
    frame = decode_hex(
        "A8 00 89 10  01 FF FF 00 04 16"
        "  01 01 00 EC 00 05 11 49 F1 64 1F 32 01 0D 00  02 00 00 00 00 00 00 00 00 00 00 00 00 00 80"
        "  03 01 00 E8 00 05 11 46 AC 64 20 32 00 0D 00  04 00 00 00 00 00 00 00 00 00 00 00 00 00 80"
        "  02 FF FF 00 04 16"
        "  05 01 00 D7 00 04 C6 F0 96 64 1F 32 00 1A 00  06 00 00 00 00 00 00 00 00 00 00 00 00 00 80"
        "  07 01 00 E9 00 05 11 49 DB 64 1E 32 00 0D 00  08 00 00 00 00 00 00 00 00 00 00 00 00 00 80  D8"
    )
    assert isinstance(frame, CabinetSnapshot)
    event = snapshot_to_full_event(frame, imei="860602069165357", signal=None, received_at=RECEIVED_AT)
    assert event.station.total_slots == 8
    assert [board.index for board in event.station.pinboards] == [1, 2]
    assert [slot.slot_number for slot in event.slots] == list(range(1, 9))
    assert [bank.serial_number for bank in event.power_banks] == [
        "85019121",
        "85018284",
        "80146582",
        "85019099",
    ]
    assert [bank.current_slot for bank in event.power_banks] == [1, 3, 5, 7]
    assert event.power_banks[0].hardware_info.temperature == 31
    assert event.device.signal_strength is None  # no signal parameter: nothing to overwrite the heartbeat's


# --------------------------------------------------------------------------- hole-state mapping

# (state, slot status, bank status when a bank is in the hole, error_code)
EXPECTED_HOLE_MAPPING = [
    (0x01, SlotStatus.OCCUPIED, PowerBankStatus.AVAILABLE, None),
    (0x02, SlotStatus.ERROR, PowerBankStatus.MAINTENANCE, "0x02"),
    (0x03, SlotStatus.ERROR, PowerBankStatus.MAINTENANCE, "0x03"),
    (0x04, SlotStatus.ERROR, PowerBankStatus.MAINTENANCE, "0x04"),
    (0x05, SlotStatus.ERROR, PowerBankStatus.DAMAGED, "0x05"),
    (0x06, SlotStatus.ERROR, PowerBankStatus.DAMAGED, "0x06"),
    (0x07, SlotStatus.ERROR, PowerBankStatus.MAINTENANCE, "0x07"),
    (0x08, SlotStatus.ERROR, PowerBankStatus.MAINTENANCE, "0x08"),
    (0x09, SlotStatus.ERROR, PowerBankStatus.MAINTENANCE, "0x09"),
    (0x0A, SlotStatus.ERROR, PowerBankStatus.MAINTENANCE, "0x0a"),
    (0x11, SlotStatus.ERROR, PowerBankStatus.MAINTENANCE, "0x11"),  # undocumented: a fault, not AVAILABLE
    (0xFF, SlotStatus.ERROR, PowerBankStatus.MAINTENANCE, "0xff"),
]


@pytest.mark.parametrize(("state", "slot_status", "bank_status", "error_code"), EXPECTED_HOLE_MAPPING)
def test_hole_state_with_a_bank_maps_explicitly(
    state: int, slot_status: SlotStatus, bank_status: PowerBankStatus, error_code: str | None
) -> None:
    event = snapshot_to_full_event(
        _snapshot(_hole(1, state, 40818052), _hole(2, 0x00, 0, sensor=0x80)),
        imei=IMEI,
        received_at=RECEIVED_AT,
    )
    faulty, empty = event.slots
    assert (faulty.status, faulty.power_bank_serial) == (slot_status, "40818052")
    assert faulty.slot_metadata.error_code == error_code
    assert (faulty.slot_metadata.error_message is None) == (error_code is None)
    assert [(bank.serial_number, bank.status) for bank in event.power_banks] == [("40818052", bank_status)]
    assert (empty.status, empty.slot_metadata.error_code, empty.power_bank_serial) == (
        SlotStatus.AVAILABLE,
        None,
        None,
    )


def test_every_documented_hole_state_is_in_the_table_and_faults_are_never_rentable() -> None:
    assert set(HOLE_STATE_STATUSES) == set(range(0x00, 0x0B))
    for state in range(0x02, 0x100):
        mapped = map_hole_state(state, has_bank=True)
        assert mapped.slot_status is SlotStatus.ERROR
        assert mapped.power_bank_status in {PowerBankStatus.MAINTENANCE, PowerBankStatus.DAMAGED}
        assert mapped.error_code == f"0x{state:02x}"
        assert mapped.error_message


def test_fault_without_a_bank_lists_no_bank() -> None:
    event = snapshot_to_full_event(
        _snapshot(_hole(1, 0x04, 0, sensor=0x80)), imei=IMEI, received_at=RECEIVED_AT
    )
    assert event.slots[0].status is SlotStatus.ERROR
    assert event.slots[0].slot_metadata.error_code == "0x04"
    assert event.slots[0].slot_metadata.error_message == "stuck: spring cannot eject"
    assert event.power_banks == []


def test_bank_in_a_hole_reported_empty_is_held_back() -> None:
    event = snapshot_to_full_event(_snapshot(_hole(1, 0x00, 40818052)), imei=IMEI, received_at=RECEIVED_AT)
    assert event.slots[0].status is SlotStatus.ERROR
    assert event.slots[0].slot_metadata.error_code == "0x00"
    assert event.power_banks[0].status is PowerBankStatus.MAINTENANCE


def test_unavailable_measurements_are_not_invented() -> None:
    event = snapshot_to_full_event(
        _snapshot(_hole(1, 0x01, 40818052, soc=0xFF, temp=0xFF)), imei=IMEI, received_at=RECEIVED_AT
    )
    # Unknown (0xFF) is not zero: omitted, so core keeps the level it knows.
    assert event.slots[0].battery_level is None
    assert event.power_banks[0].battery_level is None
    assert "battery_level" not in event.to_wire()["slots"][0]
    bank_info = event.to_wire()["power_banks"][0]["hardware_info"]
    assert "temperature" not in bank_info
    assert bank_info["voltage"] == 50


# --------------------------------------------------------------------------- small conversions


@pytest.mark.parametrize(
    ("signal", "expected"),
    [
        ("CSQ:31", "31"),
        ("csq:7", "7"),
        ("RSSI:-70", "-70"),
        ("27", "27"),
        ("", None),
        (None, None),
        ("CSQ:", None),
    ],
)
def test_normalize_signal(signal: str | None, expected: str | None) -> None:
    assert normalize_signal(signal) == expected


@pytest.mark.parametrize(
    ("address", "io"), [(0x01, 0), (0x10, 0), (0x49, 0), (0x50, 1), (0x60, 1), (0x1A, 0), (0xA0, 2)]
)
def test_pinboard_io(address: int, io: int) -> None:
    assert pinboard_io(BoardRecord(address, 0, 0, 0, 0, 0)) == io


# --------------------------------------------------------------------------- 0x40 → returned


def test_vendor_return_frame_gives_returned_event_with_frame_soc() -> None:
    report = decode_hex("A8 00 0F 40 10 01 04 05 8E 17 08 01 CA 5F 18", strict=True)  # §9 #11
    assert isinstance(report, ReturnReport)
    assert is_successful_return(report)
    event = return_to_returned_event(report, imei=IMEI, received_at=RECEIVED_AT, event_id="ret-1")
    wire = event.to_wire()
    assert wire == {
        "type": "returned",
        "timestamp": 1762928776,
        "device": {"serial_number": IMEI, "imei": IMEI, "last_heartbeat": "2025-11-12T06:26:16.509Z"},
        "return_event": {
            "power_bank_serial": "93198088",
            "slot_number": 1,
            "battery_level": 95,
            "returned_at": "2025-11-12T06:26:16.509Z",
            "condition": "NORMAL",
            "hardware_info": {"soft_version": 0xCA, "area_code": 4, "control_index": 0x10, "return_state": 1},
            # A 0x40 frame arrives over MQTT: a corroborated return (an HTTP-only report is a claim).
            "source": "mqtt",
        },
        "event_id": "ret-1",
        "observed_at": "2025-11-12T06:26:16.509Z",
    }
    assert parse_station_event(event.to_wire_json()) == event


def test_legacy_14_byte_return_has_no_battery_level() -> None:
    report = ReturnReport(
        board=0x10, hole=2, area=4, sn_int=93198088, state=1, soft_version=0xCA, soc_byte=None
    )
    event = return_to_returned_event(report, imei=IMEI, received_at=RECEIVED_AT)
    assert event.return_event.battery_level is None
    assert "battery_level" not in event.to_wire()["return_event"]


@pytest.mark.parametrize(("state", "sn"), [(0x00, 93198088), (0x10, 93198088), (0x24, 93198088), (0x01, 0)])
def test_failed_insertions_are_not_returns(state: int, sn: int) -> None:
    report = ReturnReport(board=0x10, hole=1, area=4, sn_int=sn, state=state, soft_version=0xCA, soc_byte=95)
    assert not is_successful_return(report)


def test_return_without_a_serial_cannot_be_an_event() -> None:
    report = ReturnReport(board=0x10, hole=1, area=4, sn_int=0, state=1, soft_version=0, soc_byte=0)
    with pytest.raises(ValueError, match="serial"):
        return_to_returned_event(report, imei=IMEI, received_at=RECEIVED_AT)


# --------------------------------------------------------------------------- 0x28 → slot_event


def _slot_report(state: int, sn: int) -> SlotStateReport:
    # Built directly (not decoded): the mapping is under test here, the 0x28 decoder has its own tests.
    return SlotStateReport(
        board=0x10,
        hole=5,
        state=state,
        reserved1=0,
        reserved2=0,
        area=73,
        sn_int=sn,
        soc_byte=88,
        temp_byte=0xFF,
        charge_voltage_byte=50,
        charge_current_byte=3,
        soft_version=25,
        hard_version=1,
    )


def test_slot_report_success_is_an_occupied_slot() -> None:
    event = slot_report_to_slot_event(_slot_report(0x01, 40818052), imei=IMEI, received_at=RECEIVED_AT)
    assert (event.slot_number, event.control_index, event.state_code, event.state_name) == (
        5,
        0x10,
        1,
        "SUCCESS",
    )
    assert (event.slot_status, event.power_bank_status) == (SlotStatus.OCCUPIED, PowerBankStatus.AVAILABLE)
    assert (event.power_bank_serial, event.battery_level, event.temperature) == ("40818052", 88, None)
    assert (event.voltage, event.current, event.area_code) == (50, 3, 73)
    assert event.state_description == "return successful"
    assert parse_station_event(event.to_wire_json()) == event


@pytest.mark.parametrize("state", [0x00, 0x10, 0x11, 0x14, 0x24, 0x99])
def test_slot_report_failure_is_an_error_slot(state: int) -> None:
    event = slot_report_to_slot_event(_slot_report(state, 40818052), imei=IMEI, received_at=RECEIVED_AT)
    assert (event.slot_status, event.power_bank_status) == (SlotStatus.ERROR, PowerBankStatus.MAINTENANCE)
    assert event.state_code == state
    assert map_slot_report_state(state, has_bank=False) == (SlotStatus.ERROR, None)
    if state == 0x99:
        assert event.state_name == "UNKNOWN_0x99"


# --------------------------------------------------------------------------- 0x7A → status


def test_heartbeat_gives_online_status_with_signal_and_backup_power() -> None:
    heartbeat = decode_hex("A8 00 11 7A 10 43 53 51 3A 32 37 3B 42 50 3A 30 FC", strict=True)  # §9 #12
    assert isinstance(heartbeat, Heartbeat)
    event = heartbeat_to_status_event(heartbeat, imei=IMEI, received_at=RECEIVED_AT)
    assert event.device.status is StationStatus.ONLINE
    assert event.to_wire()["device"]["hardware_info"] == {"signal_strength": 27, "backup_power": 0}
    assert parse_station_event(event.to_wire_json()) == event
