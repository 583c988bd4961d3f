"""Encoder-built frames: every 0x10 layout rule of protocol.md §4.1.3, sentinels, SNs, area codes,
the other frame types, and encoder errors."""

from __future__ import annotations

import struct

import pytest
from chargeghar_protocol.codec import (
    BackupPower,
    BoardLayout,
    BoardRecord,
    CabinetSnapshot,
    FrameError,
    Heartbeat,
    HoleRecord,
    HoleState,
    PopupByHoleRequest,
    PopupBySnRequest,
    ReturnReport,
    SlotStateReport,
    WifiScanList,
    build_frame,
    checksum_ok,
    decode_frame,
    encode_frame,
    frame_to_dict,
    infer_holes_per_board,
    popup_by_hole_request,
    popup_by_sn_request,
)


def occupied_hole(number: int, *, sn: int | None = None, area: int = 0x49, soc: int = 100) -> HoleRecord:
    return HoleRecord(
        hole=number,
        state=1,
        bank_current_raw=0,
        bank_voltage_raw=0xE4,
        area=area,
        sn_int=40818000 + number if sn is None else sn,
        soc_byte=soc,
        temp_byte=24,
        charge_voltage_byte=50,
        charge_current_byte=2,
        soft_version=25,
        sensor=0x00,
    )


def empty_hole(number: int) -> HoleRecord:
    return HoleRecord(number, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0x80)


def board(address: int, reserved1: int = 0x00, reserved2: int = 0x00) -> BoardRecord:
    return BoardRecord(address, reserved1, reserved2, 0, 4, 15)


def snapshot(
    holes_per_board: tuple[int, ...],
    *,
    marker: tuple[int, int] = (0x00, 0x00),
    addresses: tuple[int, ...] | None = None,
    first_hole: int = 1,
) -> CabinetSnapshot:
    """Holes numbered consecutively; odd holes occupied, even ones empty."""
    addresses = addresses or tuple(range(1, len(holes_per_board) + 1))
    boards = tuple(board(address, *marker) for address in addresses)
    numbers = range(first_hole, first_hole + sum(holes_per_board))
    holes = tuple(occupied_hole(n) if n % 2 else empty_hole(n) for n in numbers)
    return CabinetSnapshot(boards, holes, holes_per_board)


def record_bytes(record: BoardRecord | HoleRecord) -> bytes:
    layout = ">6B" if isinstance(record, BoardRecord) else ">5BI6B"
    return struct.pack(layout, *record)


# --- hole-count inference ---------------------------------------------------------------------------

# 3 x 2 is left out: with hole 4 empty its data[66] (hole 4's SOC) is 0, which triggers the "4+2"
# rule — covered by its own tests below.
UNIFORM_LAYOUTS = [(2, 1)] + [
    (holes, boards) for holes in (3, 4, 5, 6, 8) for boards in (1, 2, 3, 4) if (holes, boards) != (3, 2)
]


@pytest.mark.parametrize(("holes", "boards"), UNIFORM_LAYOUTS, ids=[f"{h}x{b}" for h, b in UNIFORM_LAYOUTS])
def test_uniform_layouts_are_inferred_and_round_trip(holes: int, boards: int) -> None:
    original = snapshot((holes,) * boards)
    raw = encode_frame(original)
    assert len(raw) == 5 + boards * (6 + 15 * holes)
    assert checksum_ok(raw)
    assert infer_holes_per_board(raw[4:-1]) == holes
    decoded = decode_frame(raw, strict=True)
    assert decoded == original
    assert isinstance(decoded, CabinetSnapshot)
    assert decoded.slot_count == holes * boards


def test_worked_sizes_of_section_4_1_3() -> None:
    assert infer_holes_per_board(bytes(66)) == 4
    assert infer_holes_per_board(bytes(132)) == 4
    assert infer_holes_per_board(bytes(51)) == 3
    assert infer_holes_per_board(bytes(192)) == 6
    assert infer_holes_per_board(bytes(288)) == 6
    assert infer_holes_per_board(bytes(36)) == 2
    assert infer_holes_per_board(bytes(72)) == 0


def test_try_order_prefers_five_over_other_divisors() -> None:
    # 27 boards of 6 holes = 2592 bytes = 32 boards of 5: Java's order (5, 6, 8, 4, 3) picks 5.
    assert infer_holes_per_board(bytes(2592)) == 5


