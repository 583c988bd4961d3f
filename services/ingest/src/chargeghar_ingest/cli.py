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
    dead.set_defaults(func=_dead_letters)

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
            for row in await spool.dead_letters(limit=args.limit):
                print(
                    json.dumps(
                        {
                            "id": row.id,
                            "source": row.source,
                            "station": row.station,
                            "reason": row.reason,
                            "detail": row.detail,
                            "raw_hex": row.raw_hex,
                        }
                    )
                )
        finally:
            await spool.close()

    asyncio.run(show())
    return 0
