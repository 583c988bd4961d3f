"""Typed, immutable frame objects for every binary frame of protocol.md §4.

Design notes:
* Fields hold the wire values (so `decode_frame(encode_frame(f)) == f` is exact); derived views such as
  `sn` (decimal string), `soc` (0xFF → None) or `charge_voltage` (volts) are properties.
* The per-slot records (`BoardRecord`, `HoleRecord`) are NamedTuples: a 24-slot cabinet decodes into 24
  of them on the hot path, and building a tuple straight from `struct.iter_unpack` output is several
  times cheaper than a frozen dataclass `__init__`. They are still immutable and typed.
* The frame objects themselves are frozen, slotted dataclasses, one per command.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from chargeghar_protocol.codec.enums import (
    BackupPower,
    Command,
    HoleState,
    PopupState,
    ReturnState,
    SensorBit,
    describe_hole_state,
    describe_popup_state,
    describe_return_state,
    describe_solenoid_state,
)

#: The "not available" value of one-byte measurements (SOC, temperature, charging V/I).
UNAVAILABLE_BYTE = 0xFF
#: Board-record bytes 1–2 both 0xFF: the marker that switches board counting to ceil (§4.1.3).
FF_MARKER = 0xFF
#: Board-record byte 2 values that do NOT carry an area-code high byte (§4.1.4).
AREA_PREFIX_NEUTRAL = frozenset({0x00, 0x0B, 0xFF})


def _measured(raw: int | None) -> int | None:
    return None if raw is None or raw == UNAVAILABLE_BYTE else raw


def _tenths(raw: int | None) -> float | None:
    return None if raw is None or raw == UNAVAILABLE_BYTE else raw / 10


def sn_to_str(sn_int: int) -> str:
    """Unsigned decimal rendering (§4.3); "0" means no bank."""
    return str(sn_int)


def sn_from_str(sn: str) -> int:
    """Parse a decimal SN string into the wire uint32; raises ValueError when not 0…4294967295."""
    if not sn.isascii() or not sn.isdigit():
        raise ValueError(f"SN must be decimal digits, got {sn!r}")
    value = int(sn)
    if value > 0xFFFFFFFF:
        raise ValueError(f"SN {sn} does not fit in 32 bits")
    return value


# ---------------------------------------------------------------------------------------------------
# Records inside a 0x10 cabinet snapshot
# ---------------------------------------------------------------------------------------------------


class BankMeasurements:
    """Derived views of the bank bytes that a hole record (0x10) and a slot report (0x28) share.

    The raw wire bytes stay the fields (so ``decode(encode(f)) == f``); these properties give the values
    with 0xFF read as "unavailable" (None) and the 0.1-unit charging bytes also in volts/amperes.
    """

    __slots__ = ()

    sn_int: int
    soc_byte: int
    temp_byte: int
    charge_voltage_byte: int
    charge_current_byte: int

    @property
    def sn(self) -> str:
        return str(self.sn_int)

    @property
    def has_bank(self) -> bool:
        return self.sn_int != 0

    @property
    def soc(self) -> int | None:
        return _measured(self.soc_byte)

    @property
    def temp(self) -> int | None:
        return _measured(self.temp_byte)

    @property
    def charge_voltage_raw(self) -> int | None:
        """Charging voltage in 0.1 V units, None when 0xFF."""
        return _measured(self.charge_voltage_byte)

    @property
    def charge_current_raw(self) -> int | None:
        """Charging current in 0.1 A units, None when 0xFF."""
        return _measured(self.charge_current_byte)

    @property
    def charge_voltage(self) -> float | None:
        """Charging voltage in volts."""
        return _tenths(self.charge_voltage_byte)

    @property
    def charge_current(self) -> float | None:
        """Charging current in amperes."""
        return _tenths(self.charge_current_byte)


class BoardRecord(NamedTuple):
    """Control-board record, 6 bytes (§4.1.1)."""

    address: int  # board address (0x01, 0x10, 0x1A…); "index" in Java and in JSON output
    reserved1: int  # "undefined1"; 0xFF with reserved2 = FF marker
    reserved2: int  # "undefined2"; area-code high byte when not 0x00/0x0B/0xFF (first board only)
    temp: int
    soft_version: int
    hard_version: int

    @property
    def has_ff_marker(self) -> bool:
        return self.reserved1 == FF_MARKER and self.reserved2 == FF_MARKER

    @property
    def io(self) -> int | None:
        """Java's `Pinboard.getIo()`: hex digits of the address read as decimal, // 50.

        None where Java throws (addresses with hex letters such as 0x1A, §10.15).
        """
        digits = f"{self.address:02X}"
        return int(digits) // 50 if digits.isdigit() else None


class _HoleFields(NamedTuple):
    """The 15 bytes of a hole record (§4.1.2), in wire order."""

    hole: int  # slot number printed on the cabinet; "index" in Java and in JSON output
    state: int  # HoleState code
    bank_current_raw: int  # byte 2, unit unknown (§11)
    bank_voltage_raw: int  # byte 3, unit unknown (§11)
    area: int  # area code; 16-bit when the area-code extension applies (§4.1.4)
    sn_int: int  # unsigned big-endian uint32; 0 = no bank
    soc_byte: int  # %, 0xFF = unavailable
    temp_byte: int  # °C, 0xFF = unavailable
    charge_voltage_byte: int  # 0.1 V, 0xFF = unavailable
    charge_current_byte: int  # 0.1 A, 0xFF = unavailable
    soft_version: int  # power-bank firmware version
    sensor: int  # bit 7 micro switch (set = empty), bit 6 solenoid


class HoleRecord(_HoleFields, BankMeasurements):
    """Hole (slot) record, 15 bytes (§4.1.2); field order is wire order."""

    __slots__ = ()

    @property
    def bank_sn(self) -> str | None:
        return str(self.sn_int) if self.sn_int else None

    @property
    def micro_switch(self) -> bool:
        return bool(self.sensor & SensorBit.MICRO_SWITCH)

    @property
    def solenoid_switch(self) -> bool:
        return bool(self.sensor & SensorBit.SOLENOID_SWITCH)

    @property
    def hole_state(self) -> HoleState | None:
        return HoleState.lookup(self.state)

    @property
    def state_description(self) -> str:
        return describe_hole_state(self.state)


# ---------------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CabinetSnapshot:
    """cmd 0x10: every control board and every hole of the cabinet (§4.1).

    `holes` are sorted by hole index (as Java does); `holes_per_board` is the layout actually parsed, in
    wire order, so the encoder can rebuild the frame. `unconsumed_bytes` counts data bytes the layout
    left over (e.g. the second board of a "4+2" cabinet without the FF marker) — worth a log line.
    """

    cmd: ClassVar[int] = Command.CABINET_SNAPSHOT
    boards: tuple[BoardRecord, ...]
    holes: tuple[HoleRecord, ...]
    holes_per_board: tuple[int, ...]
    checksum_valid: bool = True
    unconsumed_bytes: int = 0

    @property
    def has_ff_marker(self) -> bool:
        return bool(self.boards) and self.boards[0].has_ff_marker

    @property
    def area_prefix(self) -> int | None:
        """High byte of the 16-bit area code when the area-code extension applies (§4.1.4)."""
        if self.boards and self.boards[0].reserved2 not in AREA_PREFIX_NEUTRAL:
            return self.boards[0].reserved2
        return None

    @property
    def slot_count(self) -> int:
        return len(self.holes)

    def find_hole(self, hole: int) -> HoleRecord | None:
        for record in self.holes:
            if record.hole == hole:
                return record
        return None


@dataclass(frozen=True, slots=True)
class PopupByHoleResult:
    """cmd 0x21, 9 bytes (§4.5)."""

    cmd: ClassVar[int] = Command.POPUP_BY_HOLE_RESULT
    board: int
    hole: int
    state: int  # PopupState code
    solenoid: int  # SolenoidState code
    checksum_valid: bool = True

    @property
    def succeeded(self) -> bool:
        return self.state == PopupState.SUCCESS

    @property
    def state_description(self) -> str:
        return describe_popup_state(self.state)

    @property
    def solenoid_description(self) -> str:
        return describe_solenoid_state(self.solenoid)


@dataclass(frozen=True, slots=True)
class PopupBySnResult:
    """cmd 0x31, 12 bytes (§4.6). Byte 4 is the hole (VOL), not the board (Java naming)."""

    cmd: ClassVar[int] = Command.POPUP_BY_SN_RESULT
    hole: int
    sn_int: int
    state: int  # PopupState code
    solenoid: int  # SolenoidState code (TPA: reserved)
    checksum_valid: bool = True

    @property
    def sn(self) -> str:
        return str(self.sn_int)

    @property
    def has_bank(self) -> bool:
        return self.sn_int != 0

    @property
    def succeeded(self) -> bool:
        return self.state == PopupState.SUCCESS

    @property
    def state_description(self) -> str:
        return describe_popup_state(self.state)

    @property
    def solenoid_description(self) -> str:
        return describe_solenoid_state(self.solenoid)


@dataclass(frozen=True, slots=True)
class ReturnReport:
    """cmd 0x40, 15 bytes, or the 14-byte legacy variant without SOC (`soc_byte is None`) (§4.7)."""

    cmd: ClassVar[int] = Command.RETURN_REPORT
    board: int
    hole: int
    area: int
    sn_int: int
    state: int  # ReturnState code
    soft_version: int  # 0x00 = no bank
    soc_byte: int | None  # None = 14-byte variant; 0xFF = unavailable
    checksum_valid: bool = True

    @property
    def sn(self) -> str:
        return str(self.sn_int)

    @property
    def has_bank(self) -> bool:
        return self.sn_int != 0

    @property
    def soc(self) -> int | None:
        return _measured(self.soc_byte)

    @property
    def is_legacy_variant(self) -> bool:
        return self.soc_byte is None

    @property
    def succeeded(self) -> bool:
        return self.state == ReturnState.SUCCESS

    @property
    def state_description(self) -> str:
        return describe_return_state(self.state)


@dataclass(frozen=True, slots=True)
class SlotStateReport(BankMeasurements):
    """cmd 0x28 "return-fix" / slot self-test, 21 bytes (§4.8)."""

    cmd: ClassVar[int] = Command.SLOT_STATE_REPORT
    board: int
    hole: int
    state: int  # ReturnState code
    reserved1: int
    reserved2: int
    area: int
    sn_int: int
    soc_byte: int
    temp_byte: int
    charge_voltage_byte: int
    charge_current_byte: int
    soft_version: int
    hard_version: int
    checksum_valid: bool = True

    @property
    def succeeded(self) -> bool:
        return self.state == ReturnState.SUCCESS

    @property
    def state_description(self) -> str:
        return describe_return_state(self.state)


def _heartbeat_field(text: str, key: str) -> int | None:
    for part in text.split(";"):
        name, sep, value = part.partition(":")
        if sep and name.strip().upper() == key:
            value = value.strip()
            return int(value) if value.isascii() and value.isdigit() else None
    return None


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """cmd 0x7A: board address + ASCII text `CSQ:<n>;BP:<m>` (or a bare CSQ number) (§4.9)."""

    cmd: ClassVar[int] = Command.HEARTBEAT
    board: int
    text: str  # ASCII only
    checksum_valid: bool = True

    @property
    def csq(self) -> int | None:
        """Modem signal quality 0–31, 99 = no network; None when absent or not a number."""
        stripped = self.text.strip()
        if stripped.isascii() and stripped.isdigit():
            return int(stripped)
        return _heartbeat_field(self.text, "CSQ")

    @property
    def bp(self) -> int | None:
        """Backup-power status code (BackupPower), None when absent."""
        return _heartbeat_field(self.text, "BP")

    @property
    def backup_power(self) -> BackupPower | None:
        return None if self.bp is None else BackupPower.lookup(self.bp)


@dataclass(frozen=True, slots=True)
class WifiScanList:
    """cmd 0xCF: a JSON-array-like text of SSIDs, e.g. `["ssid1","ssid2"]` (§4.10)."""

    cmd: ClassVar[int] = Command.WIFI_SCAN_LIST
    payload: bytes  # kept as bytes: SSIDs need not be valid UTF-8
    checksum_valid: bool = True

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8", errors="replace")

    @property
    def ssids(self) -> tuple[str, ...]:
        """Java `ReceiveWifi` semantics: drop the brackets, split on commas, keep quoted items."""
        inner = self.text[1:-1]
        return tuple(
            item[1:-1] for item in inner.split(",") if len(item) >= 2 and item[0] == '"' and item[-1] == '"'
        )


@dataclass(frozen=True, slots=True)
class PopupByHoleRequest:
    """cmd 0x20, server → MCU over serial, 7 bytes (§4.11)."""

    cmd: ClassVar[int] = Command.POPUP_BY_HOLE_REQUEST
    board: int
    hole: int
    checksum_valid: bool = True


@dataclass(frozen=True, slots=True)
class PopupBySnRequest:
    """cmd 0x30, server → MCU over serial, 10 bytes (§4.11)."""

    cmd: ClassVar[int] = Command.POPUP_BY_SN_REQUEST
    board: int
    sn_int: int
    checksum_valid: bool = True

    @property
    def sn(self) -> str:
        return str(self.sn_int)


Frame = (
    CabinetSnapshot
    | PopupByHoleResult
    | PopupBySnResult
    | ReturnReport
    | SlotStateReport
    | Heartbeat
    | WifiScanList
    | PopupByHoleRequest
    | PopupBySnRequest
)
"""Any decoded frame; dispatch with `isinstance` or on the class attribute `cmd`."""

__all__ = [
    "AREA_PREFIX_NEUTRAL",
    "FF_MARKER",
    "UNAVAILABLE_BYTE",
    "BoardRecord",
    "CabinetSnapshot",
    "Frame",
    "Heartbeat",
    "HoleRecord",
    "PopupByHoleRequest",
    "PopupByHoleResult",
    "PopupBySnRequest",
    "PopupBySnResult",
    "ReturnReport",
    "SlotStateReport",
    "WifiScanList",
    "sn_from_str",
    "sn_to_str",
]
