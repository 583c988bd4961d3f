"""The codec's single error family.

Every failure of `decode_frame` / `encode_frame` is a `FrameError` subclass carrying a stable upper-snake
`code` (safe to log, count and compare in tests) and the byte `offset` the problem was found at. Nothing
else escapes the codec: no IndexError, struct.error or UnicodeDecodeError.
"""

from __future__ import annotations


class FrameError(ValueError):
    """Base class: a byte string is not a valid frame, or a frame object cannot be encoded."""

    code: str = "BAD_FRAME"

    def __init__(self, message: str, *, offset: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset

    def __str__(self) -> str:
        where = "" if self.offset is None else f" at byte {self.offset}"
        return f"{self.code}{where}: {self.message}"

    def to_dict(self) -> dict[str, object]:
        return {"error": self.code, "message": self.message, "offset": self.offset}


class BadHexError(FrameError):
    """Text given as hex is not an even number of hex digits (spaces, colons and dashes allowed)."""

    code = "BAD_HEX"


class TooShortError(FrameError):
    """Fewer than the 5 bytes every frame has (head, length, cmd, checksum)."""

    code = "TOO_SHORT"


class BadHeadError(FrameError):
    """First byte is not 0xA8."""

    code = "BAD_HEAD"


class LengthMismatchError(FrameError):
    """The length field (total frame length) differs from the number of bytes received."""

    code = "LENGTH_MISMATCH"


class BadChecksumError(FrameError):
    """Byte sum is not 0 mod 256; raised only in strict mode (lenient decode flags `checksum_valid`)."""

    code = "BAD_CHECKSUM"


class UnknownCommandError(FrameError):
    """The cmd byte names no frame layout this codec knows."""

    code = "UNKNOWN_COMMAND"

    def __init__(self, message: str, *, cmd: int, offset: int | None = 3) -> None:
        super().__init__(message, offset=offset)
        self.cmd = cmd


class BadPayloadError(FrameError):
    """The data part has the wrong size for its command, or text that is not ASCII."""

    code = "BAD_PAYLOAD"


class UnparseableLayoutError(FrameError):
    """A 0x10 frame whose holes-per-board count cannot be inferred (or a bad layout override)."""

    code = "UNPARSEABLE_LAYOUT"


class TruncatedRecordError(FrameError):
    """A board or hole record is cut off by the end of the data."""

    code = "TRUNCATED_RECORD"


class UnconsumedBytesError(FrameError):
    """Strict mode only: the 0x10 layout leaves data bytes that belong to no record."""

    code = "UNCONSUMED_BYTES"


class EncodeError(FrameError):
    """A frame object holds a value that cannot be written (out of range, inconsistent area code…)."""

    code = "UNENCODABLE"
