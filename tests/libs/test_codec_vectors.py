"""Decoder tests driven by the test vectors of protocol.md §9 and by tables of malformed frames.

Every checksum below was recomputed by the test itself (`checksum_of`), not copied from the document.
"""

from __future__ import annotations

from typing import Any

import pytest
from chargeghar_protocol.codec import (
    BadChecksumError,
    BoardRecord,
    CabinetSnapshot,
    FrameError,
    Heartbeat,
    HoleRecord,
    PopupByHoleResult,
    PopupBySnResult,
    ReturnReport,
    build_frame,
    checksum_of,
    decode_frame,
    decode_hex,
    encode_frame,
    parse_hex,
)

# §9 #2 / §4.2: the ChargeGhar station's real 4-slot upload (logs.txt 2025-11-12 06:26:16).
CHARGEGHAR_UPLOAD = (
    "A8 00 47 10 01 04 00 00 04 0F "
    "01 00 00 00 00 00 00 00 00 00 01 00 00 00 80 "
    "02 00 00 00 00 00 00 00 00 00 01 00 00 00 80 "
    "03 01 00 E4 49 02 6E D5 84 64 18 32 02 19 00 "
    "04 00 00 00 00 00 00 00 00 00 01 00 00 00 80 9C"
)
# §9 #4: VOL 8-port check reply, FF FF marker, 2 boards x 4 holes.
VOL_EIGHT_PORT = (
    "A8 00 89 10 01 FF FF 00 04 16 01 01 00 EC 00 05 11 49 F1 64 1F 32 01 0D 00 02 00 00 00 00 00 00 00 "
    "00 00 00 00 00 00 80 03 01 00 E8 00 05 11 46 AC 64 20 32 00 0D 00 04 00 00 00 00 00 00 00 00 00 00 "
    "00 00 00 80 02 FF FF 00 04 16 05 01 00 D7 00 04 C6 F0 96 64 1F 32 00 1A 00 06 00 00 00 00 00 00 00 "
    "00 00 00 00 00 00 80 07 01 00 E9 00 05 11 49 DB 64 1E 32 00 0D 00 08 00 00 00 00 00 00 00 00 00 00 "
    "00 00 00 80 D8"
)
# §9 #7: the beginning of VOL's 18-port upload (3 boards x 6 holes, 293 bytes); the rest is unknown.
VOL_EIGHTEEN_PORT_PREFIX = (
    "A8 01 25 10 10 00 00 00 6E 6E 01 01 00 F1 04 05 8E 17 08 5F 18 00 00 CA 00 "
    "02 01 00 E1 04 05 8E 15 F0 63 18 00 00 CA 00 03 00 00 00 00 00 00 00 00 FF FF 00 00 00 80"
)
POPUP_SN_SPRING = "A8 00 0C 31 01 02 6E D5 80 01 02 52"  # §9 #8
POPUP_SN_VOL_BAD_CHECKSUM = "A8 00 0C 31 60 00 9B D2 10 01 00 3B"  # §9 #9, checksum should be 0x3D
POPUP_HOLE_VOL = "A8 00 09 21 10 01 01 02 1A"  # §9 #10
RETURN_VOL = "A8 00 0F 40 10 01 04 05 8E 17 08 01 CA 5F 18"  # §9 #11
HEARTBEAT_VOL = "A8 00 11 7A 10 43 53 51 3A 32 37 3B 42 50 3A 30 FC"  # §9 #12

EMPTY_CG_HOLE = {"state": 0, "sn": "0", "soc": 0, "temp": 1, "sensor": 0x80}


def _hole_view(hole: HoleRecord) -> dict[str, Any]:
    return {"state": hole.state, "sn": hole.sn, "soc": hole.soc, "temp": hole.temp, "sensor": hole.sensor}


@pytest.mark.parametrize(
    "hex_frame",
    [
        CHARGEGHAR_UPLOAD,
        VOL_EIGHT_PORT,
        POPUP_SN_SPRING,
        POPUP_HOLE_VOL,
        RETURN_VOL,
        HEARTBEAT_VOL,
    ],
)
def test_valid_vectors_have_a_recomputed_valid_checksum_and_reencode_byte_for_byte(hex_frame: str) -> None:
    raw = parse_hex(hex_frame)
    assert checksum_of(raw[:-1]) == raw[-1]
    frame = decode_frame(raw, strict=True)
    assert frame.checksum_valid is True
    assert encode_frame(frame) == raw


