"""Decode throughput of a 24-slot 0x10 cabinet frame against a bare `struct.unpack_from` loop.

Run: `uv run python bench/bench_codec.py [--frames N] [--rounds R]`. Both loops read the same bytes in the
same process; the baseline unpacks the board and hole records and nothing else (no validation, no
checksum, no objects), so the ratio shows what the codec's checks and typed records cost. Runtime is
bounded (a few seconds with the defaults; hard stop after --budget seconds).
"""

from __future__ import annotations

import argparse
import platform
import struct
import sys
import time
from collections.abc import Callable

from chargeghar_protocol.codec import BoardRecord, CabinetSnapshot, HoleRecord, decode_frame, encode_frame

BOARDS = 4
HOLES_PER_BOARD = 6  # 4 × 6 = 24 slots; a uniform 6-hole layout is what the heuristic infers
BOARD = struct.Struct(">6B")
HOLE = struct.Struct(">5BI6B")


def build_frame() -> bytes:
    boards = tuple(BoardRecord(0x10 * (i + 1), 0x00, 0x00, 0, 0x6E, 0x6E) for i in range(BOARDS))
    holes = []
    for slot in range(1, BOARDS * HOLES_PER_BOARD + 1):
        occupied = slot % 3 != 0
        holes.append(
            HoleRecord(
                slot,
                1 if occupied else 0,
                0,
                0xE4 if occupied else 0,
                0x04 if occupied else 0,
                93198088 + slot if occupied else 0,
                95 if occupied else 0xFF,
                24 if occupied else 0xFF,
                50 if occupied else 0,
                2 if occupied else 0,
                0xCA if occupied else 0,
                0x00 if occupied else 0x80,
            )
        )
    snapshot = CabinetSnapshot(boards, tuple(holes), (HOLES_PER_BOARD,) * BOARDS)
    frame = encode_frame(snapshot)
    if decode_frame(frame) != snapshot:
        raise SystemExit("round trip failed: the benchmark frame does not decode to what was encoded")
    return frame


def bare_unpack(frame: bytes) -> int:
    """Baseline: unpack every board and hole record with unpack_from; no checks, no objects."""
    unpack_board = BOARD.unpack_from
    unpack_hole = HOLE.unpack_from
    block = BOARD.size + HOLE.size * HOLES_PER_BOARD
    fields = 0
    for board_offset in range(4, 4 + block * BOARDS, block):
        fields += len(unpack_board(frame, board_offset))
        for hole_offset in range(board_offset + BOARD.size, board_offset + block, HOLE.size):
            fields += len(unpack_hole(frame, hole_offset))
    return fields


def codec_decode(frame: bytes) -> int:
    snapshot = decode_frame(frame)
    assert isinstance(snapshot, CabinetSnapshot)
    return len(snapshot.holes)


def _time(func: Callable[[bytes], int], frame: bytes, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        func(frame)
    return time.perf_counter() - start


def frames_per_second(frame: bytes, count: int, rounds: int) -> tuple[float, float]:
    """Best-of-`rounds` rates of (bare, codec); the two loops alternate so that drift in machine load
    hits both alike."""
    best_bare = best_codec = float("inf")
    for _ in range(rounds):
        best_bare = min(best_bare, _time(bare_unpack, frame, count))
        best_codec = min(best_codec, _time(codec_decode, frame, count))
    return count / best_bare, count / best_codec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50_000, help="decodes per round (default 50000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, best one counts (default 5)")
    args = parser.parse_args(argv)
    frame = build_frame()

    # Calibrate so that the whole run stays well under 20 s even on a slow machine.
    probe_start = time.perf_counter()
    for _ in range(1000):
        codec_decode(frame)
    per_decode = (time.perf_counter() - probe_start) / 1000
    count = max(1000, min(args.frames, int(1.5 / max(per_decode, 1e-9))))

    bare, codec = frames_per_second(frame, count, args.rounds)
    ratio = 100 * codec / bare

    print(
        f"python {platform.python_version()} on {platform.machine()}; frame {len(frame)} bytes, "
        f"{BOARDS} boards x {HOLES_PER_BOARD} holes; {count} decodes x {args.rounds} rounds (best)"
    )
    print(f"{'loop':<32}{'frames/s':>14}{'us/frame':>11}{'% of bare':>11}")
    print(f"{'bare struct.unpack_from':<32}{bare:>14,.0f}{1e6 / bare:>11.2f}{100.0:>10.1f}%")
    print(f"{'decode_frame (CabinetSnapshot)':<32}{codec:>14,.0f}{1e6 / codec:>11.2f}{ratio:>10.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
