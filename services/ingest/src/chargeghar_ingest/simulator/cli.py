"""`chargeghar simulate`: run a fleet of virtual cabinets against an ingest service and a broker.

Example: ``chargeghar simulate --stations 10 --slots 12 --ingest-url http://127.0.0.1:8100 --speed 60``
runs ten 12-slot cabinets whose 20-minute uploads come every 20 s, until Ctrl-C (or ``--duration``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
from typing import Any

from chargeghar_ingest.simulator.device import CabinetConfig
from chargeghar_ingest.simulator.fleet import Fleet, FleetConfig

__all__ = ["build_fleet_config", "register", "run_simulation"]

logger = logging.getLogger("chargeghar.simulate")


def register(subparsers: Any) -> None:
    """Add the ``simulate`` subcommand to the ``chargeghar`` command line."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "simulate",
        help="run virtual stations that speak the device protocol over MQTT and HTTP",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    fleet = parser.add_argument_group("fleet")
    fleet.add_argument("--stations", type=int, default=10, help="number of virtual cabinets")
    fleet.add_argument("--slots", type=int, default=12, help="slots per cabinet (4, 6, 8, 12, 24, …)")
    fleet.add_argument("--fill", type=float, default=0.75, help="share of slots holding a bank at start")
    fleet.add_argument("--seed", type=int, default=1, help="same seed, same IMEIs and bank SNs")
    fleet.add_argument("--imei-prefix", default="86460106", help="leading IMEI digits (TAC)")
    fleet.add_argument(
        "--auto-return-after",
        type=float,
        default=None,
        metavar="MINUTES",
        help="return rented banks to a random cabinet after this many simulated minutes",
    )
    fleet.add_argument("--return-via", choices=("mqtt", "http", "both"), default="both")
    fleet.add_argument(
        "--ramp", type=float, default=0.0, metavar="S", help="spread session start-up over S s"
    )

    wire = parser.add_argument_group("connections")
    wire.add_argument(
        "--ingest-url", default="http://127.0.0.1:8100", help="base URL of the device endpoints"
    )
    wire.add_argument("--broker-host", default=None, help="override the broker host of the connect answer")
    wire.add_argument("--broker-port", type=int, default=None, help="override the broker port")
    wire.add_argument("--topic-prefix", default="", help='prepended to every topic (e.g. "/t1")')
    wire.add_argument("--upload-channel", choices=("http", "mqtt"), default="http")
    wire.add_argument(
        "--persistent-session", action="store_true", help="clean session off, like real stations"
    )

    timing = parser.add_argument_group("timing")
    timing.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    timing.add_argument("--upload-interval", type=float, default=None, metavar="S", help="real seconds")
    timing.add_argument("--heartbeat-interval", type=float, default=None, metavar="S", help="real seconds")
    timing.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S real seconds")
    timing.add_argument("--stats-every", type=float, default=30.0, metavar="S", help="log counters every S s")
    parser.add_argument("--log-level", default="INFO")
    parser.set_defaults(func=run_simulation)


def build_fleet_config(args: argparse.Namespace) -> FleetConfig:
    if args.speed <= 0:
        raise ValueError("--speed must be positive")
    cabinet = CabinetConfig(
        imei="0",
        ingest_url=args.ingest_url,
        topic_prefix=args.topic_prefix,
        broker_host=args.broker_host,
        broker_port=args.broker_port,
        speed=args.speed,
        upload_interval_s=args.upload_interval,
        heartbeat_interval_s=args.heartbeat_interval,
        upload_channel=args.upload_channel,
        clean_session=not args.persistent_session,
    )
    # A heartbeat echo normally arrives within milliseconds; never wait longer than one heartbeat period.
    echo_timeout = min(cabinet.echo_timeout_s, (args.heartbeat_interval or 540.0 / args.speed) * 0.9)
    cabinet = dataclasses.replace(cabinet, echo_timeout_s=max(0.5, echo_timeout))
    return FleetConfig(
        stations=args.stations,
        slots=args.slots,
        fill_ratio=args.fill,
        imei_prefix=args.imei_prefix,
        seed=args.seed,
        cabinet=cabinet,
        auto_return_after_s=None if args.auto_return_after is None else args.auto_return_after * 60,
        return_via=args.return_via,
        start_spread_s=args.ramp,
    )


def run_simulation(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        config = build_fleet_config(args)
        fleet = Fleet(config)
    except ValueError as error:
        logger.error("%s", error)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(fleet, args.duration, args.stats_every))
    total = fleet.stats()
    logger.info("stopped: %s", _format_stats(dataclasses.asdict(total)))
    return 0


async def _run(fleet: Fleet, duration: float | None, stats_every: float) -> None:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    # SIGTERM (from `make dev` or a container runtime) stops as cleanly as Ctrl-C.
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGTERM, main.cancel)
    logger.info(
        "simulating %d cabinets × %d slots at speed %g against %s",
        len(fleet.cabinets),
        fleet.config.slots,
        fleet.config.cabinet.speed,
        fleet.config.cabinet.ingest_url,
    )
    for cabinet in fleet.cabinets[:5]:
        logger.info("  cabinet %s: %d banks", cabinet.imei, len(cabinet.state.banks()))
    reporter = asyncio.create_task(_report(fleet, stats_every))
    try:
        await fleet.run(duration)
    except asyncio.CancelledError:
        logger.info("stopping")
    finally:
        reporter.cancel()
        await fleet.aclose()


async def _report(fleet: Fleet, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        connected = sum(cabinet.connected.is_set() for cabinet in fleet.cabinets)
        counters = dataclasses.asdict(fleet.stats())
        logger.info("%d/%d connected; %s", connected, len(fleet.cabinets), _format_stats(counters))


def _format_stats(counters: dict[str, int]) -> str:
    return ", ".join(f"{name}={value}" for name, value in counters.items() if value)
