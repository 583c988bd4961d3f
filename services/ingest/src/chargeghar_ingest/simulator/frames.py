"""Build the binary frames a cabinet sends from its state, with the shared codec's encoder."""

from __future__ import annotations

from chargeghar_protocol.codec import (
    BoardRecord,
    CabinetSnapshot,
    Heartbeat,
    HoleRecord,
    PopupByHoleResult,
    PopupBySnResult,
    ReturnReport,
    ReturnState,
    WifiScanList,
)
from chargeghar_protocol.codec.encode import encode_frame

from chargeghar_ingest.simulator.cabinet import (
    BOARD_HARDWARE_VERSION,
    BOARD_SOFTWARE_VERSION,
    CabinetState,
    EjectOutcome,
    Slot,
)

__all__ = [
    "heartbeat",
    "hole_record",
    "popup_by_hole_result",
    "popup_by_sn_result",
    "return_report",
    "snapshot",
    "snapshot_frame_object",
    "wifi_scan",
]

# Backup-power status reported in heartbeats: "no backup-power support" (protocol.md §4.12.5).
BACKUP_POWER_UNSUPPORTED = 0


def hole_record(slot: Slot) -> HoleRecord:
    reading = slot.hole_bytes()
    return HoleRecord(
        hole=slot.hole,
        state=int(slot.state),
        bank_current_raw=0,
        bank_voltage_raw=reading.battery_voltage,
        area=reading.area,
        sn_int=reading.sn,
        soc_byte=reading.soc,
        temp_byte=reading.temperature_c,
        charge_voltage_byte=reading.charge_voltage_dv,
        charge_current_byte=reading.charge_current_da,
        soft_version=reading.software_version,
        sensor=reading.sensor,
    )


def snapshot_frame_object(state: CabinetState) -> CabinetSnapshot:
    boards = tuple(
        BoardRecord(
            address=board.address,
            reserved1=board.marker[0],
            reserved2=board.marker[1],
            temp=0,
            soft_version=BOARD_SOFTWARE_VERSION,
            hard_version=BOARD_HARDWARE_VERSION,
        )
        for board in state.boards
    )
    holes = tuple(hole_record(state.slots[hole]) for board in state.boards for hole in board.holes)
    return CabinetSnapshot(
        boards=boards, holes=holes, holes_per_board=tuple(len(board.holes) for board in state.boards)
    )


def snapshot(state: CabinetState) -> bytes:
    """The 0x10 frame of the cabinet's current state (check reply and periodic upload body)."""
    return encode_frame(snapshot_frame_object(state))


def heartbeat(state: CabinetState, csq: int) -> bytes:
    board = state.boards[0].address
    return encode_frame(Heartbeat(board=board, text=f"CSQ:{csq};BP:{BACKUP_POWER_UNSUPPORTED}"))


def popup_by_sn_result(outcome: EjectOutcome) -> bytes:
    return encode_frame(
        PopupBySnResult(
            hole=outcome.hole, sn_int=outcome.sn, state=int(outcome.state), solenoid=outcome.solenoid
        )
    )


def popup_by_hole_result(outcome: EjectOutcome) -> bytes:
    return encode_frame(
        PopupByHoleResult(
            board=outcome.board_address,
            hole=outcome.hole,
            state=int(outcome.state),
            solenoid=outcome.solenoid,
        )
    )


def return_report(slot: Slot, state: ReturnState = ReturnState.SUCCESS) -> bytes:
    """The 15-byte 0x40 frame for the bank now in ``slot``."""
    bank = slot.bank
    if bank is None:
        raise ValueError(f"slot {slot.hole} holds no bank to report as returned")
    return encode_frame(
        ReturnReport(
            board=slot.board_address,
            hole=slot.hole,
            area=bank.area,
            sn_int=bank.sn,
            state=int(state),
            soft_version=bank.software_version,
            soc_byte=bank.soc,
        )
    )


def wifi_scan(ssids: list[str]) -> bytes:
    text = "[" + ",".join(f'"{ssid}"' for ssid in ssids) + "]"
    return encode_frame(WifiScanList(payload=text.encode("ascii")))
