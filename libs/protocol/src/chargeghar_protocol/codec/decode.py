"""Bytes → typed frame.

`decode_frame` validates the envelope (§3), then dispatches on the cmd byte. It raises only
`FrameError` subclasses and never reads past the end of the input: every record is bounds-checked
before it is unpacked. The 0x10 path is the hot one (one frame per cabinet every 20 minutes, times
thousands of cabinets, plus on-demand checks), so it unpacks whole boards with precompiled
`struct.Struct.iter_unpack` and builds the records without per-field Python work.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from functools import lru_cache
from itertools import repeat
from operator import itemgetter
from typing import Any, NamedTuple

from chargeghar_protocol.codec.checksum import ENVELOPE_SIZE, HEAD, byte_sum
from chargeghar_protocol.codec.enums import Command
from chargeghar_protocol.codec.errors import (
    BadChecksumError,
    BadHeadError,
    BadHexError,
    BadPayloadError,
    LengthMismatchError,
    TooShortError,
    TruncatedRecordError,
    UnconsumedBytesError,
    UnknownCommandError,
)
from chargeghar_protocol.codec.frames import (
    AREA_PREFIX_NEUTRAL,
    BoardRecord,
    CabinetSnapshot,
    Frame,
    Heartbeat,
    HoleRecord,
    PopupByHoleRequest,
    PopupByHoleResult,
    PopupBySnRequest,
    PopupBySnResult,
    ReturnReport,
    SlotStateReport,
    WifiScanList,
)
from chargeghar_protocol.codec.layout import (
    BOARD_RECORD_SIZE,
    FIRST_BOARD_RESERVED1,
    FIRST_BOARD_RESERVED2,
    HOLE_RECORD_SIZE,
    SECOND_BOARD_AFTER_FOUR,
    SIZES_READING_SECOND_BOARD,
    BoardPlan,
    LayoutSpec,
    as_layout,
    inferred_plan,
)

DATA_OFFSET = 4
_CABINET_SNAPSHOT = int(Command.CABINET_SNAPSHOT)  # plain int: an enum attribute costs a lookup per frame
# Absolute frame offsets of the bytes the hole-count inference looks at.
_FF_MARKER_FIRST = DATA_OFFSET + FIRST_BOARD_RESERVED1
_FF_MARKER_SECOND = DATA_OFFSET + FIRST_BOARD_RESERVED2
_SECOND_BOARD_BYTE = DATA_OFFSET + SECOND_BOARD_AFTER_FOUR

BOARD_STRUCT = struct.Struct(">6B")
# hole, state, byte2, byte3, area, SN (u32 BE), soc, temp, charge V, charge I, soft version, sensor
HOLE_STRUCT = struct.Struct(">5BI6B")
POPUP_BY_HOLE_RESULT_STRUCT = struct.Struct(">4B")  # board, hole, state, solenoid
POPUP_BY_SN_RESULT_STRUCT = struct.Struct(">BI2B")  # hole, SN, state, solenoid
RETURN_STRUCT = struct.Struct(">3BI3B")  # board, hole, area, SN, state, soft version, soc
RETURN_LEGACY_STRUCT = struct.Struct(">3BI2B")  # same without soc (14-byte frame)
SLOT_STATE_STRUCT = struct.Struct(">6BI6B")  # board…area, SN, soc…hard version
POPUP_BY_HOLE_REQUEST_STRUCT = struct.Struct(">2B")  # board, hole
POPUP_BY_SN_REQUEST_STRUCT = struct.Struct(">BI")  # board, SN

# `tuple.__new__(RecordClass, unpacked)` builds a NamedTuple from a struct tuple without running the
# generated Python `__new__`; mapped over `repeat(RecordClass)` the whole loop stays in C.
_tuple_new: Callable[[type[Any], tuple[int, ...]], Any] = tuple.__new__
_hole_number = itemgetter(0)
#: bytes 0x00…0xFF: a slice of it equals the wire hole numbers when they are consecutive and ascending.
_ASCENDING = bytes(range(256))


def _fixed_payload(frame: bytes, size: int, name: str) -> None:
    if len(frame) != size:
        raise BadPayloadError(
            f"{name} frame must be {size} bytes, got {len(frame)}", offset=min(len(frame), DATA_OFFSET)
        )


class _Slicing(NamedTuple):
    """Where the records of a 0x10 frame are, for one (plan, frame size) pair — computed once, cached."""

    board_offsets: tuple[int, ...]
    hole_ranges: tuple[tuple[int, int], ...]  # absolute [start, end) of each board's hole records
    holes_per_board: tuple[int, ...]
    consumed_to: int
    unconsumed: int
    truncation: tuple[str, int] | None  # (message, offset) of a record cut off by the end of data


@lru_cache(maxsize=1024)
def _slice_plan(plan: BoardPlan, frame_size: int) -> _Slicing:
    end = frame_size - 1  # the checksum byte is not data
    board_offsets: list[int] = []
    hole_ranges: list[tuple[int, int]] = []
    counts: list[int] = []
    consumed_to = DATA_OFFSET
    truncation: tuple[str, int] | None = None
    for data_offset, planned_holes in plan:
        start = DATA_OFFSET + data_offset
        if start >= end:
            break  # a board beyond the data is skipped, as Java's ceil rounding does
        if start + BOARD_RECORD_SIZE > end:
            truncation = (f"board record needs {BOARD_RECORD_SIZE} bytes, {end - start} left", start)
            break
        first_hole = start + BOARD_RECORD_SIZE
        present = min(planned_holes, (end - first_hole) // HOLE_RECORD_SIZE)
        holes_end = first_hole + present * HOLE_RECORD_SIZE
        if present < planned_holes and holes_end < end:
            # Holes that start beyond the end are skipped (Java), but a partial record is an error.
            truncation = (f"hole record needs {HOLE_RECORD_SIZE} bytes, {end - holes_end} left", holes_end)
            break
        board_offsets.append(start)
        hole_ranges.append((first_hole, holes_end))
        counts.append(present)
        consumed_to = holes_end
    return _Slicing(
        tuple(board_offsets), tuple(hole_ranges), tuple(counts), consumed_to, end - consumed_to, truncation
    )


@lru_cache(maxsize=512)
def _inferred_slicing(data_size: int, ff_marker: bool, second_board_byte: int) -> _Slicing:
    # Keyed on the three inputs of the inference, so the hot path hashes three small values only.
    plan = inferred_plan(data_size, ff_marker, second_board_byte)
    return _slice_plan(plan, data_size + ENVELOPE_SIZE)


def _decode_snapshot(
    frame: bytes, checksum_valid: bool, strict: bool, layout: LayoutSpec | None
) -> CabinetSnapshot:
    view = memoryview(frame)
    if layout is None:
        # The inference inputs (as layout.layout_inputs computes them), read straight from the frame.
        data_size = len(frame) - ENVELOPE_SIZE
        ff_marker = data_size > 2 and frame[_FF_MARKER_FIRST] == 0xFF and frame[_FF_MARKER_SECOND] == 0xFF
        second_board_byte = frame[_SECOND_BOARD_BYTE] if data_size in SIZES_READING_SECOND_BOARD else 0
        slicing = _inferred_slicing(data_size, ff_marker, second_board_byte)
    else:
        slicing = _slice_plan(as_layout(layout).plan(), len(frame))
    if slicing.truncation is not None:
        raise TruncatedRecordError(slicing.truncation[0], offset=slicing.truncation[1])
    if strict and slicing.unconsumed:
        counts = "+".join(map(str, slicing.holes_per_board)) or "no boards"
        raise UnconsumedBytesError(
            f"layout {counts} leaves {slicing.unconsumed} data bytes unread", offset=slicing.consumed_to
        )
    unpack_board = BOARD_STRUCT.unpack_from
    boards: list[BoardRecord] = [
        _tuple_new(BoardRecord, unpack_board(frame, offset)) for offset in slicing.board_offsets
    ]
    ranges = slicing.hole_ranges
    # One iter_unpack over all hole records (copied together when split by board records) is the
    # cheapest way to get 15-byte records out of the buffer.
    if len(ranges) == 1:
        hole_bytes: bytes | memoryview = view[ranges[0][0] : ranges[0][1]]
    else:
        hole_bytes = b"".join([view[start:stop] for start, stop in ranges])
    holes: list[HoleRecord] = list(map(_tuple_new, repeat(HoleRecord), HOLE_STRUCT.iter_unpack(hole_bytes)))
    if boards and boards[0].reserved2 not in AREA_PREFIX_NEUTRAL:
        # Area-code extension (§4.1.4): occupied holes carry the low byte of a 16-bit area code.
        high = boards[0].reserved2 << 8
        holes = [hole._replace(area=high | hole.area) if hole.state else hole for hole in holes]
    # Java sorts by hole number; skip the sort in the usual case of numbers already 1, 2, 3…
    hole_numbers = hole_bytes[::HOLE_RECORD_SIZE]
    if not hole_numbers or _ASCENDING[hole_numbers[0] : hole_numbers[0] + len(hole_numbers)] != hole_numbers:
        holes.sort(key=_hole_number)
    return CabinetSnapshot(
        tuple(boards), tuple(holes), slicing.holes_per_board, checksum_valid, slicing.unconsumed
    )


def _decode_popup_by_hole(frame: bytes, checksum_valid: bool) -> PopupByHoleResult:
    _fixed_payload(frame, 9, "0x21 pop-up by hole result")
    board, hole, state, solenoid = POPUP_BY_HOLE_RESULT_STRUCT.unpack_from(frame, DATA_OFFSET)
    return PopupByHoleResult(board, hole, state, solenoid, checksum_valid)


def _decode_popup_by_sn(frame: bytes, checksum_valid: bool) -> PopupBySnResult:
    _fixed_payload(frame, 12, "0x31 pop-up by SN result")
    hole, sn, state, solenoid = POPUP_BY_SN_RESULT_STRUCT.unpack_from(frame, DATA_OFFSET)
    return PopupBySnResult(hole, sn, state, solenoid, checksum_valid)


def _decode_return(frame: bytes, checksum_valid: bool) -> ReturnReport:
    if len(frame) == 15:
        board, hole, area, sn, state, soft, soc = RETURN_STRUCT.unpack_from(frame, DATA_OFFSET)
        return ReturnReport(board, hole, area, sn, state, soft, soc, checksum_valid)
    if len(frame) == 14:
        board, hole, area, sn, state, soft = RETURN_LEGACY_STRUCT.unpack_from(frame, DATA_OFFSET)
        return ReturnReport(board, hole, area, sn, state, soft, None, checksum_valid)
    raise BadPayloadError(
        f"0x40 return frame must be 15 (or legacy 14) bytes, got {len(frame)}",
        offset=min(len(frame), DATA_OFFSET),
    )


def _decode_slot_state(frame: bytes, checksum_valid: bool) -> SlotStateReport:
    _fixed_payload(frame, 21, "0x28 slot state report")
    board, hole, state, reserved1, reserved2, area, sn, soc, temp, volts, amps, soft, hard = (
        SLOT_STATE_STRUCT.unpack_from(frame, DATA_OFFSET)
    )
    return SlotStateReport(
        board, hole, state, reserved1, reserved2, area, sn, soc, temp, volts, amps, soft, hard, checksum_valid
    )


def _decode_heartbeat(frame: bytes, checksum_valid: bool) -> Heartbeat:
    if len(frame) < ENVELOPE_SIZE + 1:
        raise BadPayloadError("0x7A heartbeat has no board address byte", offset=len(frame) - 1)
    text = frame[DATA_OFFSET + 1 : -1]
    if not text.isascii():
        first_bad = next(i for i, byte in enumerate(text) if byte >= 0x80)
        raise BadPayloadError("heartbeat text is not ASCII", offset=DATA_OFFSET + 1 + first_bad)
    return Heartbeat(frame[DATA_OFFSET], text.decode("ascii"), checksum_valid)


def _decode_wifi(frame: bytes, checksum_valid: bool) -> WifiScanList:
    return WifiScanList(frame[DATA_OFFSET:-1], checksum_valid)


def _decode_popup_by_hole_request(frame: bytes, checksum_valid: bool) -> PopupByHoleRequest:
    _fixed_payload(frame, 7, "0x20 pop-up by hole request")
    board, hole = POPUP_BY_HOLE_REQUEST_STRUCT.unpack_from(frame, DATA_OFFSET)
    return PopupByHoleRequest(board, hole, checksum_valid)


def _decode_popup_by_sn_request(frame: bytes, checksum_valid: bool) -> PopupBySnRequest:
    _fixed_payload(frame, 10, "0x30 pop-up by SN request")
    board, sn = POPUP_BY_SN_REQUEST_STRUCT.unpack_from(frame, DATA_OFFSET)
    return PopupBySnRequest(board, sn, checksum_valid)


_SIMPLE_DECODERS: dict[int, Callable[[bytes, bool], Frame]] = {
    Command.POPUP_BY_HOLE_RESULT: _decode_popup_by_hole,
    Command.POPUP_BY_SN_RESULT: _decode_popup_by_sn,
    Command.RETURN_REPORT: _decode_return,
    Command.SLOT_STATE_REPORT: _decode_slot_state,
    Command.HEARTBEAT: _decode_heartbeat,
    Command.WIFI_SCAN_LIST: _decode_wifi,
    Command.POPUP_BY_HOLE_REQUEST: _decode_popup_by_hole_request,
    Command.POPUP_BY_SN_REQUEST: _decode_popup_by_sn_request,
}

#: Every cmd byte `decode_frame` understands.
KNOWN_COMMANDS = frozenset({int(Command.CABINET_SNAPSHOT), *map(int, _SIMPLE_DECODERS)})


def decode_frame(
    data: bytes | bytearray | memoryview, *, strict: bool = False, layout: LayoutSpec | None = None
) -> Frame:
    """Decode one complete frame.

    Lenient by default: a checksum mismatch is reported as `checksum_valid=False` and a 0x10 layout that
    leaves bytes over as `unconsumed_bytes`. `strict=True` raises `BadChecksumError` /
    `UnconsumedBytesError` instead. `layout` (a `BoardLayout` or holes-per-board sequence) replaces the
    hole-count inference for 0x10 frames. Raises only `FrameError` subclasses.
    """
    frame = data if type(data) is bytes else bytes(data)
    size = len(frame)
    if size < ENVELOPE_SIZE:
        raise TooShortError(f"a frame has at least {ENVELOPE_SIZE} bytes, got {size}", offset=size)
    if frame[0] != HEAD:
        raise BadHeadError(f"head must be 0xA8, got 0x{frame[0]:02X}", offset=0)
    declared = (frame[1] << 8) | frame[2]
    if declared != size:
        raise LengthMismatchError(f"length field says {declared} bytes, got {size}", offset=1)
    checksum_valid = not byte_sum(frame) & 0xFF
    if strict and not checksum_valid:
        expected = -sum(frame[:-1]) & 0xFF
        raise BadChecksumError(f"checksum is 0x{frame[-1]:02X}, expected 0x{expected:02X}", offset=size - 1)
    cmd = frame[3]
    if cmd == _CABINET_SNAPSHOT:
        return _decode_snapshot(frame, checksum_valid, strict, layout)
    decoder = _SIMPLE_DECODERS.get(cmd)
    if decoder is None:
        raise UnknownCommandError(f"unknown command 0x{cmd:02X}", cmd=cmd)
    return decoder(frame, checksum_valid)


_HEX_SEPARATORS = re.compile(r"[\s,:\-]+")


def parse_hex(text: str) -> bytes:
    """Hex text → bytes; accepts spaces, commas, colons, dashes and `0x` prefixes between bytes."""
    tokens = [token for token in _HEX_SEPARATORS.split(text.strip()) if token]
    digits = "".join(token[2:] if token[:2].lower() == "0x" else token for token in tokens)
    try:
        return bytes.fromhex(digits)
    except ValueError as exc:
        raise BadHexError(f"not hex: {exc}") from None


def decode_hex(text: str, *, strict: bool = False, layout: LayoutSpec | None = None) -> Frame:
    """`decode_frame(parse_hex(text))` — for logs, fixtures and the CLI."""
    return decode_frame(parse_hex(text), strict=strict, layout=layout)


__all__ = [
    "KNOWN_COMMANDS",
    "decode_frame",
    "decode_hex",
    "parse_hex",
]
