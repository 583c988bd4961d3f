"""End-to-end pipeline benchmark: simulated stations → MQTT → ingest → core → PostgreSQL.

What it measures, in one bounded run (< 150 s):
1. the broker's bare delivery rate: one plain publisher, one plain subscriber, the same 0x10 frames, QoS 1;
2. the pipeline: a fleet of virtual cabinets publishes 0x10 uploads on ``/user/update`` (what a ``check``
   reply or an MQTT upload looks like) at a target rate; the ingest decodes, spools and forwards them; core
   applies each as one transaction. Reported: events/s committed in core while sustained, and the latency
   from the cabinet's publish to core's row (``sync_logs.created_at``), p50 / p99;
3. the CPU each part spent per upload over the pipeline window (publish start → core drained), from /proc:
   core (uvicorn and its workers), ingest, broker, the PostgreSQL backends of the bench database, and this
   process (the simulated fleet), with each part's share of one core: on a 2-core machine that is where a
   missed target shows what stands in the way.

It starts its own Mosquitto on a free port (the shared one drops beyond 1000 queued messages per client), a
fresh PostgreSQL database, core and ingest as child processes, and removes them all at the end.

    uv run python bench/bench_pipeline.py [--rate 1000] [--stations 200] [--duration 20] [--json out.json]
        [--repo-root DIR]   # another tree's core (and its migrations), e.g. the code before a change
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import httpx
from bench_support import CPU_NOTE, LIVE_ROOT, CodeTree, machine
from chargeghar_ingest.simulator.device import CabinetConfig, SentFrame
from chargeghar_ingest.simulator.fleet import Fleet, FleetConfig
from chargeghar_ingest.simulator.stack import (
    LocalStack,
    ServiceProcess,
    StackConfig,
    free_port,
    mosquitto_process,
    wait_for_port,
)
from proc_cpu import CpuMeter, PhaseCpu, PostgresBackends, PostgresServer, ProcessTree
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import create_async_engine

POSTGRES_ADMIN_URL = os.environ.get(
    "BENCH_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
SNAPSHOT = 0x10
# aiomqtt warns for every publish beyond ten in flight; a benchmark keeps hundreds in flight on purpose.
QUIET_MQTT_LOGGER = logging.getLogger("bench.mqtt")
QUIET_MQTT_LOGGER.setLevel(logging.ERROR)


@dataclass
class BrokerResult:
    messages: int
    seconds: float
    per_second: float
    # CPU per delivered message (publish + deliver, QoS 1) of the broker and of this process's two clients.
    cpu_ms_per_message: dict[str, float | None] = field(default_factory=dict)


@dataclass
class PipelineResult:
    stations: int
    target_rate: float
    published: int
    publish_seconds: float
    offered_per_second: float
    committed: int
    committed_within_run: int
    sustained_per_second: float
    drain_seconds: float | None
    # Over the events core committed before the drain deadline; ``unmatched`` counts the others.
    latency_ms: dict[str, float] = field(default_factory=dict)
    unmatched: int = 0
    # Where the time goes: core's own processing time per event (sync_logs.duration_ms), and how far the
    # ingest had got when publishing stopped (received and spooled vs. still waiting for core).
    core_apply_ms: dict[str, float] = field(default_factory=dict)
    ingest_at_publish_end: dict[str, float] = field(default_factory=dict)
    # CPU per upload over the window publish start → drained (or the drain deadline), per part: core's and
    # PostgreSQL's per upload core committed, the others' per upload published (what each part handled);
    # and each part's busy share of one core over that window (100 = one core all the time).
    cpu_window_seconds: float = 0.0
    cpu_ms_per_upload: dict[str, float | None] = field(default_factory=dict)
    cpu_share_of_one_core_pct: dict[str, float | None] = field(default_factory=dict)
    postgres_backends_connected: int | None = None
    machine_busy_pct: float | None = None  # all CPUs, everybody's work (N cores = N × 100)


async def measure_broker(
    port: int, messages: int, payload: bytes, meter: CpuMeter, within_s: float = 30.0
) -> BrokerResult:
    """Bare broker delivery: publish ``messages`` frames at QoS 1 and time their arrival at a subscriber."""
    topic = f"/bench{uuid.uuid4().hex[:6]}/powerbank/000000000000000/user/update"
    received = 0
    done = asyncio.Event()
    async with (
        aiomqtt.Client("127.0.0.1", port, identifier=f"bench-sub-{uuid.uuid4().hex[:6]}") as subscriber,
        aiomqtt.Client(
            "127.0.0.1",
            port,
            identifier=f"bench-pub-{uuid.uuid4().hex[:6]}",
            max_inflight_messages=1000,
            logger=QUIET_MQTT_LOGGER,
        ) as publisher,
    ):
        await subscriber.subscribe(topic, qos=1)

        async def consume() -> None:
            nonlocal received
            async for _ in subscriber.messages:
                received += 1
                if received >= messages:
                    done.set()
                    return

        consumer = asyncio.create_task(consume())
        meter.begin()
        started = time.perf_counter()
        window = asyncio.Semaphore(500)

        async def publish_one() -> None:
            async with window:
                await publisher.publish(topic, payload, qos=1)

        await asyncio.gather(*(publish_one() for _ in range(messages)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), within_s)
        consumer.cancel()
        elapsed = time.perf_counter() - started
        cpu = meter.end()
    return BrokerResult(
        received,
        round(elapsed, 3),
        round(received / elapsed if elapsed else 0.0, 1),
        cpu_ms_per_message=_cpu_per(cpu, {"broker": received, "loadgen": received}),
    )


def _cpu_per(cpu: PhaseCpu | None, counts: dict[str, int]) -> dict[str, float | None]:
    """CPU milliseconds per item of each group (``loadgen``: this process), each over its own item count."""
    figures: dict[str, float | None] = {}
    for group, count in counts.items():
        value = None if cpu is None else cpu.loadgen_ms if group == "loadgen" else cpu.ms(group)
        figures[group] = None if value is None or count <= 0 else round(value / count, 3)
    return figures


def _cpu_share(cpu: PhaseCpu | None, groups: tuple[str, ...]) -> dict[str, float | None]:
    """Percent of one core each group kept busy over the phase."""
    if cpu is None or cpu.seconds <= 0:
        return {}
    figures: dict[str, float | None] = {}
    for group in groups:
        value = cpu.ms(group)
        figures[group] = None if value is None else round(value / cpu.seconds / 10, 1)
    figures["loadgen"] = round(cpu.loadgen_ms / cpu.seconds / 10, 1)
    return figures


# ------------------------------------------------------------------------------------------ pipeline


async def create_database() -> tuple[str, str]:
    name = f"cg_bench_pipeline_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    connection = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    server = POSTGRES_ADMIN_URL.split("://", 1)[1].rsplit("/", 1)[0]
    return name, f"postgresql+asyncpg://{server}/{name}"


async def drop_database(name: str) -> None:
    connection = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def drive(fleet: Fleet, rate: float, duration_s: float) -> list[SentFrame]:
    """Every cabinet publishes a fresh 0x10 on its update topic on a fixed schedule, staggered."""
    sent: list[SentFrame] = []
    interval = len(fleet.cabinets) / rate
    started = time.monotonic()
    stop_at = started + duration_s

    async def one(index: int) -> None:
        cabinet = fleet.cabinets[index]
        due = started + interval * index / len(fleet.cabinets)
        while due < stop_at:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            with contextlib.suppress(Exception):
                sent.append(await cabinet.publish_update(cabinet.snapshot_frame()))
            due += interval

    await asyncio.gather(*(one(index) for index in range(len(fleet.cabinets))))
    return sent


async def committed_rows(database_url: str, imeis: list[str]) -> list[tuple[str, float]]:
    """(station, created_at epoch) of every full event core recorded for these stations."""
    engine = create_async_engine(database_url)
    query = text(
        "SELECT station_key, created_at FROM sync_logs WHERE event_type = 'full' AND station_key IN :keys"
    ).bindparams(bindparam("keys", expanding=True))
    try:
        async with engine.connect() as connection:
            rows = (await connection.execute(query, {"keys": imeis})).all()
    finally:
        await engine.dispose()
    return [(str(station), _epoch(created)) for station, created in rows]


async def committed_count(connection: asyncpg.Connection, imeis: list[str]) -> int:
    """Polled on one connection the whole run, whose backend the CPU figures leave out."""
    return int(
        await connection.fetchval(
            "SELECT count(*) FROM sync_logs WHERE event_type = 'full' AND station_key = ANY($1::text[])",
            imeis,
        )
    )


async def ingest_metrics(ingest_url: str) -> dict[str, float]:
    names = ("mqtt_messages_total", "events_spooled_total", "events_delivered_total", "spool_pending_events")
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{ingest_url}/metrics.json")
    values = response.json() if response.is_success else {}
    return {name: float(values.get(name, -1)) for name in names}


async def core_apply_times(database_url: str, imeis: list[str]) -> dict[str, float]:
    """Percentiles of core's per-event processing time as it recorded it."""
    engine = create_async_engine(database_url)
    query = text(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms), "
        "percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms), avg(duration_ms) "
        "FROM sync_logs WHERE event_type = 'full' AND station_key IN :keys"
    ).bindparams(bindparam("keys", expanding=True))
    try:
        async with engine.connect() as connection:
            p50, p99, mean = (await connection.execute(query, {"keys": imeis})).one()
    finally:
        await engine.dispose()
    return {
        "p50": round(float(p50 or 0), 2),
        "p99": round(float(p99 or 0), 2),
        "mean": round(float(mean or 0), 2),
    }


