"""``chargeghar-core`` / ``python -m chargeghar_core``: serve the API (default) or migrate the database."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import uvicorn

from chargeghar_core.kit.logging import configure_logging
from chargeghar_core.kit.migrate import migrate
from chargeghar_core.settings import get_settings


def serve(args: argparse.Namespace) -> int:
    settings = get_settings()
    if args.migrate:
        run_migrations(args)
    uvicorn.run(
        "chargeghar_core.app:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=args.workers or settings.workers,
        log_config=None,  # structlog owns the handlers (configured by create_app)
        access_log=False,  # one line per request is noise at station-event rates; errors are logged
        proxy_headers=settings.internal.trust_forwarded_for,
    )
    return 0


def run_migrations(args: argparse.Namespace) -> int:
    settings = get_settings()
    configure_logging(settings.log_level, json_logs=settings.json_logs)
    asyncio.run(migrate(settings.db, getattr(args, "revision", "head")))
    return 0


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="Bind address (default CORE_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="Port (default CORE_PORT or 8000)")
    parser.add_argument("--workers", type=int, help="uvicorn worker processes (default CORE_WORKERS or 1)")
    parser.add_argument("--migrate", action="store_true", help="Run `migrate` before serving")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chargeghar-core", description="ChargeGhar core service")
    subparsers = parser.add_subparsers(dest="command")
    serve_parser = subparsers.add_parser("serve", help="Run the API under uvicorn (the default)")
    add_serve_arguments(serve_parser)
    serve_parser.set_defaults(func=serve)
    migrate_parser = subparsers.add_parser("migrate", help="Wait for the database, then `alembic upgrade`")
    migrate_parser.add_argument("--revision", default="head")
    migrate_parser.set_defaults(func=run_migrations)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["serve", *(argv if argv is not None else sys.argv[1:])])
    handler = args.func
    result: int = handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
