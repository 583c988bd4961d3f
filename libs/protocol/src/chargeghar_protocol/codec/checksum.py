"""Frame envelope (§3): `A8 | total length (u16 BE) | cmd | data | checksum`.

The checksum is the two's complement of the byte sum, so the sum of *all* bytes of a valid frame,
checksum included, is 0 mod 256. The head byte is part of the sum.
"""

from __future__ import annotations

import zlib

from chargeghar_protocol.codec.errors import EncodeError

HEAD = 0xA8
#: head + 2 length bytes + cmd + checksum
ENVELOPE_SIZE = 5
MAX_FRAME_SIZE = 0xFFFF


#: Adler-32's "A" half is 1 + the byte sum mod 65521; with a start value of 0 and at most 256 bytes
#: (256 · 255 < 65521) it is exactly the byte sum — computed in C, ~4x faster than `sum(bytes)`.
_ADLER_CHUNK = 256


def byte_sum(data: bytes | bytearray | memoryview) -> int:
    """Sum of all bytes (exact, not reduced)."""
    size = len(data)
    if size <= _ADLER_CHUNK:
        return zlib.adler32(data, 0) & 0xFFFF
    total = 0
    for start in range(0, size, _ADLER_CHUNK):
        # Slicing bytes (a small copy) is cheaper here than creating memoryview slices.
        total += zlib.adler32(data[start : start + _ADLER_CHUNK], 0) & 0xFFFF
    return total


def checksum_of(frame_without_checksum: bytes | bytearray | memoryview) -> int:
    """The verify byte that makes the byte sum of the whole frame 0 mod 256."""
    return -byte_sum(frame_without_checksum) & 0xFF


def checksum_ok(frame: bytes | bytearray | memoryview) -> bool:
    return byte_sum(frame) & 0xFF == 0


def build_frame(cmd: int, payload: bytes | bytearray, *, corrupt_checksum: bool = False) -> bytes:
    """Wrap a payload in the envelope with the right length and checksum.

    `corrupt_checksum=True` writes a deliberately wrong verify byte (fault injection in the simulator
    and in tests).
    """
    total = len(payload) + ENVELOPE_SIZE
    if total > MAX_FRAME_SIZE:
        raise EncodeError(f"frame of {total} bytes exceeds the 16-bit length field")
    if not 0 <= cmd <= 0xFF:
        raise EncodeError(f"cmd {cmd} is not a byte")
    body = bytearray((HEAD, total >> 8, total & 0xFF, cmd))
    body += payload
    verify = checksum_of(body)
    if corrupt_checksum:
        verify = (verify + 1) & 0xFF
    body.append(verify)
    return bytes(body)
