"""``chargeghar`` subcommands contributed by the ingest (entry point ``chargeghar_ingest.cli:register``)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import json
from typing import Any

SIMULATOR_CLI = "chargeghar_ingest.simulator.cli"


def register(subparsers: Any) -> None:
    serve = subparsers.add_parser("ingest-serve", help="run the ingest service (HTTP + MQTT consumer)")
    serve.add_argument("--host", help="bind address (default INGEST_HOST)")
    serve.add_argument("--port", type=int, help="HTTP port (default INGEST_HTTP_PORT)")
    serve.set_defaults(func=_serve)

    credentials = subparsers.add_parser(
        "ingest-device-credentials", help="print the MQTT credentials the ingest derives for a station"
    )
    credentials.add_argument("imei")
    credentials.set_defaults(func=_credentials)

    dead = subparsers.add_parser("ingest-dead-letters", help="list the newest dead-letter rows of the spool")
    dead.add_argument("--limit", type=int, default=20)
    dead.add_argument("--reason", help="only this reason, e.g. parked")
    dead.add_argument("--station", help="only this station")
    dead.set_defaults(func=_dead_letters)

    redrive = subparsers.add_parser(
        "ingest-redrive",
        help="put parked (or refused) events back into the spool at their original place, attempts reset",
    )
    redrive.add_argument("--id", type=int, action="append", default=[], dest="ids", help="dead-letter id")
    redrive.add_argument("--station", help="every parked event of this station")
    redrive.add_argument("--all-parked", action="store_true", help="every parked event")
    redrive.set_defaults(func=_redrive)

    # The station simulator registers its own subcommands when that package is present.
    if (
        importlib.util.find_spec(SIMULATOR_CLI.rsplit(".", 1)[0]) is not None
        and importlib.util.find_spec(SIMULATOR_CLI) is not None
    ):
        importlib.import_module(SIMULATOR_CLI).register(subparsers)


def _serve(args: argparse.Namespace) -> int:
    from chargeghar_ingest.__main__ import serve

    return serve(args.host, args.port)


def _credentials(args: argparse.Namespace) -> int:
    from chargeghar_ingest.credentials import derive_credentials
    from chargeghar_ingest.settings import IngestSettings

    settings = IngestSettings()
    creds = derive_credentials(
        settings.device.credential_secret.get_secret_value(),
        args.imei,
        username_prefix=settings.device.mqtt_username_prefix,
    )
    print(json.dumps({"client_id": creds.client_id, "username": creds.username, "password": creds.password}))
    return 0


def _dead_letters(args: argparse.Namespace) -> int:
    from chargeghar_ingest.settings import IngestSettings
    from chargeghar_ingest.spool import Spool

    async def show() -> None:
        spool = Spool(IngestSettings().spool.path)
        await spool.open()
        try:
            for row in await spool.dead_letters(limit=args.limit, reason=args.reason, station=args.station):
                print(
                    json.dumps(
                        {
                            "id": row.id,
                            "source": row.source,
                            "station": row.station,
                            "reason": row.reason,
                            "detail": row.detail,
                            "event_id": row.event_id,
                            "raw_len": row.raw_len,
                            "raw_sha256": row.raw_sha256,
                            "raw_hex": row.raw_hex,
                        }
                    )
                )
        finally:
            await spool.close()

    asyncio.run(show())
    return 0


def _redrive(args: argparse.Namespace) -> int:
    """Works on the spool file directly, also while the ingest runs (SQLite WAL; the forwarder sees the
    events at its next poll)."""
    from chargeghar_ingest.ops_api import record_redrive
    from chargeghar_ingest.settings import IngestSettings
    from chargeghar_ingest.spool import Spool

    if not args.ids and args.station is None and not args.all_parked:
        print("name --id, --station or --all-parked")
        return 2

    async def move() -> int:
        spool = Spool(IngestSettings().spool.path)
        await spool.open()
        try:
            moved = await spool.redrive(ids=args.ids, station=args.station, all_parked=args.all_parked)
        finally:
            await spool.close()
        record_redrive(None, moved, by="cli")
        for event in moved:
            print(
                json.dumps(
                    {
                        "dead_letter_id": event.dead_letter_id,
                        "event_id": event.event_id,
                        "station": event.station,
                        "seq": event.seq,
                    }
                )
            )
        print(json.dumps({"redriven": len(moved)}))
        return 0

    return asyncio.run(move())
