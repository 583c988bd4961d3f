"""``python -m chargeghar_ingest.simulator [flags]``: the same as ``chargeghar simulate [flags]``."""

from __future__ import annotations

import argparse
import sys

from chargeghar_ingest.simulator.cli import register


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chargeghar_ingest.simulator")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["simulate", *(sys.argv[1:] if argv is None else argv)])
    exit_code: int = args.func(args)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