def _epoch(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def latencies(
    sent: list[SentFrame], rows: list[tuple[str, float]], station_of: dict[str, str]
) -> tuple[list[float], int]:
    """Pair the k-th publish of a station with its k-th sync-log row (the ingest keeps a station's order)."""
    published: dict[str, list[float]] = defaultdict(list)
    for frame in sent:
        published[station_of[frame.target]].append(frame.sent_at)
    committed: dict[str, list[float]] = defaultdict(list)
    for station, created in rows:
        committed[station].append(created)
    values: list[float] = []
    unmatched = 0
    for station, times in published.items():
        commits = sorted(committed.get(station, []))
        times.sort()
        unmatched += abs(len(times) - len(commits))
        values.extend(commit - publish for publish, commit in zip(times, commits, strict=False))
    return sorted(values), unmatched


PARTS = ("core", "ingest", "broker", "postgres", "postgres_all")


async def run_pipeline(
    args: argparse.Namespace, broker: ServiceProcess, broker_port: int, work_dir: Path
) -> tuple[PipelineResult, BrokerResult]:
    tree = CodeTree(args.repo_root.resolve())
    name, database_url = await create_database()
    core_env = {"CORE_WORKERS": str(args.core_workers), **tree.core_env()}
    if args.pool_size is not None:
        core_env["CORE_DB__POOL_SIZE"] = str(args.pool_size)
    stack = LocalStack(
        StackConfig(
            var_dir=work_dir,
            database_url=database_url,
            broker_port=broker_port,
            repo_root=tree.root,
            log_level="WARNING",
            core_env=core_env,
            ingest_env={"INGEST_CORE__BATCH_SIZE": str(args.batch_size)},
        )
    )
    print(f"pipeline bench: core from {tree.describe()}", flush=True)
    assert broker.pid is not None
    meter = CpuMeter([ProcessTree("broker", broker.pid), PostgresServer("postgres_all")])
    fleet: Fleet | None = None
    fleet_task: asyncio.Task[None] | None = None
    monitor: asyncpg.Connection | None = None
    try:
        await asyncio.to_thread(stack.prepare)
        await asyncio.to_thread(stack.start)
        assert stack.core.pid is not None and stack.ingest.pid is not None
        meter.add(ProcessTree("core", stack.core.pid))
        meter.add(ProcessTree("ingest", stack.ingest.pid))
        # The bench's own polling connection is not the pipeline's work: its backend is left out.
        monitor = await asyncpg.connect(database_url.replace("+asyncpg", ""), timeout=10)
        monitor_backend = int(await monitor.fetchval("SELECT pg_backend_pid()"))
        meter.add(PostgresBackends("postgres", name, exclude=frozenset({monitor_backend})))
        meter.start()
        cabinet = CabinetConfig(
            imei="0",
            ingest_url=stack.config.ingest_url,
            upload_channel="mqtt",
            first_upload_delay_s=1e6,  # the driver below decides when each cabinet uploads
            upload_interval_s=1e6,
            heartbeat_interval_s=3600.0,
        )
        fleet = Fleet(
            FleetConfig(stations=args.stations, slots=12, seed=uuid.uuid4().int % 10**9, cabinet=cabinet)
        )
        fleet_task = asyncio.create_task(fleet.run())
        await fleet.wait_connected(60)
        station_of = {cabinet.topics.update: cabinet.imei for cabinet in fleet.cabinets}
        imeis = list(station_of.values())

        bare = await measure_broker(
            broker_port, args.broker_messages, fleet.cabinets[0].snapshot_frame(), meter
        )
        print(
            f"broker bare delivery: {bare.per_second:,.0f} msg/s ({bare.messages} in {bare.seconds}s)",
            flush=True,
        )

        meter.begin()
        started = time.time()
        sent = await drive(fleet, args.rate, args.duration)
        publish_end = time.time()
        publish_seconds = publish_end - started
        ingest_state = await ingest_metrics(stack.config.ingest_url)
        print(f"published {len(sent)} uploads in {publish_seconds:.1f}s; waiting for core …", flush=True)

        drained_at: float | None = None
        deadline = time.monotonic() + args.drain_timeout
        while time.monotonic() < deadline:
            if await committed_count(monitor, imeis) >= len(sent):
                drained_at = time.time()
                break
            await asyncio.sleep(0.5)
        cpu = meter.end()
        rows = await committed_rows(database_url, imeis)
        values, unmatched = latencies(sent, rows, station_of)
        within_run = sum(1 for _, created in rows if created <= publish_end)
        commit_times = sorted(created for _, created in rows)
        span = (commit_times[-1] - commit_times[0]) if len(commit_times) > 1 else 0.0
        postgres = cpu.groups.get("postgres") if cpu else None
        result = PipelineResult(
            stations=args.stations,
            target_rate=args.rate,
            published=len(sent),
            publish_seconds=round(publish_seconds, 2),
            offered_per_second=round(len(sent) / publish_seconds, 1),
            committed=len(rows),
            committed_within_run=within_run,
            sustained_per_second=round(len(rows) / span, 1) if span else 0.0,
            drain_seconds=None if drained_at is None else round(drained_at - publish_end, 2),
            latency_ms={
                "p50": round(percentile(values, 0.50) * 1000, 1),
                "p99": round(percentile(values, 0.99) * 1000, 1),
                "max": round(values[-1] * 1000, 1) if values else float("nan"),
                "mean": round(statistics.fmean(values) * 1000, 1) if values else float("nan"),
            },
            unmatched=unmatched,
            core_apply_ms=await core_apply_times(database_url, imeis),
            ingest_at_publish_end=ingest_state,
            cpu_window_seconds=round(cpu.seconds, 2) if cpu else 0.0,
            cpu_ms_per_upload=_cpu_per(
                cpu,
                {
                    "core": len(rows),
                    "postgres": len(rows),
                    "postgres_all": len(rows),
                    "ingest": len(sent),
                    "broker": len(sent),
                    "loadgen": len(sent),
                },
            ),
            cpu_share_of_one_core_pct=_cpu_share(cpu, PARTS),
            postgres_backends_connected=postgres.joined if postgres else None,
            machine_busy_pct=round(cpu.machine_busy_pct, 1)
            if cpu and cpu.machine_busy_pct is not None
            else None,
        )
        return result, bare
    finally:
        meter.stop()
        if monitor is not None:
            with contextlib.suppress(Exception):
                await monitor.close()
        if fleet_task is not None:
            fleet_task.cancel()
            await asyncio.gather(fleet_task, return_exceptions=True)
        if fleet is not None:
            await fleet.aclose()
        await asyncio.to_thread(stack.stop)
        await drop_database(name)


def render(pipeline: PipelineResult, broker: BrokerResult) -> list[str]:
    meets = pipeline.sustained_per_second >= 1000 and pipeline.latency_ms.get("p99", 1e9) < 1000
    lines = [
        f"pipeline: {pipeline.stations} stations, offered {pipeline.offered_per_second:,.0f} uploads/s for "
        f"{pipeline.publish_seconds:.0f} s; core committed {pipeline.committed}/{pipeline.published}, "
        f"sustained {pipeline.sustained_per_second:,.0f}/s; publish→commit p50 "
        f"{pipeline.latency_ms['p50']:.0f} ms, p99 {pipeline.latency_ms['p99']:.0f} ms; core apply p50 "
        f"{pipeline.core_apply_ms.get('p50', 0):.1f} ms/event",
        f"target ≥ 1,000 uploads/s sustained with p99 < 1 s: {'met' if meets else 'NOT met'}",
        "",
        f"CPU over the pipeline window ({pipeline.cpu_window_seconds:.0f} s, publish start → drained), per "
        "upload (core, PostgreSQL: per committed upload; the others: per published upload) and as a share "
        "of one core:",
        f"  {'part':<26}{'ms/upload':>10}{'% of a core':>13}",
    ]
    labels = {
        "core": "core (uvicorn + workers)",
        "ingest": "ingest",
        "broker": "broker (mosquitto)",
        "postgres": "PostgreSQL, bench db",
        "loadgen": "load generator (fleet)",
    }
    total_ms = 0.0
    total_share = 0.0
    for part, label in labels.items():
        ms = pipeline.cpu_ms_per_upload.get(part)
        share = pipeline.cpu_share_of_one_core_pct.get(part)
        total_ms += ms or 0.0
        total_share += share or 0.0
        lines.append(f"  {label:<26}{_num(ms, 10, 3)}{_num(share, 12, 0)} %")
    # Per-upload figures over different counts add up only when core committed everything published.
    total = f"{total_ms:10.3f}" if pipeline.committed == pipeline.published else "-".rjust(10)
    lines.append(f"  {'total':<26}{total}{total_share:12.0f} %")
    busy = pipeline.machine_busy_pct
    lines.append(
        f"  {'whole machine, everybody':<26}{'':>10}{_num(busy, 12, 0)} %  (of {os.cpu_count() or 1}00 %)"
    )
    all_pg = pipeline.cpu_ms_per_upload.get("postgres_all")
    lines += [
        f"  (every PostgreSQL process, all databases: {_num(all_pg, 0, 3).strip()} ms/upload; "
        f"{pipeline.postgres_backends_connected} backends connected to the bench db in the window)",
        f"broker alone: {broker.per_second:,.0f} msg/s, broker CPU "
        f"{_num(broker.cpu_ms_per_message.get('broker'), 0, 3).strip()} ms/message",
        "",
        CPU_NOTE,
    ]
    return lines


def _num(value: float | None, width: int, digits: int) -> str:
    return "-".rjust(width) if value is None else f"{value:{width}.{digits}f}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="target station uploads per second")
    parser.add_argument("--stations", type=int, default=200)
    parser.add_argument("--duration", type=float, default=20.0, help="publishing time in seconds")
    parser.add_argument(
        "--drain-timeout", type=float, default=40.0, help="max wait for core after publishing"
    )
    parser.add_argument("--broker-messages", type=int, default=20000)
    parser.add_argument("--core-workers", type=int, default=1)
    parser.add_argument(
        "--pool-size", type=int, default=None, help="CORE_DB__POOL_SIZE (default: core's own)"
    )
    parser.add_argument("--batch-size", type=int, default=100, help="ingest → core batch size")
    parser.add_argument(
        "--repo-root",
        type=Path,
        default=LIVE_ROOT,
        help="tree whose core, protocol library and migrations to run (default: this checkout)",
    )
    parser.add_argument("--budget", type=float, default=150.0, help="hard stop for the whole run (seconds)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    parser.add_argument("--label", default=None, help="a name for this run in the JSON (e.g. before, after)")
    return parser.parse_args()


async def main_async(args: argparse.Namespace) -> int:
    work_dir = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    port = free_port()
    broker_process: ServiceProcess = mosquitto_process(port, work_dir).start()
    try:
        wait_for_port("127.0.0.1", port, 10, broker_process)
        async with asyncio.timeout(args.budget):
            pipeline, broker = await run_pipeline(args, broker_process, port, work_dir)
    except TimeoutError:
        print(f"stopped: the run exceeded its {args.budget:.0f}s budget", file=sys.stderr)
        return 1
    finally:
        broker_process.stop()
    lines = render(pipeline, broker)
    print("\n".join(lines))
    print(f"logs in {work_dir}")
    report: dict[str, Any] = {
        "bench": "pipeline",
        "label": args.label,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "code": CodeTree(args.repo_root.resolve()).describe(),
        "machine": machine(),
        "broker_bare": asdict(broker),
        "pipeline": asdict(pipeline),
        "target": {"uploads_per_second": 1000, "p99_ms": 1000},
        "meets_target": pipeline.sustained_per_second >= 1000 and pipeline.latency_ms.get("p99", 1e9) < 1000,
        "text": lines,
    }
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False))
        print(f"figures written to {args.json}")
    return 0


def main() -> int:
    return asyncio.run(main_async(parse_args()))


if __name__ == "__main__":
    sys.exit(main())
