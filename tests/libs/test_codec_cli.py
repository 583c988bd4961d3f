"""`chargeghar decode`: one JSON object on stdout, exit status 2 with an error code for bad frames."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from chargeghar_protocol import cli
from chargeghar_protocol.codec import BoardRecord, CabinetSnapshot, HoleRecord, encode_frame


@pytest.fixture(autouse=True)
def protocol_commands_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test the protocol subcommands on their own: the services' `chargeghar.commands` entry points
    (other packages, loaded by `cli.build_parser`) are not what these tests are about."""
    monkeypatch.setattr(cli, "entry_points", lambda group: [])


def run_decode(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    status = cli.main(["decode", *args])
    out = capsys.readouterr().out
    assert out.count("\n") == 1, "exactly one JSON line"
    return status, json.loads(out)


def test_popup_by_sn_example_from_the_issue(capsys: pytest.CaptureFixture[str]) -> None:
    status, result = run_decode(capsys, "A8 00 0C 31 01 02 6E D5 80 01 02 52")
    assert status == 0
    assert {k: result[k] for k in ("cmd", "length", "checksum_valid", "hole", "sn", "state", "solenoid")} == {
        "cmd": 0x31,
        "length": 12,
        "checksum_valid": True,
        "hole": 1,
        "sn": "40818048",
        "state": 1,
        "solenoid": 2,
    }


def test_hex_split_over_several_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    status, result = run_decode(capsys, *"A8 00 09 21 10 01 01 02 1A".split())
    assert status == 0
    assert (result["cmd"], result["board"], result["hole"], result["state"]) == (0x21, 0x10, 1, 1)


def test_cabinet_snapshot_output(capsys: pytest.CaptureFixture[str]) -> None:
    frame = (
        "A8 00 47 10 01 04 00 00 04 0F 01 00 00 00 00 00 00 00 00 00 01 00 00 00 80 "
        "02 00 00 00 00 00 00 00 00 00 01 00 00 00 80 03 01 00 E4 49 02 6E D5 84 64 18 32 02 19 00 "
        "04 00 00 00 00 00 00 00 00 00 01 00 00 00 80 9C"
    )
    status, result = run_decode(capsys, frame)
    assert status == 0
    assert (result["cmd"], result["length"], result["checksum_valid"]) == (0x10, 71, True)
    assert {k: result["boards"][0][k] for k in ("index", "soft_version", "hard_version")} == {
        "index": 1,
        "soft_version": 4,
        "hard_version": 15,
    }
    hole3 = result["holes"][2]
    assert {k: hole3[k] for k in ("index", "state", "sn", "soc", "temp", "area")} == {
        "index": 3,
        "state": 1,
        "sn": "40818052",
        "soc": 100,
        "temp": 24,
        "area": 73,
    }
    assert hole3["charge_voltage"] == pytest.approx(5.0)
    assert hole3["charge_current"] == pytest.approx(0.2)
    assert (hole3["charge_voltage_raw"], hole3["charge_current_raw"]) == (50, 2)
    assert [hole["index"] for hole in result["holes"]] == [1, 2, 3, 4]
    assert result["holes"][0]["sn"] == "0"


def test_return_and_heartbeat_output(capsys: pytest.CaptureFixture[str]) -> None:
    status, returned = run_decode(capsys, "A8 00 0F 40 10 01 04 05 8E 17 08 01 CA 5F 18")
    assert status == 0
    assert {k: returned[k] for k in ("board", "hole", "area", "sn", "state", "soc")} == {
        "board": 0x10,
        "hole": 1,
        "area": 4,
        "sn": "93198088",
        "state": 1,
        "soc": 95,
    }
    status, beat = run_decode(capsys, "A8 00 11 7A 10 43 53 51 3A 32 37 3B 42 50 3A 30 FC")
    assert status == 0
    assert (beat["board"], beat["csq"], beat["bp"]) == (0x10, 27, 0)


def test_layout_option_decodes_a_four_plus_two_cabinet(capsys: pytest.CaptureFixture[str]) -> None:
    boards = (BoardRecord(1, 0, 0, 0, 4, 15), BoardRecord(2, 0, 0, 0, 4, 15))
    holes = tuple(HoleRecord(n, 1, 0, 0xE4, 4, 1000 + n, 90, 25, 50, 2, 25, 0) for n in range(1, 7))
    raw = encode_frame(CabinetSnapshot(boards, holes, (4, 2))).hex(" ")
    _, inferred = run_decode(capsys, raw)
    assert (inferred["holes_per_board"], inferred["unconsumed_bytes"]) == ([4], 36)
    status, overridden = run_decode(capsys, "--layout", "4+2", raw)
    assert status == 0
    assert overridden["holes_per_board"] == [4, 2]
    assert len(overridden["holes"]) == 6


def test_wrong_checksum_is_lenient_by_default_and_fatal_with_strict(
    capsys: pytest.CaptureFixture[str],
) -> None:
    frame = "A8 00 0C 31 60 00 9B D2 10 01 00 3B"
    status, lenient = run_decode(capsys, frame)
    assert (status, lenient["checksum_valid"], lenient["hole"], lenient["sn"]) == (0, False, 96, "10211856")
    status, strict = run_decode(capsys, "--strict", frame)
    assert status == 2
    assert strict["error"] == "BAD_CHECKSUM"
    assert strict["offset"] == 11


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["A8 00 09 21 10 01 01 02"], "LENGTH_MISMATCH"),
        (["A9 00 09 21 10 01 01 02 1A"], "BAD_HEAD"),
        (["A8 00"], "TOO_SHORT"),
        (["A8 00 06 99 00 B9"], "UNKNOWN_COMMAND"),
        (["not hex"], "BAD_HEX"),
        (["--layout", "lots", "A8 00 09 21 10 01 01 02 1A"], "UNPARSEABLE_LAYOUT"),
    ],
)
def test_bad_frames_exit_with_status_2_and_an_error_object(
    capsys: pytest.CaptureFixture[str], args: list[str], code: str
) -> None:
    status, result = run_decode(capsys, *args)
    assert status == 2
    assert result["error"] == code
    assert isinstance(result["message"], str) and result["message"]


def test_console_script_in_a_subprocess() -> None:
    """End to end through the real entry point (including the services' registered subcommands)."""
    ok = subprocess.run(
        [sys.executable, "-m", "chargeghar_protocol.cli", "decode", "A8 00 0C 31 01 02 6E D5 80 01 02 52"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    result = json.loads(ok.stdout)
    assert (result["cmd"], result["hole"], result["sn"], result["state"]) == (0x31, 1, "40818048", 1)

    bad = subprocess.run(
        [sys.executable, "-m", "chargeghar_protocol.cli", "decode", *"A8 00 09 21 10 01 01 02".split()],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert json.loads(bad.stdout)["error"] == "LENGTH_MISMATCH"