def test_two_boards_of_two_holes_are_unparseable_without_override() -> None:
    original = snapshot((2, 2))
    raw = encode_frame(original)
    with pytest.raises(FrameError) as caught:
        decode_frame(raw)
    assert caught.value.code == "UNPARSEABLE_LAYOUT"
    assert decode_frame(raw, layout=(2, 2)) == original
    assert decode_frame(raw, layout=BoardLayout.parse("2x2")) == original


def test_ff_marker_two_boards_of_four() -> None:
    original = snapshot((4, 4), marker=(0xFF, 0xFF))
    decoded = decode_frame(encode_frame(original))
    assert decoded == original
    assert isinstance(decoded, CabinetSnapshot)
    assert decoded.has_ff_marker
    assert decoded.area_prefix is None


def test_twelve_slot_four_plus_eight_with_ff_marker() -> None:
    # S == 192, FF marker, data[66] (the second board's address) != 5 -> board 0 has 4, board 1 has 8.
    original = snapshot((4, 8), marker=(0xFF, 0xFF), addresses=(0x01, 0x02))
    raw = encode_frame(original)
    assert len(raw) - 5 == 192
    decoded = decode_frame(raw, strict=True)
    assert decoded == original
    assert isinstance(decoded, CabinetSnapshot)
    assert decoded.holes_per_board == (4, 8)


def test_twelve_slot_eight_plus_four_with_ff_marker() -> None:
    # data[66] is the 5th hole's number (5) -> H = 8, ceil(192 / 126) = 2 boards, the second cut to 4.
    original = snapshot((8, 4), marker=(0xFF, 0xFF))
    raw = encode_frame(original)
    assert raw[4 + 66] == 5
    decoded = decode_frame(raw, strict=True)
    assert decoded == original
    assert isinstance(decoded, CabinetSnapshot)
    assert decoded.holes_per_board == (8, 4)


def test_four_plus_eight_whose_second_board_is_at_address_5_parses_as_eight_plus_four() -> None:
    raw = encode_frame(snapshot((4, 8), marker=(0xFF, 0xFF), addresses=(0x01, 0x05)))
    decoded = decode_frame(raw)
    assert isinstance(decoded, CabinetSnapshot)
    assert decoded.holes_per_board == (8, 4)  # Java's heuristic, reproduced on purpose


def test_four_plus_eight_without_marker_is_read_as_two_boards_of_six() -> None:
    decoded = decode_frame(encode_frame(snapshot((4, 8), addresses=(0x01, 0x02))))
    assert isinstance(decoded, CabinetSnapshot)
    assert decoded.holes_per_board == (6, 6)


@pytest.mark.parametrize("second_address", [0x00, 0x02, 0x03, 0x80, 0xFE])
def test_four_plus_two_rule_keeps_only_the_first_board(second_address: int) -> None:
    original = snapshot((4, 2), addresses=(0x01, second_address))
    raw = encode_frame(original)
    assert len(raw) - 5 == 102
    decoded = decode_frame(raw)
    assert isinstance(decoded, CabinetSnapshot)
    # Floor rounding: one 4-hole board; the 2-hole board (36 bytes) is left over and reported (§10.20).
    assert decoded.holes_per_board == (4,)
    assert decoded.boards == original.boards[:1]
    assert decoded.holes == original.holes[:4]
    assert decoded.unconsumed_bytes == 36
    with pytest.raises(FrameError) as caught:
        decode_frame(raw, strict=True)
    assert caught.value.code == "UNCONSUMED_BYTES"
    assert caught.value.offset == 4 + 66
    assert decode_frame(raw, layout=BoardLayout.parse("4+2"), strict=True) == original


@pytest.mark.parametrize("second_address", [0x04, 0x10, 0x7F])
def test_four_plus_two_rule_does_not_fire_for_second_address_four_or_more(second_address: int) -> None:
    decoded = decode_frame(encode_frame(snapshot((4, 2), addresses=(0x01, second_address))))
    assert isinstance(decoded, CabinetSnapshot)
    assert decoded.holes_per_board == (3, 3)


