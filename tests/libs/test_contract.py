"""Contract models (contract.md §2–§3): legacy payloads parse and re-serialise unchanged, errors classify."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from chargeghar_protocol.contract import (
    ERROR_HTTP_STATUS,
    BatchItemResult,
    BatchResponseData,
    CommandRequest,
    CommandResult,
    CommandResultEvent,
    DeviceEnvelope,
    ErrorCode,
    ErrorEnvelope,
    FullEvent,
    FullSyncResult,
    PowerBankStatus,
    ReturnedEvent,
    SlotEvent,
    SlotStatus,
    StationStatus,
    StatusEvent,
    SuccessEnvelope,
    error_code_for_validation_error,
    format_iso_instant,
    parse_batch_request,
    parse_station_event,
    validation_error_details,
)
from chargeghar_protocol.signing import InvalidSignature, InvalidTimestamp, MissingSignatureHeaders
from pydantic import ValidationError

# protocol.md §8.2: the exact body the legacy bridge sent for the §4.2 frame (all four slots).
LEGACY_FULL = (
    '{"type":"full","timestamp":1762928776,"device":{"serial_number":"864601069946994","imei":"864601069946994",'
    '"signal_strength":"31","wifi_ssid":"","last_heartbeat":"2025-11-12T06:26:16.509Z","status":"ONLINE",'
    '"hardware_info":{"firmware_version":"2.1.5","protocol_version":"0xA8"}},"station":{"serial_number":'
    '"864601069946994","total_slots":4,"pinboards":[{"index":1,"io":0,"temperature":0,"soft_version":4,'
    '"hard_version":15}]},"slots":[{"slot_number":1,"status":"AVAILABLE","battery_level":0,"slot_metadata":'
    '{"micro_switch":"1","solenoid_valve":"0","lock_count":0,"last_updated":"2025-11-12T06:26:16.509Z"}},'
    '{"slot_number":2,"status":"AVAILABLE","battery_level":0,"slot_metadata":{"micro_switch":"1",'
    '"solenoid_valve":"0","lock_count":0,"last_updated":"2025-11-12T06:26:16.509Z"}},{"slot_number":3,'
    '"status":"OCCUPIED","battery_level":100,"power_bank_serial":"40818052","slot_metadata":{"micro_switch":'
    '"0","solenoid_valve":"0","lock_count":0,"last_updated":"2025-11-12T06:26:16.509Z"}},{"slot_number":4,'
    '"status":"AVAILABLE","battery_level":0,"slot_metadata":{"micro_switch":"1","solenoid_valve":"0",'
    '"lock_count":0,"last_updated":"2025-11-12T06:26:16.509Z"}}],"power_banks":[{"serial_number":"40818052",'
    '"status":"AVAILABLE","battery_level":100,"current_slot":3,"hardware_info":{"temperature":24,"voltage":50,'
    '"current":2,"soft_version":25,"hard_version":0,"micro_switch":"0","solenoid_valve":"0","area_code":73}}]}'
)

# contract.md §2.2 and §2.3 examples.
LEGACY_RETURNED = (
    '{"type":"returned","timestamp":1762928800,"device":{"serial_number":"864601069946994",'
    '"last_heartbeat":"2025-11-12T06:26:40Z"},"return_event":{"power_bank_serial":"40818052","slot_number":3,'
    '"battery_level":95,"returned_at":"2025-11-12T06:26:40Z","condition":"NORMAL",'
    '"hardware_info":{"temperature":28,"voltage":4800,"current":0}}}'
)
LEGACY_STATUS = (
    '{"type":"status","timestamp":1762928800,"device":{"serial_number":"864601069946994","status":"ONLINE",'
    '"hardware_info":{"signal_strength":27,"backup_power":0}}}'
)


def _errors_of(raw: bytes | str | dict[str, Any]) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        parse_station_event(raw)
    return caught.value


# --------------------------------------------------------------------------- legacy round trips


def test_legacy_full_example_parses_and_reserialises_byte_for_byte() -> None:
    event = parse_station_event(LEGACY_FULL)
    assert isinstance(event, FullEvent)
    assert event.to_wire_json() == LEGACY_FULL.encode()
    assert event.to_wire() == json.loads(LEGACY_FULL)


def test_legacy_full_example_values() -> None:
    event = parse_station_event(LEGACY_FULL.encode())
    assert isinstance(event, FullEvent)
    assert event.device.identity == "864601069946994"
    assert event.device.signal_strength == "31"  # stays text, as the legacy sends it
    assert event.device.status is StationStatus.ONLINE
    assert event.device.last_heartbeat == datetime(2025, 11, 12, 6, 26, 16, 509000, tzinfo=UTC)
    assert [slot.status for slot in event.slots] == [
        SlotStatus.AVAILABLE,
        SlotStatus.AVAILABLE,
        SlotStatus.OCCUPIED,
        SlotStatus.AVAILABLE,
    ]
    assert event.slots[0].slot_metadata.micro_switch == "1"
    assert event.slots[2].power_bank_serial == "40818052"
    bank = event.power_banks[0]
    assert (bank.status, bank.current_slot, bank.hardware_info.area_code) == (
        PowerBankStatus.AVAILABLE,
        3,
        73,
    )
    assert event.event_id is None and event.observed_at is None  # legacy callers omit the extensions


def test_legacy_returned_example_round_trips() -> None:
    event = parse_station_event(LEGACY_RETURNED)
    assert isinstance(event, ReturnedEvent)
    assert event.device.identity == "864601069946994"  # no imei key: falls back to serial_number
    assert event.return_event.battery_level == 95
    assert event.return_event.hardware_info == {"temperature": 28, "voltage": 4800, "current": 0}
    assert event.to_wire_json() == LEGACY_RETURNED.encode()


def test_legacy_status_example_round_trips() -> None:
    event = parse_station_event(LEGACY_STATUS)
    assert isinstance(event, StatusEvent)
    assert event.device.status is StationStatus.ONLINE
    assert event.device.hardware_info is not None
    assert (event.device.hardware_info.signal_strength, event.device.hardware_info.backup_power) == (27, 0)
    assert event.to_wire_json() == LEGACY_STATUS.encode()


def test_status_event_requires_a_status() -> None:
    error = _errors_of({"type": "status", "timestamp": 1, "device": {"serial_number": "1"}})
    assert error_code_for_validation_error(error) is ErrorCode.VALIDATION_ERROR
    assert "device.status" in validation_error_details(error)


# --------------------------------------------------------------------------- tolerance


def test_unknown_fields_are_ignored_but_hardware_info_extras_are_kept() -> None:
    raw = json.loads(LEGACY_FULL)
    raw["rental_info"] = {"anything": 1}
    raw["slots"][0]["mystery"] = True
    raw["device"]["hardware_info"]["board_revision"] = "B2"
    raw["power_banks"][0]["hardware_info"]["cycle_count"] = 17
    event = parse_station_event(raw)
    wire = event.to_wire()
    assert "rental_info" not in wire
    assert "mystery" not in wire["slots"][0]
    assert wire["device"]["hardware_info"]["board_revision"] == "B2"
    assert wire["power_banks"][0]["hardware_info"]["cycle_count"] == 17


def test_numbers_sent_where_text_is_expected_become_text() -> None:
    raw = json.loads(LEGACY_FULL)
    raw["device"]["signal_strength"] = 31
    raw["device"]["imei"] = 864601069946994
    raw["slots"][0]["slot_metadata"]["micro_switch"] = 1
    event = parse_station_event(raw)
    assert isinstance(event, FullEvent)
    assert event.device.signal_strength == "31"
    assert event.device.imei == "864601069946994"
    assert event.slots[0].slot_metadata.micro_switch == "1"


def test_battery_level_unknown_byte_reads_as_unknown() -> None:
    raw = json.loads(LEGACY_FULL)
    raw["slots"][2]["battery_level"] = 255
    raw["power_banks"][0]["battery_level"] = 255
    event = parse_station_event(raw)
    assert isinstance(event, FullEvent)
    # Unknown is not zero: None, so core keeps the level it knows.
    assert event.slots[2].battery_level is None
    assert event.power_banks[0].battery_level is None


def test_naive_and_offset_datetimes_become_utc() -> None:
    raw = json.loads(LEGACY_FULL)
    raw["device"]["last_heartbeat"] = "2025-11-12T06:26:16"
    raw["slots"][0]["slot_metadata"]["last_updated"] = "2025-11-12T12:11:16.5+05:45"  # Nepal time
    event = parse_station_event(raw)
    assert isinstance(event, FullEvent)
    assert event.device.last_heartbeat == datetime(2025, 11, 12, 6, 26, 16, tzinfo=UTC)
    assert event.to_wire()["device"]["last_heartbeat"] == "2025-11-12T06:26:16Z"
    assert event.to_wire()["slots"][0]["slot_metadata"]["last_updated"] == "2025-11-12T06:26:16.500Z"


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2025, 11, 12, 6, 26, 16, tzinfo=UTC), "2025-11-12T06:26:16Z"),
        (datetime(2025, 11, 12, 6, 26, 16, 509000, tzinfo=UTC), "2025-11-12T06:26:16.509Z"),
        (datetime(2025, 11, 12, 6, 26, 16, 509123, tzinfo=UTC), "2025-11-12T06:26:16.509123Z"),
        (
            datetime(2025, 11, 12, 0, 0, 0, tzinfo=timezone(timedelta(hours=5, minutes=45))),
            "2025-11-11T18:15:00Z",
        ),
        (datetime(2025, 11, 12, 6, 26, 16), "2025-11-12T06:26:16Z"),
    ],
)
def test_format_iso_instant(moment: datetime, text: str) -> None:
    assert format_iso_instant(moment) == text


def test_extension_fields_parse_and_round_trip() -> None:
    raw = json.loads(LEGACY_RETURNED)
    raw["event_id"] = "4a4b0c0e-3f0a-4f57-9d3c-0d7f6d0c2f11"
    raw["observed_at"] = "2025-11-12T06:26:40.123Z"
    raw["device"]["imei"] = "864601069946994"
    event = parse_station_event(json.dumps(raw))
    assert event.event_id == "4a4b0c0e-3f0a-4f57-9d3c-0d7f6d0c2f11"
    assert event.observed_at == datetime(2025, 11, 12, 6, 26, 40, 123000, tzinfo=UTC)
    assert event.to_wire() == raw


def test_device_identity_prefers_imei_and_needs_one_of_them() -> None:
    event = parse_station_event(
        {
            "type": "status",
            "timestamp": 1,
            "device": {"serial_number": "QR-001", "imei": "8646", "status": "OFFLINE"},
        }
    )
    assert event.device.identity == "8646"
    error = _errors_of({"type": "status", "timestamp": 1, "device": {"status": "OFFLINE"}})
    assert validation_error_details(error) == {
        "device": ["Value error, device.imei or device.serial_number is required"]
    }


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("slots", 0, "status"), "available"),  # vocabularies are exact, upper case
        (("slots", 0, "status"), "RENTED"),  # a bank status is not a slot status
        (("power_banks", 0, "status"), "OCCUPIED"),
        (("device", "status"), "NO_DEVICE"),
    ],
)
def test_status_vocabularies_are_enforced(path: tuple[str | int, ...], value: str) -> None:
    raw = json.loads(LEGACY_FULL)
    target: Any = raw
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    error = _errors_of(raw)
    assert error_code_for_validation_error(error) is ErrorCode.VALIDATION_ERROR
    assert list(validation_error_details(error)) == [".".join(str(part) for part in path)]


# --------------------------------------------------------------------------- error classification


def test_invalid_json_is_classified() -> None:
    for raw in ('{"type":"full",', b"\xff\xfe", "not json"):
        assert error_code_for_validation_error(_errors_of(raw)) is ErrorCode.INVALID_JSON


@pytest.mark.parametrize("raw", ['{"type":"bogus","timestamp":1}', '{"timestamp":1}', {"type": None}])
def test_unknown_or_missing_type_is_invalid_type(raw: str | dict[str, Any]) -> None:
    assert error_code_for_validation_error(_errors_of(raw)) is ErrorCode.INVALID_TYPE


def test_schema_errors_report_field_paths_without_the_type_tag() -> None:
    raw = json.loads(LEGACY_FULL)
    del raw["slots"][0]["slot_number"]
    raw["power_banks"][0]["current_slot"] = "three"
    error = _errors_of(raw)
    assert error_code_for_validation_error(error) is ErrorCode.VALIDATION_ERROR
    details = validation_error_details(error)
    assert details["slots.0.slot_number"] == ["Field required"]
    assert list(details) == ["slots.0.slot_number", "power_banks.0.current_slot"]


def test_non_object_body_is_a_validation_error_at_the_root() -> None:
    error = _errors_of("[1, 2]")
    assert error_code_for_validation_error(error) is ErrorCode.VALIDATION_ERROR
    assert list(validation_error_details(error)) == ["__root__"]


def test_batch_parses_mixed_events_and_reports_item_paths() -> None:
    batch = parse_batch_request(
        json.dumps(
            {"events": [json.loads(LEGACY_STATUS), json.loads(LEGACY_RETURNED), json.loads(LEGACY_FULL)]}
        )
    )
    assert [type(event) for event in batch.events] == [StatusEvent, ReturnedEvent, FullEvent]

    bad = {
        "events": [json.loads(LEGACY_STATUS), {**json.loads(LEGACY_STATUS), "device": {"serial_number": "x"}}]
    }
    with pytest.raises(ValidationError) as caught:
        parse_batch_request(bad)
    assert list(validation_error_details(caught.value)) == ["events.1.device.status"]
    with pytest.raises(ValidationError):
        parse_batch_request({"events": []})


def test_extension_event_types_parse() -> None:
    command_result = parse_station_event(
        {
            "type": "command_result",
            "timestamp": 1762928800,
            "device": {"imei": "864601069946994"},
            "command_id": "c-1",
            "cmd": "popup_sn",
            "outcome": "ok",
            "reply_cmd": "0x31",
            "reply": {"hole": 1, "sn": "40818048", "state": 1},
            "elapsed_ms": 16250,
        }
    )
    assert isinstance(command_result, CommandResultEvent)
    assert command_result.outcome == "ok"
    slot_event = parse_station_event(
        {
            "type": "slot_event",
            "timestamp": 1762928800,
            "device": {"imei": "864601069946994"},
            "slot_number": 2,
            "state_code": 1,
            "state_name": "SUCCESS",
            "slot_status": "OCCUPIED",
            "power_bank_serial": "40818052",
            "power_bank_status": "AVAILABLE",
            "battery_level": 80,
        }
    )
    assert isinstance(slot_event, SlotEvent)
    assert slot_event.slot_status is SlotStatus.OCCUPIED
    bad_outcome = _errors_of({**command_result.to_wire(), "outcome": "maybe"})
    assert list(validation_error_details(bad_outcome)) == ["outcome"]


# --------------------------------------------------------------------------- commands


def test_command_request_defaults_and_device_payloads() -> None:
    check = CommandRequest(cmd="check")
    assert check.timeout_s == 15.0
    assert len(check.command_id) == 36  # a generated UUID
    assert check.device_payload() == {"cmd": "check"}
    popup_sn = CommandRequest.model_validate({"cmd": "popup_sn", "data": "40818052", "command_id": "abc"})
    assert popup_sn.device_payload() == {"cmd": "popup_sn", "data": "40818052"}
    popup = CommandRequest(cmd="popup", data="16")
    assert popup.device_payload() == {"cmd": "popup", "data": "16", "io": "0"}


@pytest.mark.parametrize(
    "body",
    [
        {"cmd": "popup_sn", "data": ""},
        {"cmd": "popup_sn", "data": "0"},
        {"cmd": "popup_sn", "data": "4294967296"},
        {"cmd": "popup_sn", "data": "12a"},
        {"cmd": "popup", "data": "0"},
        {"cmd": "popup", "data": "1", "io": "2"},
        {"cmd": "setWifi", "data": ""},
        {"cmd": "setMode", "data": "lte"},
        {"cmd": "volume", "data": "101"},
        {"cmd": "format_disk"},
        {"cmd": "check", "timeout_s": 0},
        {"cmd": "check", "timeout_s": 121},
    ],
)
def test_command_request_rejects_bad_arguments(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CommandRequest.model_validate(body)


def test_set_wifi_password_is_masked_for_audit_but_sent_to_device() -> None:
    request = CommandRequest(cmd="setWifi", username="cafe", password="hunter2")
    assert request.device_payload() == {"cmd": "setWifi", "username": "cafe", "password": "hunter2"}
    audit = request.audit_payload()
    assert audit["password"] == "***"
    assert "hunter2" not in json.dumps(audit)
    assert "hunter2" not in repr(request)


def test_command_result_answer_envelope() -> None:
    result = CommandResult(command_id="c-1", outcome="timeout", reply=None, elapsed_ms=15000)
    envelope = SuccessEnvelope[CommandResult](message="Command finished", data=result)
    assert envelope.model_dump(mode="json") == {
        "success": True,
        "message": "Command finished",
        "data": {"command_id": "c-1", "outcome": "timeout", "reply": None, "elapsed_ms": 15000},
    }
    with pytest.raises(ValidationError):
        CommandResult.model_validate({"command_id": "c", "outcome": "cancelled", "elapsed_ms": 1})


# --------------------------------------------------------------------------- envelopes and codes


def test_success_envelope_with_full_sync_result() -> None:
    data = FullSyncResult(
        station_id="7d0b6f1e-0000-4000-8000-000000000001",
        station_serial="864601069946994",
        slots_updated=4,
        powerbanks_updated=1,
        timestamp=datetime(2025, 11, 12, 6, 26, 16, 564090, tzinfo=UTC),
    )
    body = SuccessEnvelope[FullSyncResult](message="IoT data processed successfully", data=data)
    wire = json.loads(body.model_dump_json(exclude_none=True))
    assert wire == {
        "success": True,
        "message": "IoT data processed successfully",
        "data": {
            "station_id": "7d0b6f1e-0000-4000-8000-000000000001",
            "station_serial": "864601069946994",
            "slots_updated": 4,
            "powerbanks_updated": 1,
            "returns_reconciled": 0,
            "applied": True,
            "timestamp": "2025-11-12T06:26:16.564090Z",
        },
    }


def test_error_envelope_omits_absent_details() -> None:
    assert ErrorEnvelope(message="Invalid signature", error=ErrorCode.INVALID_SIGNATURE).to_wire() == {
        "success": False,
        "message": "Invalid signature",
        "error": "INVALID_SIGNATURE",
    }
    with_details = ErrorEnvelope(message="bad", error="VALIDATION_ERROR", details={"slots.0": ["x"]})
    assert with_details.to_wire()["details"] == {"slots.0": ["x"]}


def test_device_envelope_matches_vendor_http_result() -> None:
    assert DeviceEnvelope.ok(time_ms=1705661910697).to_wire_json() == (
        b'{"code":200,"type":0,"data":null,"msg":"ok","time":1705661910697}'
    )
    connect = DeviceEnvelope.ok("864601068367135,powerbank,host,1883,u,p,1705661910800", time_ms=1)
    assert list(json.loads(connect.to_wire_json())) == ["code", "type", "data", "msg", "time"]
    failure = DeviceEnvelope.failure("ERROR SIGN", time_ms=5)
    assert (failure.code, failure.msg, failure.data) == (500, "ERROR SIGN", None)
    assert abs(DeviceEnvelope().time - datetime.now(UTC).timestamp() * 1000) < 60_000


def test_batch_item_results_serialise_in_order() -> None:
    data = BatchResponseData(
        results=[
            BatchItemResult(index=0, event_id="a", success=True, status_code=200, data={"applied": True}),
            BatchItemResult(
                index=1, event_id="b", success=False, status_code=400, error=ErrorCode.VALIDATION_ERROR
            ),
        ]
    )
    wire = data.to_wire()
    assert [item["index"] for item in wire["results"]] == [0, 1]
    assert wire["results"][1]["error"] == "VALIDATION_ERROR"


def test_every_error_code_has_an_http_status_and_signing_agrees() -> None:
    assert set(ERROR_HTTP_STATUS) == set(ErrorCode)
    for error_type in (MissingSignatureHeaders, InvalidTimestamp, InvalidSignature):
        code = ErrorCode(error_type.code)
        assert ERROR_HTTP_STATUS[code] == error_type.http_status
