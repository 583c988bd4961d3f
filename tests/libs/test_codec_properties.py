"""Property tests: decode(encode(f)) == f for generated frames of every type, and any byte string
either decodes or raises the codec's own FrameError (never IndexError, struct.error, …)."""

from __future__ import annotations

from chargeghar_protocol.codec import (
    KNOWN_COMMANDS,
    BoardLayout,
    BoardRecord,
    CabinetSnapshot,
    Frame,
    FrameError,
    Heartbeat,
    HoleRecord,
    PopupByHoleRequest,
    PopupByHoleResult,
    PopupBySnRequest,
    PopupBySnResult,
    ReturnReport,
    SlotStateReport,
    WifiScanList,
    build_frame,
    decode_frame,
    encode_frame,
    frame_to_dict,
    infer_holes_per_board,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

byte = st.integers(0, 0xFF)
uint32 = st.integers(0, 0xFFFFFFFF)
checksum_flag = st.booleans()
NEUTRAL_AREA_PREFIXES = (0x00, 0x0B, 0xFF)

boards = st.builds(BoardRecord, byte, byte, byte, byte, byte, byte)


def hole_records(area_prefix: int | None) -> st.SearchStrategy[HoleRecord]:
    @st.composite
    def build(draw: st.DrawFn) -> HoleRecord:
        state = draw(byte)
        low_area = draw(byte)
        # With the area-code extension, occupied holes carry (prefix << 8) | low byte (§4.1.4).
        area = (area_prefix << 8) | low_area if area_prefix is not None and state else low_area
        return HoleRecord(
            draw(byte), state, draw(byte), draw(byte), area, draw(uint32), *(draw(byte) for _ in range(6))
        )

    return build()


@st.composite
def snapshots(draw: st.DrawFn, max_boards: int = 4, max_holes: int = 10) -> CabinetSnapshot:
    layout = tuple(draw(st.lists(st.integers(0, max_holes), min_size=1, max_size=max_boards)))
    board_list = draw(st.lists(boards, min_size=len(layout), max_size=len(layout)))
    first = board_list[0]
    prefix = None if first.reserved2 in NEUTRAL_AREA_PREFIXES else first.reserved2
    holes = draw(st.lists(hole_records(prefix), min_size=sum(layout), max_size=sum(layout)))
    holes.sort(key=lambda hole: hole.hole)  # the decoder's (stable) order
    return CabinetSnapshot(tuple(board_list), tuple(holes), layout, draw(checksum_flag))


other_frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(PopupByHoleResult, byte, byte, byte, byte, checksum_flag),
    st.builds(PopupBySnResult, byte, uint32, byte, byte, checksum_flag),
    st.builds(ReturnReport, byte, byte, byte, uint32, byte, byte, st.none() | byte, checksum_flag),
    st.builds(SlotStateReport, *([byte] * 6), uint32, *([byte] * 6), checksum_flag),
    st.builds(Heartbeat, byte, st.text(st.characters(max_codepoint=0x7F), max_size=40), checksum_flag),
    st.builds(WifiScanList, st.binary(max_size=120), checksum_flag),
    st.builds(PopupByHoleRequest, byte, byte, checksum_flag),
    st.builds(PopupBySnRequest, byte, uint32, checksum_flag),
)


@given(other_frames)
def test_fixed_frames_round_trip(frame: Frame) -> None:
    raw = encode_frame(frame)
    assert decode_frame(raw) == frame
    assert frame_to_dict(decode_frame(raw))["cmd"] == frame.cmd


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(snapshots())
def test_snapshots_round_trip_with_their_layout(snapshot: CabinetSnapshot) -> None:
    raw = encode_frame(snapshot)
    assert decode_frame(raw, layout=snapshot.holes_per_board) == snapshot
    assert decode_frame(raw, layout=BoardLayout(snapshot.holes_per_board)) == snapshot


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.sampled_from([(2, 1), *((h, b) for h in (3, 4, 5, 6, 8) for b in (1, 2, 3))]), st.data())
def test_snapshots_round_trip_through_the_inference(shape: tuple[int, int], data: st.DataObject) -> None:
    holes, board_count = shape
    board_list = data.draw(st.lists(boards, min_size=board_count, max_size=board_count))
    first = board_list[0]
    assume(not (first.reserved1 == 0xFF and first.reserved2 == 0xFF))  # ceil rounding is tested apart
    prefix = None if first.reserved2 in NEUTRAL_AREA_PREFIXES else first.reserved2
    slots = holes * board_count
    hole_list = data.draw(st.lists(hole_records(prefix), min_size=slots, max_size=slots))
    hole_list.sort(key=lambda hole: hole.hole)
    snapshot = CabinetSnapshot(tuple(board_list), tuple(hole_list), (holes,) * board_count)
    raw = encode_frame(snapshot)
    assume(infer_holes_per_board(raw[4:-1]) == holes)  # e.g. a 3+3 frame may trigger the 4+2 rule
    assert decode_frame(raw, strict=True) == snapshot


@settings(max_examples=300)
@given(st.binary(max_size=400), st.booleans())
def test_arbitrary_bytes_decode_or_raise_frame_error(raw: bytes, strict: bool) -> None:
    _decode_or_frame_error(raw, strict=strict)


@settings(max_examples=400)
@given(st.sampled_from(sorted(KNOWN_COMMANDS | {0x00, 0x14, 0xFF})), st.binary(max_size=300), st.booleans())
def test_well_enveloped_payloads_decode_or_raise_frame_error(cmd: int, payload: bytes, strict: bool) -> None:
    # A valid envelope drives every command's payload parser with arbitrary data.
    _decode_or_frame_error(build_frame(cmd, payload), strict=strict)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    snapshots() | other_frames,
    st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate"]), st.integers(0, 400), byte)),
    st.booleans(),
    st.none() | st.lists(st.integers(0, 12), min_size=1, max_size=4),
)
def test_mutated_valid_frames_decode_or_raise_frame_error(
    frame: Frame, mutations: list[tuple[str, int, int]], strict: bool, layout: list[int] | None
) -> None:
    raw = bytearray(encode_frame(frame))
    for kind, position, value in mutations:
        index = position % (len(raw) + 1)
        if kind == "flip" and index < len(raw):
            raw[index] ^= value or 1
        elif kind == "insert":
            raw.insert(index, value)
        elif kind == "delete" and index < len(raw):
            del raw[index]
        elif kind == "truncate":
            del raw[index:]
    # Keep the length field consistent half of the time so that the payload parsers see the damage.
    if len(raw) >= 3 and strict:
        raw[1:3] = len(raw).to_bytes(2, "big")
    _decode_or_frame_error(bytes(raw), strict=strict, layout=layout)


def _decode_or_frame_error(raw: bytes, *, strict: bool, layout: list[int] | None = None) -> None:
    try:
        frame = decode_frame(raw, strict=strict, layout=layout)
    except FrameError as exc:
        assert exc.code.isupper()
        assert exc.offset is None or 0 <= exc.offset <= len(raw)
        return
    # Whatever decodes must also render (the CLI path) without error.
    rendered = frame_to_dict(frame)
    assert rendered["cmd"] == raw[3]
    if strict:
        assert frame.checksum_valid