def test_four_plus_two_rule_is_not_applied_with_ff_marker() -> None:
    raw = encode_frame(snapshot((4, 2), marker=(0xFF, 0xFF), addresses=(0x01, 0x02)))
    decoded = decode_frame(raw)
    assert isinstance(decoded, CabinetSnapshot)
    assert decoded.holes_per_board == (3, 3)  # ceil(102 / 51) = 2 boards of 3


def test_three_by_two_with_low_soc_in_the_fourth_hole_is_misread_as_four_plus_two() -> None:
    # data[66] of a 3+3 frame is the 4th hole's SOC byte; < 4 triggers the 4+2 rule (Java's quirk).
    holes = tuple(occupied_hole(n, soc=2 if n == 4 else 100) for n in range(1, 7))
    original = CabinetSnapshot((board(1), board(2)), holes, (3, 3))
    decoded = decode_frame(encode_frame(original))
    assert isinstance(decoded, CabinetSnapshot)
    assert decoded.holes_per_board == (4,)
    assert decode_frame(encode_frame(original), layout=(3, 3)) == original


def test_three_by_two_with_charged_fourth_hole_is_read_as_three_plus_three() -> None:
    original = CabinetSnapshot((board(1), board(2)), tuple(occupied_hole(n) for n in range(1, 7)), (3, 3))
    assert decode_frame(encode_frame(original), strict=True) == original


def test_override_layout_with_fewer_boards_on_the_wire_stops_at_the_end() -> None:
    original = snapshot((6,))
    decoded = decode_frame(encode_frame(original), layout=(6, 6, 6))
    assert decoded == original


def test_override_layout_shorter_than_the_frame_reports_unconsumed_bytes() -> None:
    raw = encode_frame(snapshot((6, 6)))
    decoded = decode_frame(raw, layout=(6,))
    assert isinstance(decoded, CabinetSnapshot)
    assert decoded.unconsumed_bytes == 96
    assert len(decoded.holes) == 6


def test_truncated_hole_record_raises_truncated_record() -> None:
    payload = record_bytes(board(1)) + record_bytes(occupied_hole(1)) + bytes(7)
    with pytest.raises(FrameError) as caught:
        decode_frame(build_frame(0x10, payload), layout=(2,))
    assert caught.value.code == "TRUNCATED_RECORD"
    assert caught.value.offset == 4 + 6 + 15


def test_truncated_board_record_raises_truncated_record() -> None:
    payload = record_bytes(board(1)) + record_bytes(occupied_hole(1)) + bytes(3)
    with pytest.raises(FrameError) as caught:
        decode_frame(build_frame(0x10, payload), layout=(1, 1))
    assert caught.value.code == "TRUNCATED_RECORD"
    assert caught.value.offset == 4 + 21


def test_hole_records_past_the_end_are_skipped() -> None:
    payload = record_bytes(board(1)) + record_bytes(occupied_hole(1))
    decoded = decode_frame(build_frame(0x10, payload), layout=(4,))
    assert isinstance(decoded, CabinetSnapshot)
    assert decoded.holes_per_board == (1,)
    assert decoded.unconsumed_bytes == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4+8", (4, 8)), ("6x3", (6, 6, 6)), ("4,2", (4, 2)), (" 8 4 ", (8, 4)), ("5", (5,))],
)
def test_board_layout_parse(text: str, expected: tuple[int, ...]) -> None:
    layout = BoardLayout.parse(text)
    assert layout.holes_per_board == expected
    assert BoardLayout.parse(str(layout)) == layout


@pytest.mark.parametrize("text", ["", "four", "4+-2", "4+300", "x3"])
def test_board_layout_parse_rejects_garbage(text: str) -> None:
    with pytest.raises(FrameError) as caught:
        BoardLayout.parse(text)
    assert caught.value.code == "UNPARSEABLE_LAYOUT"


# --- record contents -------------------------------------------------------------------------------


