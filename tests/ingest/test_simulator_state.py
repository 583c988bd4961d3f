"""Simulator pieces without I/O: board layouts, frames built from state, IMEIs, fault plans, CLI config."""

from __future__ import annotations

import argparse
import random

import pytest
from chargeghar_ingest.simulator import frames
from chargeghar_ingest.simulator.cabinet import (
    CabinetState,
    NoFreeSlot,
    PowerBank,
    SlotOccupied,
    UnsupportedSlotCount,
    board_layouts,
)
from chargeghar_ingest.simulator.cli import build_fleet_config, register
from chargeghar_ingest.simulator.faults import Fault, FaultPlan, corrupt_checksum, truncate_frame
from chargeghar_ingest.simulator.fleet import Fleet, FleetConfig, generate_imeis, luhn_check_digit
from chargeghar_protocol.codec import (
    CabinetSnapshot,
    FrameError,
    HoleState,
    PopupBySnResult,
    PopupState,
    ReturnReport,
)
from chargeghar_protocol.codec.decode import decode_frame


@pytest.mark.parametrize(
    ("slots", "holes_per_board"),
    [
        (2, (2,)),
        (3, (3,)),
        (4, (4,)),
        (6, (6,)),
        (8, (8,)),
        (10, (5, 5)),
        (12, (4, 8)),
        (16, (8, 8)),
        (18, (6, 6, 6)),
        (24, (6, 6, 6, 6)),
        (32, (8, 8, 8, 8)),
        (48, (6,) * 8),
    ],
)
def test_layouts_decode_back_with_the_inferred_board_plan(
    slots: int, holes_per_board: tuple[int, ...]
) -> None:
    state = CabinetState.empty(slots)
    state.fill(random.Random(slots), list(range(10_000_001, 10_000_001 + slots // 2)))
    assert tuple(len(board.holes) for board in state.boards) == holes_per_board

    decoded = decode_frame(frames.snapshot(state))

    assert isinstance(decoded, CabinetSnapshot)
    assert decoded.checksum_valid
    assert decoded.unconsumed_bytes == 0
    assert [hole.hole for hole in decoded.holes] == list(range(1, slots + 1))
    for record in decoded.holes:
        slot = state.slots[record.hole]
        if slot.bank is None:
            assert (record.sn_int, record.state, record.sensor) == (0, HoleState.NO_BANK, 0x80)
        else:
            assert (record.sn_int, record.soc, record.temp, record.state) == (
                slot.bank.sn,
                slot.bank.soc,
                slot.bank.temperature_c,
                HoleState.NORMAL,
            )


def test_twelve_slot_cabinet_carries_the_ff_marker() -> None:
    layouts = board_layouts(12)
    assert layouts[0].marker == (0xFF, 0xFF)
    decoded = decode_frame(frames.snapshot(CabinetState.empty(12)))
    assert isinstance(decoded, CabinetSnapshot)
    assert decoded.has_ff_marker
    assert decoded.holes_per_board == (4, 8)


@pytest.mark.parametrize("slots", [0, 7, 11, 13, 1000])
def test_slot_counts_without_a_real_layout_are_refused(slots: int) -> None:
    with pytest.raises(UnsupportedSlotCount):
        board_layouts(slots)


def test_eject_by_sn_removes_the_bank_and_reports_its_hole() -> None:
    state = CabinetState.empty(8)
    state.fill(random.Random(1), [40818052, 40818053])
    outcome = state.eject_by_sn(40818053)
    assert outcome.state == PopupState.SUCCESS
    assert outcome.hole == 2
    assert outcome.bank is not None and outcome.bank.sn == 40818053
    assert state.slot_of(40818053) is None

    reply = decode_frame(frames.popup_by_sn_result(outcome))
    assert isinstance(reply, PopupBySnResult)
    assert (reply.hole, reply.sn_int, reply.succeeded) == (2, 40818053, True)


def test_eject_of_an_unknown_sn_or_a_jammed_latch_leaves_the_cabinet_as_it_was() -> None:
    state = CabinetState.empty(4)
    state.fill(random.Random(1), [40818052])
    missing = state.eject_by_sn(12345678)
    assert missing.state == PopupState.SN_NOT_FOUND and not missing.ejected
    jammed = state.eject_by_sn(40818052, fail=True)
    assert jammed.state == PopupState.FAILED and not jammed.ejected
    assert state.slot_of(40818052) is not None
    empty_hole = state.eject_by_hole(4)
    assert empty_hole.state == PopupState.FAILED


def test_insert_fills_the_lowest_free_slot_and_refuses_occupied_or_full() -> None:
    state = CabinetState.empty(2)
    slot = state.insert(PowerBank(sn=11111111, charge=40.0))
    assert slot.hole == 1
    with pytest.raises(SlotOccupied):
        state.insert(PowerBank(sn=22222222, charge=40.0), hole=1)
    state.insert(PowerBank(sn=22222222, charge=40.0))
    with pytest.raises(NoFreeSlot):
        state.insert(PowerBank(sn=33333333, charge=40.0))

    report = decode_frame(frames.return_report(slot))
    assert isinstance(report, ReturnReport)
    assert (report.hole, report.sn_int, report.soc, report.succeeded) == (1, 11111111, 40, True)


def test_charging_raises_soc_only_for_banks_in_normal_slots() -> None:
    state = CabinetState.empty(4)
    state.insert(PowerBank(sn=11111111, charge=50.0), hole=1)
    stuck = state.insert(PowerBank(sn=22222222, charge=50.0), hole=2)
    stuck.forced_state = HoleState.STUCK
    state.advance(3600.0, random.Random(0))  # one simulated hour = a third of a full charge
    assert state.slots[1].bank is not None and state.slots[1].bank.soc == 83
    assert stuck.bank is not None and stuck.bank.soc == 50


def test_imeis_are_fifteen_digits_with_a_valid_luhn_digit_and_distinct() -> None:
    imeis = generate_imeis(50, prefix="86460106", seed=7)
    assert len(set(imeis)) == 50
    for imei in imeis:
        assert len(imei) == 15 and imei.startswith("86460106")
        assert int(imei[-1]) == luhn_check_digit(imei[:-1])
    assert generate_imeis(50, prefix="86460106", seed=7) == imeis
    assert generate_imeis(50, prefix="86460106", seed=8) != imeis
    # A published IMEI with a known check digit (490154203237518).
    assert luhn_check_digit("49015420323751") == 8


def test_fleet_gives_every_cabinet_distinct_banks() -> None:
    fleet = Fleet(FleetConfig(stations=5, slots=8, fill_ratio=0.5, seed=3))
    sns = [sn for cabinet in fleet.cabinets for sn in cabinet.state.banks()]
    assert len(sns) == 20 and len(set(sns)) == 20
    assert all(10_000_000 <= sn <= 99_999_999 for sn in sns)


def test_frame_faults_damage_exactly_the_armed_number_of_frames() -> None:
    plan = FaultPlan()
    frame = frames.snapshot(CabinetState.empty(4))
    plan.arm(Fault.BAD_CHECKSUM)
    plan.arm(Fault.TRUNCATED_FRAME, times=2)
    damaged = plan.apply_frame_faults(frame)
    assert damaged == truncate_frame(corrupt_checksum(frame))
    assert plan.armed() == {Fault.TRUNCATED_FRAME: 1}
    assert decode_frame(corrupt_checksum(frame)).checksum_valid is False
    with pytest.raises(FrameError):
        decode_frame(truncate_frame(frame))
    with pytest.raises(ValueError):
        plan.arm(Fault.BAD_CHECKSUM, times=0)


def test_cli_flags_become_the_fleet_configuration() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(
        ["simulate", "--stations", "3", "--slots", "24", "--speed", "60", "--ingest-url", "http://x:1",
         "--topic-prefix", "/t1", "--auto-return-after", "30", "--duration", "5"]
    )  # fmt: skip
    config = build_fleet_config(args)
    assert (config.stations, config.slots, config.auto_return_after_s) == (3, 24, 1800.0)
    assert config.cabinet.speed == 60 and config.cabinet.topic_prefix == "/t1"
    assert config.cabinet.ingest_url == "http://x:1"
    # At speed 60 a heartbeat comes every ~9.5 s, so an echo is given at most ~8 s.
    assert config.cabinet.echo_timeout_s <= 9.0
    assert args.func.__name__ == "run_simulation"
