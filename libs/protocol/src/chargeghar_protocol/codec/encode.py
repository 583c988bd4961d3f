"""Typed frame → bytes, so the simulator and the tests can speak the protocol.

`decode_frame(encode_frame(f)) == f` holds for every well-formed frame (for 0x10 frames whose layout
the heuristic cannot infer, decode with `layout=f.holes_per_board`). A frame with
`checksum_valid=False` is written with a deliberately wrong checksum, so that fault injection also
round-trips. Values that do not fit their bytes raise `EncodeError`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from chargeghar_protocol.codec.checksum import build_frame
from chargeghar_protocol.codec.decode import (
    BOARD_STRUCT,
    HOLE_STRUCT,
    POPUP_BY_HOLE_REQUEST_STRUCT,
    POPUP_BY_HOLE_RESULT_STRUCT,
    POPUP_BY_SN_REQUEST_STRUCT,
    POPUP_BY_SN_RESULT_STRUCT,
    RETURN_LEGACY_STRUCT,
    RETURN_STRUCT,
    SLOT_STATE_STRUCT,
)
from chargeghar_protocol.codec.errors import EncodeError
from chargeghar_protocol.codec.frames import (
    AREA_PREFIX_NEUTRAL,
    CabinetSnapshot,
    Frame,
    Heartbeat,
    PopupByHoleRequest,
    PopupByHoleResult,
    PopupBySnRequest,
    PopupBySnResult,
    ReturnReport,
    SlotStateReport,
    WifiScanList,
    sn_from_str,
)


def _pack(layout: struct.Struct, *values: Any) -> bytes:
    try:
        return layout.pack(*values)
    except struct.error as exc:
        raise EncodeError(f"value out of range for {layout.format!r}: {exc}") from None


def _snapshot_payload(frame: CabinetSnapshot) -> bytes:
    if frame.unconsumed_bytes:
        raise EncodeError("a snapshot with unconsumed bytes cannot be re-encoded faithfully")
    if len(frame.boards) != len(frame.holes_per_board):
        raise EncodeError(
            f"{len(frame.boards)} boards but holes_per_board has {len(frame.holes_per_board)} entries"
        )
    if sum(frame.holes_per_board) != len(frame.holes):
        raise EncodeError(
            f"holes_per_board sums to {sum(frame.holes_per_board)}, got {len(frame.holes)} holes"
        )
    first_reserved2 = frame.boards[0].reserved2 if frame.boards else 0x00
    area_high = 0 if first_reserved2 in AREA_PREFIX_NEUTRAL else first_reserved2
    parts: list[bytes] = []
    holes = iter(frame.holes)
    for board, count in zip(frame.boards, frame.holes_per_board, strict=True):
        parts.append(_pack(BOARD_STRUCT, *board))
        for _ in range(count):
            hole = next(holes)
            # Only occupied holes carry the 16-bit area code of the extension (§4.1.4).
            expected_high = area_high if hole.state else 0
            if hole.area >> 8 != expected_high:
                raise EncodeError(
                    f"hole {hole.hole}: area {hole.area:#x} does not match the board's area prefix "
                    f"{expected_high:#x}"
                )
            parts.append(_pack(HOLE_STRUCT, *hole._replace(area=hole.area & 0xFF)))
    return b"".join(parts)


def _heartbeat_payload(frame: Heartbeat) -> bytes:
    if not frame.text.isascii():
        raise EncodeError("heartbeat text must be ASCII")
    return _pack(struct.Struct(">B"), frame.board) + frame.text.encode("ascii")


def _return_payload(frame: ReturnReport) -> bytes:
    head = (frame.board, frame.hole, frame.area, frame.sn_int, frame.state, frame.soft_version)
    if frame.soc_byte is None:
        return _pack(RETURN_LEGACY_STRUCT, *head)
    return _pack(RETURN_STRUCT, *head, frame.soc_byte)


def _slot_state_payload(frame: SlotStateReport) -> bytes:
    return _pack(
        SLOT_STATE_STRUCT,
        frame.board,
        frame.hole,
        frame.state,
        frame.reserved1,
        frame.reserved2,
        frame.area,
        frame.sn_int,
        frame.soc_byte,
        frame.temp_byte,
        frame.charge_voltage_byte,
        frame.charge_current_byte,
        frame.soft_version,
        frame.hard_version,
    )


_PAYLOAD_BUILDERS: dict[type, Callable[[Any], bytes]] = {
    CabinetSnapshot: _snapshot_payload,
    PopupByHoleResult: lambda f: _pack(POPUP_BY_HOLE_RESULT_STRUCT, f.board, f.hole, f.state, f.solenoid),
    PopupBySnResult: lambda f: _pack(POPUP_BY_SN_RESULT_STRUCT, f.hole, f.sn_int, f.state, f.solenoid),
    ReturnReport: _return_payload,
    SlotStateReport: _slot_state_payload,
    Heartbeat: _heartbeat_payload,
    WifiScanList: lambda f: bytes(f.payload),
    PopupByHoleRequest: lambda f: _pack(POPUP_BY_HOLE_REQUEST_STRUCT, f.board, f.hole),
    PopupBySnRequest: lambda f: _pack(POPUP_BY_SN_REQUEST_STRUCT, f.board, f.sn_int),
}


def encode_frame(frame: Frame) -> bytes:
    """Build the complete frame (head, length, cmd, payload, checksum)."""
    builder = _PAYLOAD_BUILDERS.get(type(frame))
    if builder is None:
        raise EncodeError(f"cannot encode {type(frame).__name__}")
    payload = builder(frame)
    return build_frame(frame.cmd, payload, corrupt_checksum=not frame.checksum_valid)


def popup_by_hole_request(board: int, hole: int) -> bytes:
    """The 7-byte 0x20 serial command (§4.11)."""
    return encode_frame(PopupByHoleRequest(board, hole))


def popup_by_sn_request(board: int, sn: str | int) -> bytes:
    """The 10-byte 0x30 serial command (§4.11); `sn` as decimal string or int."""
    try:
        sn_int = sn if isinstance(sn, int) else sn_from_str(sn)
    except ValueError as exc:
        raise EncodeError(str(exc)) from None
    return encode_frame(PopupBySnRequest(board, sn_int))