def test_holes_are_sorted_by_number_even_when_sent_out_of_order() -> None:
    # BRZ's 12-port cabinet numbers its boards' holes 31–36 and 1–6.
    holes = tuple(occupied_hole(n) for n in (31, 32, 33, 34, 35, 36, 1, 2, 3, 4, 5, 6))
    raw = encode_frame(CabinetSnapshot((board(0x60), board(0x10)), holes, (6, 6)))
    decoded = decode_frame(raw)
    assert isinstance(decoded, CabinetSnapshot)
    assert [hole.hole for hole in decoded.holes] == [1, 2, 3, 4, 5, 6, 31, 32, 33, 34, 35, 36]
    assert decoded.boards[0].io == 1  # 0x60 -> "60" -> 60 // 50
    assert decoded.find_hole(31) == holes[0]
    assert decoded.find_hole(7) is None


def test_sentinel_bytes_become_none_not_zero() -> None:
    unknown = HoleRecord(1, 1, 0, 0xB6, 4, 93198088, 0xFF, 0xFF, 0xFF, 0xFF, 0xCA, 0x00)
    decoded = decode_frame(encode_frame(CabinetSnapshot((board(1),), (unknown,), (1,))), layout=(1,))
    assert isinstance(decoded, CabinetSnapshot)
    hole = decoded.holes[0]
    assert (hole.soc, hole.temp, hole.charge_voltage_raw, hole.charge_current_raw) == (None, None, None, None)
    assert (hole.charge_voltage, hole.charge_current) == (None, None)
    assert (hole.soc_byte, hole.temp_byte) == (0xFF, 0xFF)
    rendered = frame_to_dict(decoded)["holes"][0]
    assert rendered["soc"] is None
    assert rendered["temp"] is None
    assert rendered["charge_voltage"] is None
    assert rendered["charge_current_raw"] is None


def test_zero_readings_stay_zero() -> None:
    hole = occupied_hole(1)._replace(soc_byte=0, temp_byte=0, charge_voltage_byte=0, charge_current_byte=0)
    assert (hole.soc, hole.temp, hole.charge_voltage, hole.charge_current_raw) == (0, 0, 0.0, 0)


@pytest.mark.parametrize(
    ("sn_int", "text"),
    [
        (0, "0"),
        (3023, "3023"),
        (0x7FFFFFFF, "2147483647"),
        (0x80000000, "2147483648"),
        (0xFFFFFFFF, "4294967295"),
    ],
)
def test_serial_numbers_are_unsigned_decimal(sn_int: int, text: str) -> None:
    original = CabinetSnapshot((board(1),), (occupied_hole(1, sn=sn_int),), (1,))
    decoded = decode_frame(encode_frame(original), layout=(1,))
    assert isinstance(decoded, CabinetSnapshot)
    assert decoded.holes[0].sn == text
    assert decoded.holes[0].has_bank is (sn_int != 0)
    assert decoded.holes[0].bank_sn == (text if sn_int else None)
    assert decode_frame(encode_frame(ReturnReport(1, 1, 4, sn_int, 1, 0xCA, 95))).sn == text  # type: ignore[union-attr]


def test_hex_letter_board_address_decodes_and_has_no_io() -> None:
    original = snapshot((4,), addresses=(0x1A,))
    decoded = decode_frame(encode_frame(original))
    assert decoded == original
    assert isinstance(decoded, CabinetSnapshot)
    assert decoded.boards[0].address == 0x1A
    assert decoded.boards[0].io is None
    assert frame_to_dict(decoded)["boards"][0] == {
        "index": 0x1A,
        "reserved1": 0,
        "reserved2": 0,
        "temp": 0,
        "soft_version": 4,
        "hard_version": 15,
        "io": None,
    }


def test_area_code_extension_applies_to_occupied_holes_only() -> None:
    holes = (occupied_hole(1, area=0x165), empty_hole(2)._replace(area=0x65), occupied_hole(3, area=0x100))
    original = CabinetSnapshot((board(1, 0x00, 0x01),), holes, (3,))
    raw = encode_frame(original)
    assert raw[4 + 6 + 4] == 0x65  # only the low byte is on the wire
    decoded = decode_frame(raw)
    assert decoded == original
    assert isinstance(decoded, CabinetSnapshot)
    assert decoded.area_prefix == 0x01
    assert [hole.area for hole in decoded.holes] == [357, 0x65, 0x100]


