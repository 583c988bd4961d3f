"""The state of one virtual cabinet: boards, slots and the power banks in them (no I/O).

The board layouts mirror real cabinets so that the decoder's layout inference (protocol.md §4.1.3) is
exercised the way real uploads exercise it: 4, 6 and 8 slots are one board, 12 slots are the "4 + 8"
cabinet with the FF FF marker, larger cabinets are stacks of 6-, 8-, 5- or 4-hole boards.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from chargeghar_protocol.codec.enums import HoleState, PopupState, SolenoidState

__all__ = [
    "BoardLayout",
    "CabinetState",
    "EjectOutcome",
    "NoFreeSlot",
    "PowerBank",
    "SimulatorStateError",
    "Slot",
    "SlotOccupied",
    "UnsupportedSlotCount",
    "board_layouts",
]

# Board addresses as real cabinets use them: two hex digits without letters, so Pinboard.getIo() works.
_BOARD_ADDRESSES = (0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90)
_SMALL_BOARD_SIZES = {2: (2,), 3: (3,), 4: (4,), 5: (5,), 6: (6,), 8: (8,), 12: (4, 8)}
# Boards tried for larger cabinets, in an order that the layout inference recovers unambiguously.
_STACKED_BOARD_SIZES = (6, 8, 5, 4)
_FF_MARKER = (0xFF, 0xFF)
_PLAIN_MARKER = (0x00, 0x00)

BANK_SOFTWARE_VERSION = 0x19
BOARD_SOFTWARE_VERSION = 0x04
BOARD_HARDWARE_VERSION = 0x0F
SENSOR_EMPTY = 0x80
SENSOR_OCCUPIED = 0x00
EMPTY_SLOT_TEMPERATURE_C = 1  # what the ChargeGhar station reports for an empty hole (protocol.md §4.2)
CHARGE_VOLTAGE_DV = 50  # 5.0 V in 0.1 V units
FULL_CHARGE_SECONDS = 3 * 3600.0  # simulated time from empty to full


SOLENOID_NORMAL_POPUP = int(SolenoidState.NORMAL_POPUP)
SOLENOID_JAMMED = int(SolenoidState.JAMMED)


class SimulatorStateError(Exception):
    """An operation does not fit the cabinet's current state."""


class UnsupportedSlotCount(SimulatorStateError, ValueError):
    def __init__(self, slots: int) -> None:
        super().__init__(f"no real cabinet layout has {slots} slots")


class SlotOccupied(SimulatorStateError):
    def __init__(self, hole: int) -> None:
        super().__init__(f"slot {hole} already holds a power bank")


class NoFreeSlot(SimulatorStateError):
    def __init__(self) -> None:
        super().__init__("every slot holds a power bank")


@dataclass(frozen=True)
class BoardLayout:
    """One control board: its address, the global hole numbers it carries and its reserved bytes 1–2."""

    address: int
    holes: tuple[int, ...]
    marker: tuple[int, int] = _PLAIN_MARKER


def board_layouts(slot_count: int) -> tuple[BoardLayout, ...]:
    """Real-cabinet board layout for ``slot_count`` slots, holes numbered 1…N across the boards."""
    sizes = _board_sizes(slot_count)
    if len(sizes) > len(_BOARD_ADDRESSES):
        raise UnsupportedSlotCount(slot_count)
    marker = _FF_MARKER if slot_count == 12 else _PLAIN_MARKER
    layouts: list[BoardLayout] = []
    next_hole = 1
    for index, size in enumerate(sizes):
        holes = tuple(range(next_hole, next_hole + size))
        next_hole += size
        # Only the first board's bytes 1–2 are looked at by the decoder; later boards stay plain.
        layouts.append(BoardLayout(_BOARD_ADDRESSES[index], holes, marker if index == 0 else _PLAIN_MARKER))
    return tuple(layouts)


