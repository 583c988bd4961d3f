"""Protocol subcommands of the `chargeghar` command line.

`chargeghar decode A8 00 0C 31 01 02 6E D5 80 01 02 52` prints one JSON object describing the frame;
a malformed frame prints `{"error": CODE, "message": ..., "offset": ...}` and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from chargeghar_protocol.codec import BoardLayout, FrameError, decode_frame, frame_to_dict, parse_hex

EXIT_OK = 0
EXIT_BAD_FRAME = 2


def _decode_command(args: argparse.Namespace) -> int:
    result: dict[str, Any]
    status = EXIT_OK
    try:
        layout = BoardLayout.parse(args.layout) if args.layout else None
        raw = parse_hex(" ".join(args.hex))
        frame = decode_frame(raw, strict=args.strict, layout=layout)
    except FrameError as exc:
        result = exc.to_dict()
        status = EXIT_BAD_FRAME
    else:
        body = frame_to_dict(frame)
        # cmd and length first: they are what one looks for when reading a log line.
        result = {"cmd": body.pop("cmd"), "length": len(raw), **body}
    indent = 2 if args.pretty else None
    sys.stdout.write(json.dumps(result, indent=indent, ensure_ascii=False) + "\n")
    return status


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `decode` subcommand to the `chargeghar` parser."""
    parser = subparsers.add_parser(
        "decode",
        help="decode one vendor binary frame given as hex and print it as JSON",
        description=(
            "Decode one frame (head A8, total length, cmd, data, checksum) and print one JSON object. "
            "Exit status 2 and {'error': CODE, ...} when the frame is malformed."
        ),
    )
    parser.add_argument(
        "hex", nargs="+", metavar="HEX", help="frame bytes in hex; spaces, colons and 0x prefixes allowed"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="reject a wrong checksum (BAD_CHECKSUM) and 0x10 layouts leaving bytes over (UNCONSUMED_BYTES)",
    )
    parser.add_argument(
        "--layout",
        metavar="LAYOUT",
        help="holes per control board for 0x10 frames instead of the inference, e.g. 4+8, 6x3, 4,2",
    )
    parser.add_argument("--pretty", action="store_true", help="indent the JSON output")
    parser.set_defaults(func=_decode_command)