@pytest.mark.parametrize("neutral", [0x00, 0x0B, 0xFF])
def test_neutral_reserved_bytes_do_not_extend_the_area(neutral: int) -> None:
    original = CabinetSnapshot((board(1, 0x00, neutral),), (occupied_hole(1, area=0x65),), (1,))
    decoded = decode_frame(encode_frame(original), layout=(1,))
    assert isinstance(decoded, CabinetSnapshot)
    assert decoded.holes[0].area == 0x65
    assert decoded.area_prefix is None


def test_area_extension_reads_only_the_first_board() -> None:
    boards = (board(1, 0x00, 0x00), board(2, 0x00, 0x01))
    holes = tuple(occupied_hole(n, area=0x65) for n in range(1, 9))
    decoded = decode_frame(encode_frame(CabinetSnapshot(boards, holes, (4, 4))))
    assert isinstance(decoded, CabinetSnapshot)
    assert {hole.area for hole in decoded.holes} == {0x65}


def test_sensor_bits_are_exposed_by_name_and_raw() -> None:
    hole = empty_hole(1)._replace(sensor=0xC0)
    assert (hole.micro_switch, hole.solenoid_switch, hole.sensor) == (True, True, 0xC0)
    assert frame_to_dict(CabinetSnapshot((board(1),), (hole,), (1,)))["holes"][0]["solenoid_switch"] is True


@pytest.mark.parametrize("code", [0x03, 0x07, 0x08, 0x09, 0x0A])
def test_hole_states_hidden_by_java_have_their_own_names(code: int) -> None:
    hole = occupied_hole(1)._replace(state=code)
    assert hole.hole_state is not None
    assert hole.hole_state == code
    assert hole.state_description != "normal"


def test_unknown_hole_state_still_describes() -> None:
    hole = occupied_hole(1)._replace(state=0x42)
    assert hole.hole_state is None
    assert hole.state_description == "unknown or reserved code 0x42"
    assert HoleState.lookup(0x04) is HoleState.STUCK


# --- other frame types -----------------------------------------------------------------------------


def test_return_report_legacy_fourteen_byte_variant() -> None:
    legacy = ReturnReport(0x10, 1, 4, 93198088, 1, 0xCA, None)
    raw = encode_frame(legacy)
    assert len(raw) == 14
    decoded = decode_frame(raw, strict=True)
    assert decoded == legacy
    assert isinstance(decoded, ReturnReport)
    assert (decoded.soc, decoded.is_legacy_variant) == (None, True)
    assert frame_to_dict(decoded)["soc"] is None


def test_return_report_soc_sentinel_and_failure_state() -> None:
    report = ReturnReport(0x10, 2, 4, 93198088, 0x24, 0xCA, 0xFF)
    decoded = decode_frame(encode_frame(report))
    assert decoded == report
    assert isinstance(decoded, ReturnReport)
    assert (decoded.soc, decoded.succeeded) == (None, False)
    assert decoded.state_description.startswith("anti-theft switch detection failed")


def test_slot_state_report_round_trip_and_units() -> None:
    report = SlotStateReport(0x10, 3, 1, 0, 0, 4, 0x80000001, 88, 0xFF, 51, 0xFF, 0xCA, 0x16)
    raw = encode_frame(report)
    assert len(raw) == 21
    decoded = decode_frame(raw, strict=True)
    assert decoded == report
    assert isinstance(decoded, SlotStateReport)
    assert (decoded.sn, decoded.soc, decoded.temp) == ("2147483649", 88, None)
    assert decoded.charge_voltage == pytest.approx(5.1)
    assert (decoded.charge_voltage_raw, decoded.charge_current, decoded.charge_current_raw) == (
        51,
        None,
        None,
    )
    rendered = frame_to_dict(decoded)
    assert {key: rendered[key] for key in ("board", "hole", "area", "sn", "state", "soc")} == {
        "board": 0x10,
        "hole": 3,
        "area": 4,
        "sn": "2147483649",
        "state": 1,
        "soc": 88,
    }