def test_chargeghar_station_upload_decodes_as_in_section_4_2() -> None:
    frame = decode_hex(CHARGEGHAR_UPLOAD)
    assert isinstance(frame, CabinetSnapshot)
    assert frame.boards == (
        BoardRecord(address=1, reserved1=4, reserved2=0, temp=0, soft_version=4, hard_version=15),
    )
    assert frame.boards[0].io == 0
    assert frame.holes_per_board == (4,)
    assert frame.unconsumed_bytes == 0
    assert not frame.has_ff_marker
    assert frame.area_prefix is None
    assert [hole.hole for hole in frame.holes] == [1, 2, 3, 4]
    for empty in (frame.holes[0], frame.holes[1], frame.holes[3]):
        assert _hole_view(empty) == EMPTY_CG_HOLE
        assert empty.has_bank is False
        assert empty.bank_sn is None
        assert empty.micro_switch is True
        assert empty.solenoid_switch is False
    occupied = frame.holes[2]
    assert occupied == HoleRecord(
        hole=3,
        state=1,
        bank_current_raw=0,
        bank_voltage_raw=0xE4,
        area=73,
        sn_int=40818052,
        soc_byte=100,
        temp_byte=24,
        charge_voltage_byte=50,
        charge_current_byte=2,
        soft_version=25,
        sensor=0,
    )
    assert occupied.sn == "40818052"
    assert occupied.bank_sn == "40818052"
    assert occupied.charge_voltage_raw == 50
    assert occupied.charge_current_raw == 2
    assert occupied.charge_voltage == pytest.approx(5.0)
    assert occupied.charge_current == pytest.approx(0.2)
    assert occupied.micro_switch is False
    assert occupied.state_description == "normal"


def test_vol_eight_port_check_reply() -> None:
    frame = decode_hex(VOL_EIGHT_PORT)
    assert isinstance(frame, CabinetSnapshot)
    assert frame.has_ff_marker
    assert frame.holes_per_board == (4, 4)
    assert [(b.address, b.soft_version, b.hard_version) for b in frame.boards] == [(1, 4, 0x16), (2, 4, 0x16)]
    by_hole = {hole.hole: hole for hole in frame.holes}
    assert sorted(by_hole) == list(range(1, 9))
    assert (by_hole[1].sn, by_hole[1].soc, by_hole[1].temp, by_hole[1].soft_version) == (
        "85019121",
        100,
        31,
        13,
    )
    assert by_hole[1].bank_voltage_raw == 0xEC
    assert (by_hole[1].charge_voltage, by_hole[1].charge_current) == (pytest.approx(5.0), pytest.approx(0.1))
    assert (by_hole[3].sn, by_hole[3].temp) == ("85018284", 32)
    assert (by_hole[5].sn, by_hole[5].soft_version) == ("80146582", 26)
    assert (by_hole[7].sn, by_hole[7].temp) == ("85019099", 30)
    for empty in (2, 4, 6, 8):
        assert by_hole[empty].has_bank is False
        assert by_hole[empty].sensor == 0x80


def test_vol_eighteen_port_prefix_is_a_truncated_frame_and_the_encoder_reproduces_its_bytes() -> None:
    prefix = parse_hex(VOL_EIGHTEEN_PORT_PREFIX)
    with pytest.raises(FrameError) as caught:
        decode_frame(prefix)
    assert caught.value.code == "LENGTH_MISMATCH"

    # Rebuild a full 293-byte frame from the known records (the unknown rest as empty holes): its
    # first bytes must be the vendor's, and the heuristic must find 3 boards x 6 holes.
    known = decode_frame(build_frame(0x10, prefix[4:]), layout=(3,))
    assert isinstance(known, CabinetSnapshot)
    empty = known.holes[2]
    holes = [*known.holes, *(empty._replace(hole=number) for number in range(4, 19))]
    boards = (known.boards[0], known.boards[0]._replace(address=0x20), known.boards[0]._replace(address=0x30))
    full = CabinetSnapshot(boards, tuple(holes), (6, 6, 6))
    raw = encode_frame(full)
    assert len(raw) == 293
    assert raw.startswith(prefix)
    decoded = decode_frame(raw)
    assert decoded == full
    hole1, hole2, hole3 = decoded.holes[:3]
    assert (hole1.area, hole1.sn, hole1.soc, hole1.temp, hole1.soft_version) == (4, "93198088", 95, 24, 0xCA)
    assert (hole2.sn, hole2.soc) == ("93197808", 99)
    assert (hole3.has_bank, hole3.soc, hole3.temp, hole3.soc_byte) == (False, None, None, 0xFF)


