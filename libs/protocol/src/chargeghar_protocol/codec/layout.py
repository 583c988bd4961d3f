"""How many boards and holes a 0x10 frame holds (§4.1.3).

The hole count is not transmitted. `infer_board_plan` reproduces the legacy Java heuristic
(`ReceiveUpload.getHole` + constructor) exactly, including its known blind spots (§10.20), so that a
cabinet parses the same way it always did. Stations whose layout the heuristic gets wrong can be given a
`BoardLayout` override instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from chargeghar_protocol.codec.errors import UnparseableLayoutError

BOARD_RECORD_SIZE = 6
HOLE_RECORD_SIZE = 15
#: Offsets of the first board's bytes 1–2 inside the data part.
FIRST_BOARD_RESERVED1 = 1
FIRST_BOARD_RESERVED2 = 2
#: Data offset checked by the 12-slot and "4+2" special cases: where a second board record starts when
#: the first board has 4 holes (6 + 4·15).
SECOND_BOARD_AFTER_FOUR = BOARD_RECORD_SIZE + 4 * HOLE_RECORD_SIZE
#: The order in which Java tries hole counts; the first that divides the data length wins.
_CANDIDATE_HOLE_COUNTS = (5, 6, 8, 4, 3)
_TWELVE_SLOT_DATA_SIZE = 192
_TWO_SLOT_BOARD_SIZE = BOARD_RECORD_SIZE + 2 * HOLE_RECORD_SIZE  # 36
#: The only data sizes at which data[66] influences the inference (12-slot FF case, "4+2" rule). For
#: every other size it is normalised to 0, which keeps the decoder's plan cache small and hot.
SIZES_READING_SECOND_BOARD = frozenset(
    {_TWELVE_SLOT_DATA_SIZE, 2 * (BOARD_RECORD_SIZE + 3 * HOLE_RECORD_SIZE)}
)

#: One planned board: (offset of its record inside the data part, number of hole records expected).
BoardPlan = tuple[tuple[int, int], ...]


def board_size(holes: int) -> int:
    return BOARD_RECORD_SIZE + HOLE_RECORD_SIZE * holes


@dataclass(frozen=True, slots=True)
class BoardLayout:
    """Per-station override: the number of holes behind each control board, in wire order."""

    holes_per_board: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.holes_per_board:
            raise UnparseableLayoutError("a layout needs at least one board")
        for holes in self.holes_per_board:
            if not isinstance(holes, int) or not 0 <= holes <= 255:
                raise UnparseableLayoutError(f"holes per board must be 0…255, got {holes!r}")

    @classmethod
    def parse(cls, text: str) -> BoardLayout:
        """Accepts "4+8", "4,8", "4 8" (holes per board) and "6x3" (3 boards of 6)."""
        cleaned = text.strip().lower()
        repeated = re.fullmatch(r"(\d+)\s*[x*]\s*(\d+)", cleaned)
        if repeated:
            holes, boards = int(repeated.group(1)), int(repeated.group(2))
            return cls((holes,) * boards)
        parts = [part for part in re.split(r"[+,\s]+", cleaned) if part]
        if not parts or not all(part.isascii() and part.isdigit() for part in parts):
            raise UnparseableLayoutError(f"cannot read a board layout from {text!r} (try 4+8 or 6x3)")
        return cls(tuple(int(part) for part in parts))

    def plan(self) -> BoardPlan:
        offsets: list[tuple[int, int]] = []
        offset = 0
        for holes in self.holes_per_board:
            offsets.append((offset, holes))
            offset += board_size(holes)
        return tuple(offsets)

    def __str__(self) -> str:
        return "+".join(str(holes) for holes in self.holes_per_board)


LayoutSpec = BoardLayout | Sequence[int]


def as_layout(spec: LayoutSpec) -> BoardLayout:
    return spec if isinstance(spec, BoardLayout) else BoardLayout(tuple(spec))


def _signed(byte: int) -> int:
    return byte - 256 if byte >= 0x80 else byte


def _inferred_holes(size: int, ff_marker: bool, second_board_byte: int) -> int:
    """Java `ReceiveUpload.getHole`, reduced to the three inputs it depends on.

    `second_board_byte` is data[66] (or 0 when the data is shorter).
    """
    if ff_marker and size == _TWELVE_SLOT_DATA_SIZE:
        return 8 if second_board_byte == 0x05 else 4
    if size == _TWO_SLOT_BOARD_SIZE:
        return 2
    for holes in _CANDIDATE_HOLE_COUNTS:
        block = board_size(holes)
        if size >= block and size % block == 0:
            # "Popular 4+2 edition": two 3-hole boards that are really one 4-hole board followed by a
            # 2-hole board whose address (< 4, signed compare as in Java) sits at data[66].
            if holes == 3 and not ff_marker and size == 2 * block and _signed(second_board_byte) < 4:
                return 4
            return holes
    return 0


def layout_inputs(data: bytes | memoryview) -> tuple[int, bool, int]:
    size = len(data)
    ff_marker = (
        size > FIRST_BOARD_RESERVED2
        and data[FIRST_BOARD_RESERVED1] == 0xFF
        and data[FIRST_BOARD_RESERVED2] == 0xFF
    )
    second_board_byte = data[SECOND_BOARD_AFTER_FOUR] if size in SIZES_READING_SECOND_BOARD else 0
    return size, ff_marker, second_board_byte


def infer_holes_per_board(data: bytes | memoryview) -> int:
    """Java `ReceiveUpload.getHole`: holes per board from the data part (frame minus envelope).

    Returns 0 when no rule matches (the frame is unparseable without an override).
    """
    return _inferred_holes(*layout_inputs(data))


@lru_cache(maxsize=512)
def inferred_plan(size: int, ff_marker: bool, second_board_byte: int) -> BoardPlan:
    holes = _inferred_holes(size, ff_marker, second_board_byte)
    if holes == 0:
        raise UnparseableLayoutError(
            f"cannot infer holes per board from {size} data bytes; configure a BoardLayout for this station",
            offset=4,
        )
    if ff_marker and size == _TWELVE_SLOT_DATA_SIZE and holes == 4:
        # The "4 + 8" 12-slot cabinet: second board at data[66] carries 8 holes, nothing after it.
        return ((0, 4), (SECOND_BOARD_AFTER_FOUR, 8))
    block = board_size(holes)
    boards = -(-size // block) if ff_marker else size // block
    return tuple((index * block, holes) for index in range(boards))


def infer_board_plan(data: bytes | memoryview) -> BoardPlan:
    """Board offsets and hole counts Java would slice; raises UnparseableLayoutError when H == 0.

    The plan may run past the end of the data (ceil rounding with the FF marker); the decoder skips
    records that start beyond the end, as Java does. Cached: it depends on three small inputs only.
    """
    return inferred_plan(*layout_inputs(data))