@pytest.mark.parametrize(
    ("text", "csq", "bp", "backup"),
    [
        ("CSQ:27;BP:0", 27, 0, BackupPower.UNSUPPORTED),
        ("CSQ:99;BP:3", 99, 3, BackupPower.SUPPORTED_RUNNING),
        ("27", 27, None, None),
        ("csq: 12 ; bp:2", 12, 2, BackupPower.SUPPORTED_STOPPED),
        ("BP:1", None, 1, BackupPower.INVALID),
        ("CSQ:x;BP:", None, None, None),
        ("", None, None, None),
    ],
)
def test_heartbeat_text_parsing(
    text: str, csq: int | None, bp: int | None, backup: BackupPower | None
) -> None:
    beat = Heartbeat(0x10, text)
    decoded = decode_frame(encode_frame(beat), strict=True)
    assert decoded == beat
    assert isinstance(decoded, Heartbeat)
    assert (decoded.csq, decoded.bp, decoded.backup_power) == (csq, bp, backup)


def test_wifi_scan_list_follows_java_parsing() -> None:
    scan = WifiScanList(b'["home","cafe wifi",bad,"x"]')
    decoded = decode_frame(encode_frame(scan))
    assert decoded == scan
    assert isinstance(decoded, WifiScanList)
    assert decoded.ssids == ("home", "cafe wifi", "x")


def test_wifi_scan_list_tolerates_non_utf8_and_empty_payloads() -> None:
    for payload in (b"", b"[]", b'["\xff\xfe"]'):
        decoded = decode_frame(encode_frame(WifiScanList(payload)))
        assert isinstance(decoded, WifiScanList)
        assert decoded.payload == payload
        assert isinstance(decoded.ssids, tuple)


def test_serial_popup_request_builders() -> None:
    by_hole = popup_by_hole_request(0x10, 1)
    assert by_hole[:6] == bytes.fromhex("A8 00 07 20 10 01")
    assert checksum_ok(by_hole)
    assert decode_frame(by_hole) == PopupByHoleRequest(0x10, 1)
    by_sn = popup_by_sn_request(0x60, "10211856")
    assert by_sn[:9] == bytes.fromhex("A8 00 0A 30 60 00 9B D2 10")
    assert checksum_ok(by_sn)
    assert decode_frame(by_sn) == PopupBySnRequest(0x60, 10211856)


def test_checksum_valid_false_is_encoded_as_a_wrong_checksum() -> None:
    broken = ReturnReport(0x10, 1, 4, 93198088, 1, 0xCA, 95, checksum_valid=False)
    raw = encode_frame(broken)
    assert not checksum_ok(raw)
    assert decode_frame(raw) == broken
    with pytest.raises(FrameError) as caught:
        decode_frame(raw, strict=True)
    assert caught.value.code == "BAD_CHECKSUM"


# --- encoder errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        PopupByHoleRequest(0x10, 256),
        PopupBySnRequest(0x10, 1 << 32),
        PopupBySnRequest(0x10, -1),
        ReturnReport(0x10, 1, 4, 1, 1, 0xCA, 300),
        Heartbeat(0x10, "CSQ:27;BP:0 ✓"),
        CabinetSnapshot((board(1),), (occupied_hole(1, area=0x165),), (1,)),  # area needs prefix 0x01
        CabinetSnapshot((board(1, 0, 0x01),), (empty_hole(1)._replace(area=0x165),), (1,)),  # empty: 8 bit
        CabinetSnapshot((board(1),), (occupied_hole(1),), (2,)),  # layout/holes mismatch
        CabinetSnapshot((board(1), board(2)), (occupied_hole(1),), (1,)),  # boards/layout mismatch
        CabinetSnapshot((board(1),), (occupied_hole(1),), (1,), unconsumed_bytes=3),
    ],
    ids=[
        "hole 256",
        "sn 2^32",
        "sn negative",
        "soc 300",
        "non-ascii heartbeat",
        "area without prefix",
        "16-bit area on empty hole",
        "too few holes",
        "too many boards",
        "unconsumed bytes",
    ],
)
def test_encoder_rejects_unencodable_frames(frame: object) -> None:
    with pytest.raises(FrameError) as caught:
        encode_frame(frame)  # type: ignore[arg-type]
    assert caught.value.code == "UNENCODABLE"


def test_encoder_rejects_bad_sn_text_and_unknown_objects() -> None:
    for bad_sn in ("12a", "-5", "99999999999"):
        with pytest.raises(FrameError) as caught:
            popup_by_sn_request(1, bad_sn)
        assert caught.value.code == "UNENCODABLE"
    with pytest.raises(FrameError):
        encode_frame("not a frame")  # type: ignore[arg-type]