def test_popup_by_sn_spring_doc_example() -> None:
    assert decode_hex(POPUP_SN_SPRING) == PopupBySnResult(hole=1, sn_int=40818048, state=1, solenoid=2)
    frame = decode_hex(POPUP_SN_SPRING)
    assert isinstance(frame, PopupBySnResult)
    assert (frame.sn, frame.succeeded, frame.solenoid_description) == ("40818048", True, "normal pop-up")


def test_popup_by_sn_vol_example_has_a_wrong_checksum() -> None:
    lenient = decode_hex(POPUP_SN_VOL_BAD_CHECKSUM)
    assert lenient == PopupBySnResult(hole=96, sn_int=10211856, state=1, solenoid=0, checksum_valid=False)
    with pytest.raises(BadChecksumError) as caught:
        decode_hex(POPUP_SN_VOL_BAD_CHECKSUM, strict=True)
    assert caught.value.code == "BAD_CHECKSUM"
    assert caught.value.offset == 11
    assert "0x3D" in caught.value.message
    repaired = parse_hex(POPUP_SN_VOL_BAD_CHECKSUM)[:-1] + b"\x3d"
    assert decode_frame(repaired, strict=True).checksum_valid is True


def test_popup_by_hole_vol_example() -> None:
    frame = decode_hex(POPUP_HOLE_VOL)
    assert frame == PopupByHoleResult(board=0x10, hole=1, state=1, solenoid=2)
    assert isinstance(frame, PopupByHoleResult)
    assert frame.succeeded
    assert frame.state_description == "pop-up successful"


def test_return_vol_example() -> None:
    frame = decode_hex(RETURN_VOL)
    assert frame == ReturnReport(
        board=0x10, hole=1, area=4, sn_int=93198088, state=1, soft_version=0xCA, soc_byte=95
    )
    assert isinstance(frame, ReturnReport)
    assert (frame.sn, frame.soc, frame.succeeded, frame.is_legacy_variant) == ("93198088", 95, True, False)


def test_heartbeat_vol_example() -> None:
    frame = decode_hex(HEARTBEAT_VOL)
    assert frame == Heartbeat(board=0x10, text="CSQ:27;BP:0")
    assert isinstance(frame, Heartbeat)
    assert (frame.csq, frame.bp) == (27, 0)


# --- malformed frames: exact error code (and offset where it is meaningful) -------------------------

VALID_POPUP = parse_hex(POPUP_HOLE_VOL)
VALID_UPLOAD = parse_hex(CHARGEGHAR_UPLOAD)


def _flip(raw: bytes, index: int) -> bytes:
    return raw[:index] + bytes([raw[index] ^ 0x5A]) + raw[index + 1 :]


