"""Protocol enumerations (protocol.md §3.1, §4.12) with human-readable descriptions.

Frames keep these codes as plain ints, because devices send codes that no table lists; use
`<Enum>.lookup(code)` to get a member or None, and `describe_<x>(code)` for a label that never fails.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag
from typing import Self, cast


class _DescribedEnum(IntEnum):
    @classmethod
    def lookup(cls, code: int) -> Self | None:
        return cast("Self | None", cls._value2member_map_.get(code))

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[type(self).__name__][int(self)]


class Command(_DescribedEnum):
    CABINET_SNAPSHOT = 0x10
    POPUP_BY_HOLE_REQUEST = 0x20
    POPUP_BY_HOLE_RESULT = 0x21
    SLOT_STATE_REPORT = 0x28
    POPUP_BY_SN_REQUEST = 0x30
    POPUP_BY_SN_RESULT = 0x31
    RETURN_REPORT = 0x40
    HEARTBEAT = 0x7A
    WIFI_SCAN_LIST = 0xCF


class HoleState(_DescribedEnum):
    """0x10 hole byte 1 (§4.12.1)."""

    NO_BANK = 0x00
    NORMAL = 0x01
    CHARGING_ABNORMAL = 0x02
    COMMUNICATION_ERROR = 0x03
    STUCK = 0x04
    FORCIBLY_RELEASED = 0x05
    SOLENOID_NOT_RETURNED = 0x06
    RESERVED_07 = 0x07
    ANTI_THEFT_COMM_FAILED = 0x08
    TYPE_C_SHORT_CIRCUIT = 0x09
    RETURN_FAILED_NOT_EJECTED = 0x0A


class PopupState(_DescribedEnum):
    """0x21 byte 6 and 0x31 byte 9 (§4.12.2). Only SUCCESS means the bank came out."""

    FAILED = 0x00
    SUCCESS = 0x01
    SERIAL_TIMEOUT = 0x11
    NOT_EJECTED_SN_READABLE = 0x12
    TIMESTAMP_UNAVAILABLE = 0x87
    TTL_EXCEEDED = 0x88
    NO_ELIGIBLE_BANK = 0xFB
    SN_NOT_FOUND = 0xFC
    TASK_QUEUE_FAILED = 0xFD
    PREVIOUS_RENTAL_PENDING = 0xFE
    COMMAND_PARSE_FAILED = 0xFF


class ReturnState(_DescribedEnum):
    """0x40 byte 11 and 0x28 byte 6 (§4.12.3)."""

    FAILED = 0x00
    SUCCESS = 0x01
    AREA_CODE_ERROR = 0x10
    SN_READ_FAILED = 0x11
    INFO_READ_FAILED = 0x12
    VERSION_READ_FAILED = 0x13
    BATTERY_LOCK_FAILED = 0x14
    SN_AND_MOTOR_FAILED = 0x21
    INFO_AND_MOTOR_FAILED = 0x22
    LOCK_AND_MOTOR_FAILED = 0x23
    ANTI_THEFT_SWITCH_FAILED = 0x24


class SolenoidState(_DescribedEnum):
    """0x21 byte 7 and 0x31 byte 10 (§4.12.4, vendor "R&D only"); use the hex values, not the bits."""

    JAMMED = 0x00
    SHAKE = 0x01
    NORMAL_POPUP = 0x02
    RENTAL_SUCCESSFUL = 0x06
    JAMMED_07 = 0x07


class BackupPower(_DescribedEnum):
    """Heartbeat `BP:` value (§4.12.5)."""

    UNSUPPORTED = 0
    INVALID = 1
    SUPPORTED_STOPPED = 2
    SUPPORTED_RUNNING = 3


class SensorBit(IntFlag):
    """Hole byte 14 (§4.12.6): bit 7 is set for an empty hole; bit 6's meaning is unverified."""

    SOLENOID_SWITCH = 0x40
    MICRO_SWITCH = 0x80


_DESCRIPTIONS: dict[str, dict[int, str]] = {
    "Command": {
        0x10: "cabinet information (check / check_all / periodic upload)",
        0x20: "pop-up by hole request (server to MCU, serial)",
        0x21: "pop-up by hole result",
        0x28: "return self-test / slot state change (return-fix)",
        0x30: "pop-up by SN request (server to MCU, serial)",
        0x31: "pop-up by SN result",
        0x40: "power bank returned",
        0x7A: "heartbeat",
        0xCF: "Wi-Fi scan list",
    },
    "HoleState": {
        0x00: "no power bank",
        0x01: "normal",
        0x02: "charging abnormal",
        0x03: "communication exception",
        0x04: "stuck: spring cannot eject",
        0x05: "spring/key forcibly released",
        0x06: "forcibly released without communication / solenoid did not return on return",
        0x07: "reserved",
        0x08: "anti-theft protocol communication failed",
        0x09: "Type-C short circuit",
        0x0A: "return failed, battery does not pop out",
    },
    "PopupState": {
        0x00: "pop-up failed",
        0x01: "pop-up successful",
        0x11: "serial communication timeout",
        0x12: "power bank not ejected but SN readable",
        0x87: "failed to obtain timestamp (ttl form)",
        0x88: "TTL validity exceeded",
        0xFB: "no power bank meets the rental requirements",
        0xFC: "target SN not found among charging banks",
        0xFD: "failed to add task to thread pool",
        0xFE: "previous rental not completed, new rental refused",
        0xFF: "lease command parsing failed",
    },
    "ReturnState": {
        0x00: "return failed",
        0x01: "return successful",
        0x10: "region (area) code error",
        0x11: "failed to read SN",
        0x12: "failed to read voltage/temperature",
        0x13: "failed to read software/hardware version",
        0x14: "battery-lock command failed",
        0x21: "SN failure and motor action failed",
        0x22: "info failure and motor action failed",
        0x23: "battery-lock failure and motor action failed",
        0x24: "anti-theft switch detection failed (a 0x28 self-test follows)",
    },
    "SolenoidState": {
        0x00: "jammed / damaged",
        0x01: "shake",
        0x02: "normal pop-up",
        0x06: "rental successful",
        0x07: "jammed / damaged",
    },
    "BackupPower": {
        0: "no backup-power support, stopped",
        1: "invalid",
        2: "backup power supported, stopped",
        3: "backup power supported, running",
    },
}


def _describe(table: str, code: int) -> str:
    return _DESCRIPTIONS[table].get(code, f"unknown or reserved code 0x{code:02X}")


def describe_command(code: int) -> str:
    return _describe("Command", code)


def describe_hole_state(code: int) -> str:
    return _describe("HoleState", code)


def describe_popup_state(code: int) -> str:
    return _describe("PopupState", code)


def describe_return_state(code: int) -> str:
    return _describe("ReturnState", code)


def describe_solenoid_state(code: int) -> str:
    return _describe("SolenoidState", code)


def describe_backup_power(code: int) -> str:
    return _describe("BackupPower", code)
