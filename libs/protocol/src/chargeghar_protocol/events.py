"""Decoded device frames → contract events (the ingest's translation step, pure functions).

The output of :func:`snapshot_to_full_event` is field for field what the legacy Java bridge sent for the
same frame (contract.md §2.1, protocol.md §8.2), minus its invented values: no hard-coded firmware version
(only what the caller learnt from the device), ``last_heartbeat`` = when the frame was received, and every
hole state mapped explicitly (the legacy bridge reported 0x03 and 0x07–0x0A as AVAILABLE).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from chargeghar_protocol.codec import (
    BoardRecord,
    CabinetSnapshot,
    Heartbeat,
    HoleRecord,
    HoleState,
    ReturnReport,
    ReturnState,
    SlotStateReport,
)
from chargeghar_protocol.codec.enums import describe_hole_state, describe_return_state
from chargeghar_protocol.contract import (
    DeviceHardwareInfo,
    DeviceInfo,
    FullEvent,
    Pinboard,
    PowerBankHardwareInfo,
    PowerBankSnapshot,
    PowerBankStatus,
    ReturnedEvent,
    ReturnEventInfo,
    ReturnFailedEvent,
    SlotEvent,
    SlotMetadata,
    SlotSnapshot,
    SlotStatus,
    StationInfo,
    StationStatus,
    StatusDeviceInfo,
    StatusEvent,
)

__all__ = [
    "HOLE_STATE_STATUSES",
    "PROTOCOL_VERSION",
    "HoleStatus",
    "heartbeat_to_status_event",
    "is_successful_return",
    "map_hole_state",
    "map_slot_report_state",
    "normalize_signal",
    "pinboard_io",
    "return_to_failed_event",
    "return_to_returned_event",
    "slot_report_to_slot_event",
    "snapshot_to_full_event",
]

PROTOCOL_VERSION = "0xA8"
"""The frame head byte; the one ``hardware_info`` value the legacy bridge sent that the device does send."""


# --------------------------------------------------------------------------- hole state → statuses

_S = SlotStatus
_B = PowerBankStatus

# protocol.md §4.12.1, decided explicitly for every code (contract.md §2.1):
# * a slot is usable only when empty (0x00) or healthy (0x01); every fault makes it ERROR, so core neither
#   rents from it nor expects returns into it until a later snapshot shows it healthy;
# * a bank becomes DAMAGED when the latch was forced (0x05, 0x06) and MAINTENANCE when it needs a look but
#   is not known to be broken (0x02, 0x03 communication, 0x04 stuck, 0x08 anti-theft, 0x09 Type-C short,
#   0x0A failed return) — the legacy bridge left 0x03 and 0x07-0x0A rentable;
# * reserved/undocumented codes are treated like faults, never as AVAILABLE.
HOLE_STATE_STATUSES: Mapping[int, tuple[SlotStatus, PowerBankStatus | None]] = {
    HoleState.NO_BANK: (_S.AVAILABLE, None),
    HoleState.NORMAL: (_S.OCCUPIED, _B.AVAILABLE),
    HoleState.CHARGING_ABNORMAL: (_S.ERROR, _B.MAINTENANCE),
    HoleState.COMMUNICATION_ERROR: (_S.ERROR, _B.MAINTENANCE),
    HoleState.STUCK: (_S.ERROR, _B.MAINTENANCE),
    HoleState.FORCIBLY_RELEASED: (_S.ERROR, _B.DAMAGED),
    HoleState.SOLENOID_NOT_RETURNED: (_S.ERROR, _B.DAMAGED),
    HoleState.RESERVED_07: (_S.ERROR, _B.MAINTENANCE),
    HoleState.ANTI_THEFT_COMM_FAILED: (_S.ERROR, _B.MAINTENANCE),
    HoleState.TYPE_C_SHORT_CIRCUIT: (_S.ERROR, _B.MAINTENANCE),
    HoleState.RETURN_FAILED_NOT_EJECTED: (_S.ERROR, _B.MAINTENANCE),
}
_UNKNOWN_STATE_STATUSES: tuple[SlotStatus, PowerBankStatus] = (_S.ERROR, _B.MAINTENANCE)


@dataclass(frozen=True, slots=True)
class HoleStatus:
    """What one hole record means for core: statuses plus the fault text for ``slot_metadata``."""

    slot_status: SlotStatus
    power_bank_status: PowerBankStatus | None  # None: no bank in the hole
    error_code: str | None = None  # "0x03"; None when healthy
    error_message: str | None = None


def map_hole_state(state: int, *, has_bank: bool) -> HoleStatus:
    """Statuses for a hole in ``state`` holding a bank (``has_bank``) or not.

    ``error_code`` is ``0x`` + two lowercase hex digits: identical to the legacy ``"0x0" + hex`` for every
    code below 0x10, and not the legacy's malformed ``"0x011"`` above it.
    """
    if state == HoleState.NO_BANK and has_bank:
        # Contradiction (empty state, yet an SN): keep the bank out of rentals until a snapshot agrees.
        return HoleStatus(_S.ERROR, _B.MAINTENANCE, "0x00", "power bank present in a hole reported empty")
    slot_status, bank_status = HOLE_STATE_STATUSES.get(state, _UNKNOWN_STATE_STATUSES)
    is_fault = state not in (HoleState.NO_BANK, HoleState.NORMAL)
    return HoleStatus(
        slot_status=slot_status,
        power_bank_status=bank_status if has_bank else None,
        error_code=f"0x{state:02x}" if is_fault else None,
        error_message=describe_hole_state(state) if is_fault else None,
    )


def map_slot_report_state(state: int, *, has_bank: bool) -> tuple[SlotStatus, PowerBankStatus | None]:
    """Statuses for a 0x28 slot report, whose state uses the *return* vocabulary (§4.12.3).

    Success with a bank = a healthy occupied slot; any failure code puts the slot in ERROR (and its bank,
    if any, in MAINTENANCE) until the next full snapshot says otherwise.
    """
    if state == ReturnState.SUCCESS:
        return _S.OCCUPIED, (_B.AVAILABLE if has_bank else None)
    return _S.ERROR, (_B.MAINTENANCE if has_bank else None)


# --------------------------------------------------------------------------- small conversions


def normalize_signal(signal: str | None) -> str | None:
    """The upload's ``signal`` parameter as the legacy ``signal_strength``: ``"CSQ:31"`` → ``"31"``.

    A missing or empty value is None (omitted from the event): the legacy controller's default "0" would
    overwrite the real signal the heartbeat reported.
    """
    if signal is None:
        return None
    text = signal.strip()
    for prefix in ("CSQ:", "RSSI:"):
        if text.upper().startswith(prefix):
            text = text[len(prefix) :].strip()
            break
    return text or None


def pinboard_io(board: BoardRecord) -> int:
    """Java's ``Pinboard.getIo()`` (address hex digits read as decimal, // 50), defined for every address.

    Java throws for addresses with hex letters (0x1A, §10.15); here each nibble counts as one "decimal"
    digit (0x1A → 1·10 + 10 = 20 → io 0), which equals Java's value wherever Java has one.
    """
    java_io = board.io
    if java_io is not None:
        return java_io
    return ((board.address >> 4) * 10 + (board.address & 0x0F)) // 50


def _switch_flag(is_set: bool) -> str:
    return "1" if is_set else "0"


def _utc(moment: datetime) -> datetime:
    # Same rule as the contract's UtcDatetime: a naive time is UTC, never the host's local zone.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _epoch_seconds(moment: datetime) -> int:
    return int(moment.timestamp())


# --------------------------------------------------------------------------- 0x10 → full


def _slot_snapshot(hole: HoleRecord, status: HoleStatus, received_at: datetime) -> SlotSnapshot:
    return SlotSnapshot(
        slot_number=hole.hole,
        status=status.slot_status,
        # An empty hole has no battery (0); a bank's 0xFF ("unknown") stays unknown (None, omitted), so it
        # never overwrites the level core knows.
        battery_level=hole.soc if hole.has_bank else 0,
        power_bank_serial=hole.bank_sn,
        slot_metadata=SlotMetadata(
            micro_switch=_switch_flag(hole.micro_switch),
            solenoid_valve=_switch_flag(hole.solenoid_switch),
            lock_count=0,
            last_updated=received_at,
            error_code=status.error_code,
            error_message=status.error_message,
        ),
    )


def _power_bank_snapshot(hole: HoleRecord, bank_status: PowerBankStatus, serial: str) -> PowerBankSnapshot:
    return PowerBankSnapshot(
        serial_number=serial,
        status=bank_status,
        battery_level=hole.soc,  # None when the device says 0xFF
        current_slot=hole.hole,
        hardware_info=PowerBankHardwareInfo(
            temperature=hole.temp,  # None (omitted) when the device says 0xFF, instead of a made-up 0
            voltage=hole.charge_voltage_raw,
            current=hole.charge_current_raw,
            soft_version=hole.soft_version,
            hard_version=hole.sensor,  # legacy field name for the sensor byte (§10.16), kept for peers
            micro_switch=_switch_flag(hole.micro_switch),
            solenoid_valve=_switch_flag(hole.solenoid_switch),
            area_code=hole.area,
        ),
    )


def snapshot_to_full_event(
    snapshot: CabinetSnapshot,
    *,
    imei: str,
    signal: str | None = None,
    wifi_ssid: str | None = None,
    received_at: datetime,
    firmware_version: str | None = None,
    event_id: str | None = None,
) -> FullEvent:
    """A ``type="full"`` event for a 0x10 frame (HTTP upload body or MQTT check reply).

    ``received_at`` (timezone-aware) is when the ingest received the frame: it is the event's
    ``timestamp``, ``observed_at``, ``device.last_heartbeat`` and every slot's ``last_updated``.
    """
    received_at = _utc(received_at)
    slots: list[SlotSnapshot] = []
    power_banks: list[PowerBankSnapshot] = []
    for hole in sorted(snapshot.holes, key=lambda record: record.hole):
        status = map_hole_state(hole.state, has_bank=hole.has_bank)
        slots.append(_slot_snapshot(hole, status, received_at))
        if hole.bank_sn is not None and status.power_bank_status is not None:
            power_banks.append(_power_bank_snapshot(hole, status.power_bank_status, hole.bank_sn))

    return FullEvent(
        timestamp=_epoch_seconds(received_at),
        device=DeviceInfo(
            serial_number=imei,
            imei=imei,
            signal_strength=normalize_signal(signal),
            wifi_ssid=wifi_ssid or "",
            last_heartbeat=received_at,
            status=StationStatus.ONLINE,  # it just talked to us
            hardware_info=DeviceHardwareInfo(
                firmware_version=firmware_version,
                protocol_version=PROTOCOL_VERSION,
            ),
        ),
        station=StationInfo(
            serial_number=imei,
            total_slots=len(slots),
            pinboards=[
                Pinboard(
                    index=board.address,
                    io=pinboard_io(board),
                    temperature=board.temp,
                    soft_version=board.soft_version,
                    hard_version=board.hard_version,
                )
                for board in snapshot.boards
            ],
        ),
        slots=slots,
        power_banks=power_banks,
        event_id=event_id,
        observed_at=received_at,
    )


# --------------------------------------------------------------------------- 0x40 → returned


def is_successful_return(report: ReturnReport) -> bool:
    """Only state 0x01 with a real SN is a return; every other 0x40 is a failed insertion attempt."""
    return report.state == ReturnState.SUCCESS and report.has_bank


def return_to_returned_event(
    report: ReturnReport,
    *,
    imei: str,
    received_at: datetime,
    event_id: str | None = None,
) -> ReturnedEvent:
    """A ``type="returned"`` event for a 0x40 frame; check :func:`is_successful_return` first.

    ``battery_level`` is the frame's own SOC byte (absent in the 14-byte variant or when 0xFF), not the
    stale cached value the legacy bridge sent.
    """
    received_at = _utc(received_at)
    if not report.has_bank:
        raise ValueError("a return report without a power bank serial cannot become a returned event")
    return ReturnedEvent(
        timestamp=_epoch_seconds(received_at),
        device=DeviceInfo(serial_number=imei, imei=imei, last_heartbeat=received_at),
        return_event=ReturnEventInfo(
            power_bank_serial=report.sn,
            slot_number=report.hole,
            battery_level=report.soc,
            returned_at=received_at,
            condition="NORMAL",
            hardware_info={
                "soft_version": report.soft_version,
                "area_code": report.area,
                "control_index": report.board,
                "return_state": report.state,
            },
            source="mqtt",
        ),
        event_id=event_id,
        observed_at=received_at,
    )


def return_to_failed_event(
    report: ReturnReport,
    *,
    imei: str,
    received_at: datetime,
    event_id: str | None = None,
) -> ReturnFailedEvent:
    """A ``type="return_failed"`` event for a 0x40 frame that is not a successful return."""
    received_at = _utc(received_at)
    known_state = ReturnState.lookup(report.state)
    return ReturnFailedEvent(
        timestamp=_epoch_seconds(received_at),
        device=DeviceInfo(serial_number=imei, imei=imei, last_heartbeat=received_at),
        slot_number=report.hole,
        control_index=report.board,
        state_code=report.state,
        state_name=known_state.name if known_state is not None else f"UNKNOWN_0x{report.state:02x}",
        state_description=describe_return_state(report.state),
        power_bank_serial=report.sn if report.has_bank else None,
        battery_level=report.soc,
        soft_version=report.soft_version,
        area_code=report.area,
        event_id=event_id,
        observed_at=received_at,
    )


# --------------------------------------------------------------------------- 0x28 → slot_event


def slot_report_to_slot_event(
    report: SlotStateReport,
    *,
    imei: str,
    received_at: datetime,
    event_id: str | None = None,
) -> SlotEvent:
    """A ``type="slot_event"`` for a 0x28 return self-test / slot-state change frame."""
    received_at = _utc(received_at)
    slot_status, bank_status = map_slot_report_state(report.state, has_bank=report.has_bank)
    known_state = ReturnState.lookup(report.state)
    return SlotEvent(
        timestamp=_epoch_seconds(received_at),
        device=DeviceInfo(serial_number=imei, imei=imei, last_heartbeat=received_at),
        slot_number=report.hole,
        control_index=report.board,
        state_code=report.state,
        state_name=known_state.name if known_state is not None else f"UNKNOWN_0x{report.state:02x}",
        state_description=describe_return_state(report.state),
        slot_status=slot_status,
        power_bank_serial=report.sn if report.has_bank else None,
        power_bank_status=bank_status,
        battery_level=report.soc,
        temperature=report.temp,
        voltage=report.charge_voltage_raw,
        current=report.charge_current_raw,
        soft_version=report.soft_version,
        hard_version=report.hard_version,
        area_code=report.area,
        event_id=event_id,
        observed_at=received_at,
    )


# --------------------------------------------------------------------------- 0x7A → status


def heartbeat_to_status_event(
    heartbeat: Heartbeat,
    *,
    imei: str,
    received_at: datetime,
    event_id: str | None = None,
) -> StatusEvent:
    """A ``type="status"`` ONLINE event carrying the heartbeat's signal (CSQ) and backup-power state."""
    received_at = _utc(received_at)
    return StatusEvent(
        timestamp=_epoch_seconds(received_at),
        device=StatusDeviceInfo(
            serial_number=imei,
            imei=imei,
            status=StationStatus.ONLINE,
            last_heartbeat=received_at,
            hardware_info=DeviceHardwareInfo(signal_strength=heartbeat.csq, backup_power=heartbeat.bp),
        ),
        event_id=event_id,
        observed_at=received_at,
    )
