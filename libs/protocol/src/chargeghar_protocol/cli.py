"""The `chargeghar` command line.

The shared library owns the entry point and the protocol subcommands (`decode`, …). The services add
their own subcommands (`create-admin`, `simulate`, …) through the `chargeghar.commands` entry-point group:
each entry point names a callable `register(subparsers)` that adds its parsers. A parser stores its
handler as `func` (a callable taking the parsed namespace and returning an exit status).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chargeghar", description="Station platform command line")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    from chargeghar_protocol import protocol_cli

    protocol_cli.register(subparsers)
    for entry in entry_points(group="chargeghar.commands"):
        register = entry.load()
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.func
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
