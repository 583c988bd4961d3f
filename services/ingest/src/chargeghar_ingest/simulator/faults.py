"""Faults a virtual cabinet can be told to produce, and the bookkeeping of which ones are armed."""

from __future__ import annotations

from collections import Counter
from enum import StrEnum

__all__ = ["Fault", "FaultPlan", "corrupt_checksum", "truncate_frame"]


class Fault(StrEnum):
    """One misbehaviour; each injection applies to the next matching action of the cabinet."""

    BAD_CHECKSUM = "bad_checksum"  # next frame sent (MQTT or HTTP) carries a wrong verify byte
    TRUNCATED_FRAME = "truncated_frame"  # next frame sent is cut short (length field no longer matches)
    DISCONNECT = "disconnect"  # drop the MQTT connection now; the cabinet reconnects like after a reboot
    SLOW_POPUP_REPLY = "slow_popup_reply"  # next pop-up reply is delayed by the cabinet's slow_reply_s
    MISSING_POPUP_REPLY = "missing_popup_reply"  # next pop-up ejects the bank but never replies
    FAILED_POPUP = "failed_popup"  # next pop-up fails: the bank stays, reply state 0x00
    MISSING_HEARTBEAT_ECHO = "missing_heartbeat_echo"  # ignore the echo of the next heartbeat


# Faults that change a frame's bytes; they are consumed by whatever frame is sent next.
FRAME_FAULTS = (Fault.BAD_CHECKSUM, Fault.TRUNCATED_FRAME)


class FaultPlan:
    """Armed faults with a count each; ``take`` consumes one arming."""

    def __init__(self) -> None:
        self._armed: Counter[Fault] = Counter()

    def arm(self, fault: Fault, times: int = 1) -> None:
        if times < 1:
            raise ValueError("a fault must be armed at least once")
        self._armed[fault] += times

    def take(self, fault: Fault) -> bool:
        if self._armed[fault] <= 0:
            return False
        self._armed[fault] -= 1
        return True

    def armed(self) -> dict[Fault, int]:
        return {fault: count for fault, count in self._armed.items() if count > 0}

    def apply_frame_faults(self, frame: bytes) -> bytes:
        """Return the frame as the next send should put it on the wire (possibly damaged)."""
        if self.take(Fault.BAD_CHECKSUM):
            frame = corrupt_checksum(frame)
        if self.take(Fault.TRUNCATED_FRAME):
            frame = truncate_frame(frame)
        return frame


def corrupt_checksum(frame: bytes) -> bytes:
    """Same frame with the verify byte off by one (the sum over all bytes is then 1, not 0, mod 256)."""
    if not frame:
        return frame
    return frame[:-1] + bytes([(frame[-1] + 1) & 0xFF])


def truncate_frame(frame: bytes) -> bytes:
    """The frame cut in the middle of its data, as a dropped radio packet would leave it."""
    keep = max(4, len(frame) // 2)
    return frame[: min(keep, len(frame) - 1)]