MALFORMED: list[tuple[str, bytes, str, int | None]] = [
    ("empty", b"", "TOO_SHORT", 0),
    ("four bytes", bytes.fromhex("A8000510"), "TOO_SHORT", 4),
    ("wrong head", b"\xa9" + VALID_POPUP[1:], "BAD_HEAD", 0),
    ("zero head", bytes(9), "BAD_HEAD", 0),
    ("length field too big", VALID_POPUP[:2] + b"\x0a" + VALID_POPUP[3:], "LENGTH_MISMATCH", 1),
    ("length field too small", VALID_POPUP[:2] + b"\x08" + VALID_POPUP[3:], "LENGTH_MISMATCH", 1),
    ("truncated popup", VALID_POPUP[:-1], "LENGTH_MISMATCH", 1),
    ("padded popup", VALID_POPUP + b"\x00", "LENGTH_MISMATCH", 1),
    ("truncated upload", VALID_UPLOAD[:40], "LENGTH_MISMATCH", 1),
    ("padded upload", VALID_UPLOAD + b"\x9c", "LENGTH_MISMATCH", 1),
    ("unknown cmd 0x99", build_frame(0x99, b"\x01\x02"), "UNKNOWN_COMMAND", 3),
    ("unknown cmd 0x14", build_frame(0x14, b""), "UNKNOWN_COMMAND", 3),
    ("0x21 too short", build_frame(0x21, b"\x10\x01\x01"), "BAD_PAYLOAD", 4),
    ("0x21 too long", build_frame(0x21, b"\x10\x01\x01\x02\x00"), "BAD_PAYLOAD", 4),
    ("0x31 wrong size", build_frame(0x31, b"\x01\x02\x6e\xd5\x80\x01"), "BAD_PAYLOAD", 4),
    ("0x40 of 16 bytes", build_frame(0x40, bytes(11)), "BAD_PAYLOAD", 4),
    ("0x40 of 13 bytes", build_frame(0x40, bytes(8)), "BAD_PAYLOAD", 4),
    ("0x28 of 20 bytes", build_frame(0x28, bytes(15)), "BAD_PAYLOAD", 4),
    ("0x20 wrong size", build_frame(0x20, b"\x10"), "BAD_PAYLOAD", 4),
    ("0x30 wrong size", build_frame(0x30, b"\x10\x00\x00"), "BAD_PAYLOAD", 4),
    ("heartbeat without board", build_frame(0x7A, b""), "BAD_PAYLOAD", 4),
    ("heartbeat not ascii", build_frame(0x7A, b"\x10CSQ:\xff7"), "BAD_PAYLOAD", 9),
    ("0x10 without data", build_frame(0x10, b""), "UNPARSEABLE_LAYOUT", 4),
    ("0x10 two 2-hole boards (S=72)", build_frame(0x10, bytes(72)), "UNPARSEABLE_LAYOUT", 4),
    ("0x10 garbage length 37", build_frame(0x10, bytes(range(37))), "UNPARSEABLE_LAYOUT", 4),
]


@pytest.mark.parametrize(
    ("raw", "code", "offset"), [case[1:] for case in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed_frames_raise_the_exact_typed_error(raw: bytes, code: str, offset: int | None) -> None:
    for strict in (False, True):
        with pytest.raises(FrameError) as caught:
            decode_frame(raw, strict=strict)
        assert caught.value.code == code
        assert caught.value.offset == offset
        assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("index", [4, 20, 44, 47, 69])
def test_garbled_byte_is_flagged_by_the_checksum(index: int) -> None:
    garbled = _flip(VALID_UPLOAD, index)
    frame = decode_frame(garbled)
    assert frame.checksum_valid is False
    with pytest.raises(FrameError) as caught:
        decode_frame(garbled, strict=True)
    assert caught.value.code == "BAD_CHECKSUM"
    assert caught.value.offset == len(VALID_UPLOAD) - 1


def test_strict_checks_the_checksum_before_the_command() -> None:
    unknown = bytearray(build_frame(0x99, b"\x01"))
    unknown[-1] ^= 0xFF
    with pytest.raises(FrameError) as lenient:
        decode_frame(bytes(unknown))
    assert lenient.value.code == "UNKNOWN_COMMAND"
    with pytest.raises(FrameError) as strict:
        decode_frame(bytes(unknown), strict=True)
    assert strict.value.code == "BAD_CHECKSUM"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a8 00 09", b"\xa8\x00\x09"),
        ("A8:00:09", b"\xa8\x00\x09"),
        ("0xA8 0x00 0x09", b"\xa8\x00\x09"),
        ("A80009", b"\xa8\x00\x09"),
        ("  A8-00-09\n", b"\xa8\x00\x09"),
    ],
)
def test_parse_hex_accepts_common_separators(text: str, expected: bytes) -> None:
    assert parse_hex(text) == expected


@pytest.mark.parametrize("text", ["A8 0", "zz", "A8 00 0G"])
def test_parse_hex_rejects_non_hex_with_bad_hex(text: str) -> None:
    with pytest.raises(FrameError) as caught:
        parse_hex(text)
    assert caught.value.code == "BAD_HEX"


def test_decoder_accepts_bytearray_and_memoryview() -> None:
    expected = decode_frame(VALID_UPLOAD)
    assert decode_frame(bytearray(VALID_UPLOAD)) == expected
    assert decode_frame(memoryview(VALID_UPLOAD)) == expected


def test_error_renders_code_offset_and_message() -> None:
    with pytest.raises(FrameError) as caught:
        decode_frame(b"\xa9\x00\x05\x10\x00")
    assert str(caught.value) == "BAD_HEAD at byte 0: head must be 0xA8, got 0xA9"
    assert caught.value.to_dict() == {
        "error": "BAD_HEAD",
        "message": "head must be 0xA8, got 0xA9",
        "offset": 0,
    }