def _board_sizes(slot_count: int) -> tuple[int, ...]:
    if slot_count in _SMALL_BOARD_SIZES:
        return _SMALL_BOARD_SIZES[slot_count]
    for size in _STACKED_BOARD_SIZES:
        if slot_count > size and slot_count % size == 0:
            return (size,) * (slot_count // size)
    raise UnsupportedSlotCount(slot_count)


@dataclass
class PowerBank:
    sn: int
    charge: float  # state of charge in percent, kept fractional so slow charging accumulates
    temperature_c: int = 26
    software_version: int = BANK_SOFTWARE_VERSION
    area: int = 0x49

    @property
    def soc(self) -> int:
        return max(0, min(100, int(self.charge)))


@dataclass
class Slot:
    hole: int
    board_address: int
    bank: PowerBank | None = None
    # A hole state forced by fault injection (e.g. STUCK); None = derived from occupancy.
    forced_state: HoleState | None = None

    @property
    def state(self) -> HoleState:
        if self.forced_state is not None:
            return self.forced_state
        return HoleState.NORMAL if self.bank is not None else HoleState.NO_BANK

    @property
    def is_charging(self) -> bool:
        return self.bank is not None and self.bank.soc < 100 and self.state == HoleState.NORMAL

    def hole_bytes(self) -> HoleReading:
        """The measured values a 0x10 hole record carries for this slot (protocol.md §4.1.2)."""
        bank = self.bank
        if bank is None:
            return HoleReading(
                battery_voltage=0, area=0, sn=0, soc=0, temperature_c=EMPTY_SLOT_TEMPERATURE_C,
                charge_voltage_dv=0, charge_current_da=0, software_version=0, sensor=SENSOR_EMPTY,
            )  # fmt: skip
        charging = self.is_charging
        return HoleReading(
            # The raw "batteryVol" byte loosely tracks SOC in real uploads: 0xB6 at 26 %, 0xF1 at 100 %.
            battery_voltage=min(0xF1, 0xA0 + (bank.soc * 81) // 100),
            area=bank.area,
            sn=bank.sn,
            soc=bank.soc,
            temperature_c=bank.temperature_c,
            charge_voltage_dv=CHARGE_VOLTAGE_DV if charging else 0,
            # Charging current tapers as the bank fills: 2.0 A when empty, 0.2 A near full.
            charge_current_da=max(2, 20 - bank.soc * 18 // 100) if charging else 0,
            software_version=bank.software_version,
            sensor=SENSOR_OCCUPIED,
        )


@dataclass(frozen=True)
class HoleReading:
    battery_voltage: int
    area: int
    sn: int
    soc: int
    temperature_c: int
    charge_voltage_dv: int
    charge_current_da: int
    software_version: int
    sensor: int


@dataclass(frozen=True)
class EjectOutcome:
    """What a pop-up did: the reply fields of a 0x21 / 0x31 frame, plus the bank that left (if any)."""

    board_address: int
    hole: int
    sn: int
    state: PopupState
    solenoid: int
    bank: PowerBank | None

    @property
    def ejected(self) -> bool:
        return self.bank is not None


@dataclass
class CabinetState:
    """Slots and banks of one cabinet; every mutation is synchronous and immediately visible."""

    boards: tuple[BoardLayout, ...]
    slots: dict[int, Slot] = field(default_factory=dict)

    @classmethod
    def empty(cls, slot_count: int) -> CabinetState:
        boards = board_layouts(slot_count)
        slots = {hole: Slot(hole, board.address) for board in boards for hole in board.holes}
        return cls(boards=boards, slots=slots)

    @property
    def slot_count(self) -> int:
        return len(self.slots)

    def banks(self) -> dict[int, PowerBank]:
        """SN → bank for every bank currently in a slot."""
        return {slot.bank.sn: slot.bank for slot in self.slots.values() if slot.bank is not None}

    def fill(self, rng: random.Random, sns: list[int], *, min_soc: int = 20) -> None:
        """Put one bank per given SN into the lowest free slots, with random charge and temperature."""
        free = iter(self.free_holes())
        for sn in sns:
            hole = next(free, None)
            if hole is None:
                raise NoFreeSlot()
            self.slots[hole].bank = PowerBank(
                sn=sn, charge=float(rng.randint(min_soc, 100)), temperature_c=rng.randint(22, 34)
            )

    def free_holes(self) -> list[int]:
        return [hole for hole, slot in sorted(self.slots.items()) if slot.bank is None]

    def slot_of(self, sn: int) -> Slot | None:
        for slot in self.slots.values():
            if slot.bank is not None and slot.bank.sn == sn:
                return slot
        return None

    def eject_by_sn(self, sn: int, *, fail: bool = False) -> EjectOutcome:
        """Pop the bank with this SN; ``fail`` simulates a jammed latch (the bank stays, state 0x00)."""
        slot = self.slot_of(sn)
        if slot is None:
            return EjectOutcome(0, 0, sn, PopupState.SN_NOT_FOUND, SOLENOID_NORMAL_POPUP, None)
        return self._eject(slot, fail=fail)

    def eject_by_hole(self, hole: int, *, fail: bool = False) -> EjectOutcome:
        slot = self.slots.get(hole)
        if slot is None:
            return EjectOutcome(0, hole, 0, PopupState.FAILED, SOLENOID_NORMAL_POPUP, None)
        if slot.bank is None:
            return EjectOutcome(slot.board_address, hole, 0, PopupState.FAILED, SOLENOID_NORMAL_POPUP, None)
        return self._eject(slot, fail=fail)

    def _eject(self, slot: Slot, *, fail: bool) -> EjectOutcome:
        bank = slot.bank
        assert bank is not None
        if fail or slot.state != HoleState.NORMAL:
            return EjectOutcome(
                slot.board_address, slot.hole, bank.sn, PopupState.FAILED, SOLENOID_JAMMED, None
            )
        slot.bank = None
        return EjectOutcome(
            slot.board_address, slot.hole, bank.sn, PopupState.SUCCESS, SOLENOID_NORMAL_POPUP, bank
        )

    def insert(self, bank: PowerBank, hole: int | None = None) -> Slot:
        """Put a returned bank into ``hole`` (or the lowest free slot)."""
        if hole is None:
            free = self.free_holes()
            if not free:
                raise NoFreeSlot()
            hole = free[0]
        slot = self.slots.get(hole)
        if slot is None:
            raise SimulatorStateError(f"cabinet has no slot {hole}")
        if slot.bank is not None:
            raise SlotOccupied(hole)
        slot.bank = bank
        return slot

    def advance(self, simulated_seconds: float, rng: random.Random) -> None:
        """Charge every charging bank for ``simulated_seconds`` and let temperatures drift a little."""
        gain = 100.0 * simulated_seconds / FULL_CHARGE_SECONDS
        for slot in self.slots.values():
            bank = slot.bank
            if bank is None:
                continue
            if slot.is_charging:
                bank.charge = min(100.0, bank.charge + gain)
            bank.temperature_c = max(18, min(45, bank.temperature_c + rng.choice((-1, 0, 0, 1))))
