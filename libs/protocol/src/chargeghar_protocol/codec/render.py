"""Frame → plain dict (JSON-ready) for the CLI, logs and debugging endpoints.

Key names follow protocol.md / the legacy JSON where one exists (`index` for board address and hole
number); measurements appear both as raw 0.1-unit ints (`*_raw`) and in volts / amperes, with 0xFF
sentinels rendered as null.
"""

from __future__ import annotations

from typing import Any

from chargeghar_protocol.codec.enums import Command, describe_backup_power
from chargeghar_protocol.codec.frames import (
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


def board_to_dict(board: BoardRecord) -> dict[str, Any]:
    return {
        "index": board.address,
        "reserved1": board.reserved1,
        "reserved2": board.reserved2,
        "temp": board.temp,
        "soft_version": board.soft_version,
        "hard_version": board.hard_version,
        "io": board.io,
    }


def hole_to_dict(hole: HoleRecord) -> dict[str, Any]:
    return {
        "index": hole.hole,
        "state": hole.state,
        "state_description": hole.state_description,
        "sn": hole.sn,
        "has_bank": hole.has_bank,
        "soc": hole.soc,
        "temp": hole.temp,
        "charge_voltage": hole.charge_voltage,
        "charge_current": hole.charge_current,
        "charge_voltage_raw": hole.charge_voltage_raw,
        "charge_current_raw": hole.charge_current_raw,
        "area": hole.area,
        "bank_current_raw": hole.bank_current_raw,
        "bank_voltage_raw": hole.bank_voltage_raw,
        "soft_version": hole.soft_version,
        "sensor": hole.sensor,
        "micro_switch": hole.micro_switch,
        "solenoid_switch": hole.solenoid_switch,
    }


def _body(frame: Frame) -> dict[str, Any]:
    if isinstance(frame, CabinetSnapshot):
        return {
            "boards": [board_to_dict(board) for board in frame.boards],
            "holes": [hole_to_dict(hole) for hole in frame.holes],
            "holes_per_board": list(frame.holes_per_board),
            "ff_marker": frame.has_ff_marker,
            "area_prefix": frame.area_prefix,
            "unconsumed_bytes": frame.unconsumed_bytes,
        }
    if isinstance(frame, PopupByHoleResult):
        return {
            "board": frame.board,
            "hole": frame.hole,
            "state": frame.state,
            "state_description": frame.state_description,
            "succeeded": frame.succeeded,
            "solenoid": frame.solenoid,
            "solenoid_description": frame.solenoid_description,
        }
    if isinstance(frame, PopupBySnResult):
        return {
            "hole": frame.hole,
            "sn": frame.sn,
            "state": frame.state,
            "state_description": frame.state_description,
            "succeeded": frame.succeeded,
            "solenoid": frame.solenoid,
            "solenoid_description": frame.solenoid_description,
        }
    if isinstance(frame, ReturnReport):
        return {
            "board": frame.board,
            "hole": frame.hole,
            "area": frame.area,
            "sn": frame.sn,
            "state": frame.state,
            "state_description": frame.state_description,
            "succeeded": frame.succeeded,
            "soft_version": frame.soft_version,
            "soc": frame.soc,
            "legacy_variant": frame.is_legacy_variant,
        }
    if isinstance(frame, SlotStateReport):
        return {
            "board": frame.board,
            "hole": frame.hole,
            "area": frame.area,
            "sn": frame.sn,
            "state": frame.state,
            "state_description": frame.state_description,
            "soc": frame.soc,
            "temp": frame.temp,
            "charge_voltage": frame.charge_voltage,
            "charge_current": frame.charge_current,
            "charge_voltage_raw": frame.charge_voltage_raw,
            "charge_current_raw": frame.charge_current_raw,
            "soft_version": frame.soft_version,
            "hard_version": frame.hard_version,
            "reserved1": frame.reserved1,
            "reserved2": frame.reserved2,
        }
    if isinstance(frame, Heartbeat):
        bp = frame.bp
        return {
            "board": frame.board,
            "text": frame.text,
            "csq": frame.csq,
            "bp": bp,
            "bp_description": None if bp is None else describe_backup_power(bp),
        }
    if isinstance(frame, WifiScanList):
        return {"text": frame.text, "ssids": list(frame.ssids), "payload_hex": frame.payload.hex(" ")}
    if isinstance(frame, PopupByHoleRequest):
        return {"board": frame.board, "hole": frame.hole}
    if isinstance(frame, PopupBySnRequest):
        return {"board": frame.board, "sn": frame.sn}
    raise TypeError(f"not a frame: {type(frame).__name__}")


def frame_to_dict(frame: Frame) -> dict[str, Any]:
    """`{"cmd", "type", "checksum_valid", …frame fields}` with JSON-compatible values only."""
    return {
        "cmd": frame.cmd,
        "type": Command(frame.cmd).name.lower(),
        "checksum_valid": frame.checksum_valid,
        **_body(frame),
    }
