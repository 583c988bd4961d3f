"""Core's signed station-event endpoints under load, with the CPU each request costs core and PostgreSQL.

    uv run python bench/bench_core.py [--workers 2] [--seconds 3] [--json out.json] [--repo-root DIR]

Creates its own PostgreSQL database on 127.0.0.1 (dropped at the end), migrates it and creates a service
account with the measured tree's own commands, starts core under uvicorn on a free loopback port, waits
for readiness (up to --startup-timeout, printing progress), seeds 200 twelve-slot stations, then measures,
each phase for --seconds (longer, up to 2.5 ×, until it carried --min-requests on a slow machine):

- ``GET /health`` at C=1/8/32: no database, no signature; the framework's floor in the same run;
- ``full`` snapshots at C=1/8/32 (8 of 12 slots hold a bank; every snapshot moves the banks one slot on);
- ``returned`` at C=1/8/32: a bank of the station returned into one of its empty slots (no open rental, so
  core re-homes it; the rentals lookup runs and finds nothing);
- the batch endpoint, ``full`` events in batches of --batch-size at C=--batch-concurrency (per event);
- with --ceiling, the same ``full`` writes as hand-written asyncpg statements (no HTTP, no ORM).

Each phase reports requests/s, latency percentiles and the CPU milliseconds per request (per event for the
batch) of core (uvicorn master + workers), of the PostgreSQL backends connected to the bench database and of
this load generator, read from /proc. The whole run stops after --deadline seconds whatever happens.

Targets (issue #12), server + PostgreSQL CPU at C=8: full ≤ 2.5 ms/request, returned ≤ 1.5 ms/request,
batch ≤ 0.8 ms/event.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from bench_support import CPU_NOTE, LIVE_ROOT, CodeTree, fmt, machine, per, percentile
from chargeghar_ingest.simulator.stack import ServiceProcess, free_port, python_module
from chargeghar_protocol.signing import signed_headers
from proc_cpu import CpuMeter, PhaseCpu, PostgresBackends, PostgresServer, ProcessTree

ADMIN_URL = os.environ.get("BENCH_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
HMAC_SECRET = "bench-hmac-secret-" + "x" * 24
JWT_SECRET = "bench-jwt-secret-" + "y" * 24
SERVICE_EMAIL = "bench@chargeghar.local"
SERVICE_PASSWORD = "bench-password-123"  # noqa: S105 - a throwaway account in a throwaway database
SLOTS = 12
BANKS_PER_STATION = 8
STATIONS_PER_WORKER = 4
CONCURRENCIES = (1, 8, 32)
SEED_BATCH = 50
INTERNAL_DATA = "/api/internal/stations/data"
INTERNAL_BATCH = "/api/internal/stations/data/batch"
TARGETS_MS = {"full": 2.5, "returned": 1.5, "batch": 0.8}  # server + PostgreSQL, C=8 (batch: per event)
CPU_GROUPS = ("server", "postgres", "postgres_all")


def database_url(name: str, driver: str = "postgresql+asyncpg") -> str:
    rest = ADMIN_URL.split("://", 1)[1].rsplit("/", 1)[0]
    return f"{driver}://{rest}/{name}"


def say(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------------------------- payloads


@dataclass
class Cabinet:
    """One simulated station: which bank sits in which slot, as the last event built for it says."""

    imei: str
    layout: list[str | None]  # index = slot number - 1
    tick: int = 0

    @classmethod
    def numbered(cls, index: int) -> Cabinet:
        banks: list[str | None] = [str(50_000_000 + index * 100 + b) for b in range(BANKS_PER_STATION)]
        return cls(str(868000000000000 + index), banks + [None] * (SLOTS - BANKS_PER_STATION))

    def full_event(self, *, move: bool = True) -> dict[str, Any]:
        """A 12-slot snapshot; with ``move`` every bank has moved one slot on since the last one (churn in
        every slot and bank row, as a busy station's snapshots show)."""
        self.tick += 1
        if move:
            self.layout = self.layout[-1:] + self.layout[:-1]
        now = datetime.now(UTC).isoformat()
        slots: list[dict[str, Any]] = []
        power_banks: list[dict[str, Any]] = []
        for number, serial in enumerate(self.layout, start=1):
            battery = 40 + (number * 7 + self.tick) % 60
            slot: dict[str, Any] = {
                "slot_number": number,
                "status": "OCCUPIED" if serial else "AVAILABLE",
                "battery_level": battery if serial else 0,
                "slot_metadata": {
                    "micro_switch": "0" if serial else "1",
                    "solenoid_valve": "0",
                    "lock_count": 0,
                },
            }
            if serial:
                slot["power_bank_serial"] = serial
                power_banks.append(
                    {
                        "serial_number": serial,
                        "status": "AVAILABLE",
                        "battery_level": battery,
                        "current_slot": number,
                        "hardware_info": {"temperature": 24, "voltage": 50, "current": 2, "area_code": 73},
                    }
                )
            slots.append(slot)
        return {
            "type": "full",
            "timestamp": int(time.time()),
            "event_id": uuid.uuid4().hex,
            "observed_at": now,
            "device": {
                "serial_number": self.imei,
                "imei": self.imei,
                "signal_strength": "27",
                "last_heartbeat": now,
                "status": "ONLINE",
                "hardware_info": {"protocol_version": "0xA8"},
            },
            "station": {"serial_number": self.imei, "total_slots": SLOTS},
            "slots": slots,
            "power_banks": power_banks,
        }

    def returned_event(self) -> dict[str, Any]:
        """A bank of this station returned into one of its empty slots, as the ingest forwards a 0x40 frame
        (source mqtt, ``observed_at`` and ``event_id`` set). The layout follows, so the next return moves
        another bank into another empty slot."""
        self.tick += 1
        occupied = [index for index, serial in enumerate(self.layout) if serial]
        empty = [index for index, serial in enumerate(self.layout) if not serial]
        source = occupied[self.tick % len(occupied)]
        target = empty[self.tick % len(empty)]
        serial = self.layout[source]
        assert serial is not None
        self.layout[source], self.layout[target] = None, serial
        now = datetime.now(UTC).isoformat()
        return {
            "type": "returned",
            "timestamp": int(time.time()),
            "event_id": uuid.uuid4().hex,
            "observed_at": now,
            "device": {"serial_number": self.imei, "imei": self.imei, "last_heartbeat": now},
            "return_event": {
                "power_bank_serial": serial,
                "slot_number": target + 1,
                "battery_level": 50 + self.tick % 50,
                "returned_at": now,
                "condition": "NORMAL",
                "hardware_info": {},
                "source": "mqtt",
            },
        }


def owned(cabinets: list[Cabinet], worker: int, count: int) -> list[Cabinet]:
    """The cabinets one load worker owns in a phase: no two requests wait on one station's row lock, and a
    cabinet's events arrive in order (an older snapshot would be recorded as stale, not applied)."""
    start = (worker * count) % len(cabinets)
    return cabinets[start : start + count]


# --------------------------------------------------------------------------------------------- HTTP


class HttpConnection:
    """A minimal HTTP/1.1 keep-alive client, one request at a time. The load generator shares the two CPUs
    with core and PostgreSQL, so it must cost little: httpx spends several hundred µs of CPU per request,
    which would be taken from the server being measured."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionResetError("server closed the connection")
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def reset(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Signer:
    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, body: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        raw = json.dumps(body, separators=(",", ":")).encode()
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        headers.update(signed_headers(HMAC_SECRET, raw))
        return raw, headers


class Prepared:
    """Signed bodies per worker, built before the clock starts (building and signing a 12-slot snapshot
    is client work, not server work) in the order they are sent; built on the fly if a fast run uses them
    all."""

    def __init__(
        self, sign: Signer, make_body: Callable[[int], dict[str, Any]], per_worker: int, workers: int
    ) -> None:
        self.sign = sign
        self.make_body = make_body
        self.queues = [[sign(make_body(w)) for _ in range(per_worker)][::-1] for w in range(workers)]

    def next(self, worker: int) -> tuple[bytes, dict[str, str]]:
        queue = self.queues[worker]
        return queue.pop() if queue else self.sign(self.make_body(worker))


# --------------------------------------------------------------------------------------------- phases


@dataclass
class Phase:
    """One measured phase. ``items`` is what CPU is divided by: answered requests, or applied batch events."""

    name: str
    concurrency: int
    requests: int
    items: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    cpu: PhaseCpu | None
    unit: str = "req"
    first_error: str | None = None

    def cpu_per_item(self, group: str) -> float | None:
        return None if self.cpu is None else per(self.cpu.ms(group), self.items)

    @property
    def server_plus_postgres(self) -> float | None:
        server, postgres = self.cpu_per_item("server"), self.cpu_per_item("postgres")
        return None if server is None or postgres is None else server + postgres

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)
        cpu: dict[str, Any] = {}
        if self.cpu is not None:
            cpu = {f"{group}_ms_per_{self.unit}": _round(self.cpu_per_item(group)) for group in CPU_GROUPS}
            cpu[f"server_plus_postgres_ms_per_{self.unit}"] = _round(self.server_plus_postgres)
            cpu[f"loadgen_ms_per_{self.unit}"] = _round(per(self.cpu.loadgen_ms, self.items))
            cpu["totals_ms"] = {name: round(group.cpu_ms, 1) for name, group in self.cpu.groups.items()}
            cpu["totals_ms"]["loadgen"] = round(self.cpu.loadgen_ms, 1)
            cpu["totals_ms"]["proc_sampler"] = round(self.cpu.sampler_ms, 1)
            postgres = self.cpu.groups.get("postgres")
            cpu["postgres_backends_connected"] = postgres.joined if postgres else None
            cpu["postgres_backends_disconnected"] = postgres.left if postgres else None
            cpu["machine_busy_pct"] = _round(self.cpu.machine_busy_pct, 1)
        return {
            "phase": self.name,
            "concurrency": self.concurrency,
            "unit": self.unit,
            "seconds": round(self.seconds, 3),
            "requests": self.requests,
            "items": self.items,
            "errors": self.errors,
            "first_error": self.first_error,
            "requests_per_second": round(self.requests / self.seconds, 1) if self.seconds else None,
            "items_per_second": round(self.items / self.seconds, 1) if self.seconds else None,
            "latency_ms": {
                name: _round(percentile(ordered, fraction))
                for name, fraction in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))
            },
            "cpu": cpu,
        }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


One = Callable[[int, HttpConnection], Awaitable[int]]


@dataclass(frozen=True)
class PhaseLength:
    """At least ``seconds``; on a slow (loaded) machine also until ``min_items`` were carried, because a
    few dozen requests give a noisy CPU-per-request figure; never longer than ``max_seconds``."""

    seconds: float
    min_items: int = 0
    max_seconds: float = 0.0

    def over(self, elapsed: float, items: int) -> bool:
        if elapsed >= max(self.seconds, self.max_seconds):
            return True
        return elapsed >= self.seconds and items >= self.min_items


async def run_phase(
    meter: CpuMeter, name: str, port: int, concurrency: int, length: PhaseLength, one: One, unit: str = "req"
) -> Phase:
    """``one(worker, connection)`` sends one request and returns how many items it carried (0 = failed)."""
    latencies: list[float] = []
    counts = {"requests": 0, "items": 0, "errors": 0}
    first_error: list[str] = []
    connections = [HttpConnection(port) for _ in range(concurrency)]
    began = time.perf_counter()

    async def worker(number: int) -> None:
        connection = connections[number]
        while not length.over(time.perf_counter() - began, counts["items"]):
            started = time.perf_counter()
            try:
                carried = await one(number, connection)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                connection.reset()
                carried = 0
                if not first_error:
                    first_error.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.05)  # a dead server must not turn this loop into a busy spin
            else:
                latencies.append((time.perf_counter() - started) * 1000)
            counts["requests"] += 1
            if carried:
                counts["items"] += carried
            else:
                counts["errors"] += 1

    meter.begin()
    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
    finally:
        elapsed = time.perf_counter() - started
        cpu = meter.end()
        for connection in connections:
            connection.reset()
        answered_error = _ERRORS.pop(name, None)
    return Phase(
        name,
        concurrency,
        counts["requests"],
        counts["items"],
        counts["errors"],
        elapsed,
        latencies,
        cpu,
        unit,
        first_error[0] if first_error else answered_error,
    )


# The first non-2xx answer of a phase, for the report (a broken tree answers 500s rather than dropping).
_ERRORS: dict[str, str] = {}


def _note_error(phase: str, status: int, body: bytes) -> None:
    _ERRORS.setdefault(phase, f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}")


async def health_phase(meter: CpuMeter, port: int, concurrency: int, length: PhaseLength) -> Phase:
    async def one(worker: int, connection: HttpConnection) -> int:
        status, body = await connection.request("GET", "/health")
        if status != 200:
            _note_error("health", status, body)
        return 1 if status == 200 else 0

    return await run_phase(meter, "health", port, concurrency, length, one)


def _prepared_count(concurrency: int, seconds: float, expected_rate: float = 2500.0) -> int:
    return max(20, min(2000, int(expected_rate * seconds / concurrency)))


async def full_phase(
    meter: CpuMeter, port: int, sign: Signer, cabinets: list[Cabinet], concurrency: int, length: PhaseLength
) -> Phase:
    def body(worker: int) -> dict[str, Any]:
        return random.choice(owned(cabinets, worker, STATIONS_PER_WORKER)).full_event()

    prepared = Prepared(sign, body, _prepared_count(concurrency, length.seconds), concurrency)

    async def one(worker: int, connection: HttpConnection) -> int:
        raw, headers = prepared.next(worker)
        status, answer = await connection.request("POST", INTERNAL_DATA, raw, headers)
        if status != 200:
            _note_error("full", status, answer)
        return 1 if status == 200 else 0

    return await run_phase(meter, "full", port, concurrency, length, one)


async def returned_phase(
    meter: CpuMeter, port: int, sign: Signer, cabinets: list[Cabinet], concurrency: int, length: PhaseLength
) -> Phase:
    """Built and signed on the fly (a small body): each return must follow the one actually sent before it,
    or the bank it moves would not be where the event assumes."""
    rotation = [0] * concurrency

    async def one(worker: int, connection: HttpConnection) -> int:
        own = owned(cabinets, worker, STATIONS_PER_WORKER)
        rotation[worker] += 1
        raw, headers = sign(own[rotation[worker] % len(own)].returned_event())
        status, answer = await connection.request("POST", INTERNAL_DATA, raw, headers)
        if status != 200:
            _note_error("returned", status, answer)
        return 1 if status == 200 else 0

    return await run_phase(meter, "returned", port, concurrency, length, one)


async def batch_phase(
    meter: CpuMeter,
    port: int,
    sign: Signer,
    cabinets: list[Cabinet],
    concurrency: int,
    size: int,
    length: PhaseLength,
) -> Phase:
    def body(worker: int) -> dict[str, Any]:
        return {"events": [cabinet.full_event() for cabinet in owned(cabinets, worker, size)]}

    prepared = Prepared(sign, body, _prepared_count(concurrency, length.seconds, 2500.0 / size), concurrency)

    async def one(worker: int, connection: HttpConnection) -> int:
        raw, headers = prepared.next(worker)
        status, answer = await connection.request("POST", INTERNAL_BATCH, raw, headers)
        if status != 200:
            _note_error(f"batch×{size}", status, answer)
            return 0
        return sum(1 for item in json.loads(answer)["data"]["results"] if item["success"])

    return await run_phase(meter, f"batch×{size}", port, concurrency, length, one, unit="event")


async def send_layouts(client: httpx.AsyncClient, sign: Signer, cabinets: list[Cabinet]) -> None:
    """One snapshot per cabinet of the layout the bench believes in (first sight creates the stations and
    banks; later, it puts back what the returns assume after snapshots built but never sent)."""
    for start in range(0, len(cabinets), SEED_BATCH):
        events = [cabinet.full_event(move=False) for cabinet in cabinets[start : start + SEED_BATCH]]
        raw, headers = sign({"events": events})
        answer = await client.post(INTERNAL_BATCH, content=raw, headers=headers)
        answer.raise_for_status()
        failed = [item for item in answer.json()["data"]["results"] if not item["success"]]
        if failed:
            raise RuntimeError(f"seeding failed for {len(failed)} events, first: {failed[0]}")


# --------------------------------------------------------------------------------------------- ceiling


class RawWriter:
    """The rows core writes for one applied snapshot (claim, station lock, banks, slots + station + result +
    sync log) straight with asyncpg: no HTTP, no framework, no ORM, no validation. Written against the
    schema as of the hot-path work; opt-in (--ceiling) because a schema change can break it."""

    CLAIM = (
        "INSERT INTO processed_events (event_key, event_type, created_at) VALUES ($1, 'full', $2) "
        "ON CONFLICT (event_key) DO NOTHING RETURNING event_key"
    )
    LOCK = "SELECT id FROM stations WHERE imei = $1 FOR UPDATE"
    BANKS = """
        WITH banks AS (
            INSERT INTO power_banks (id, serial_number, model, capacity_mah, status, battery_level,
                hardware_info, current_station_id, current_slot_number, total_rentals, charge_cycles,
                last_seen_at, created_at)
            SELECT gen_random_uuid(), t.serial, 'STANDARD', 5000, t.status, t.battery, t.info::jsonb, $1,
                t.slot, 0, 0, $2, $2
            FROM unnest($3::text[], $4::text[], $5::int[], $6::text[], $7::int[])
                AS t(serial, status, battery, info, slot)
            ON CONFLICT (serial_number) DO UPDATE SET
                status = CASE WHEN power_banks.status IN ('MAINTENANCE', 'DAMAGED') THEN power_banks.status
                              ELSE excluded.status END,
                battery_level = excluded.battery_level, hardware_info = excluded.hardware_info,
                current_station_id = excluded.current_station_id,
                current_slot_number = excluded.current_slot_number,
                last_seen_at = excluded.last_seen_at, modified_at = excluded.last_seen_at
            RETURNING serial_number, id
        ), detached AS (
            UPDATE power_banks SET current_station_id = NULL, current_slot_number = NULL
            WHERE current_station_id = $1 AND NOT (serial_number = ANY($3::text[])) RETURNING 1
        ), released AS (
            UPDATE station_slots SET power_bank_id = NULL,
                status = CASE WHEN status = 'OCCUPIED' THEN 'AVAILABLE' ELSE status END
            WHERE power_bank_id IS NOT NULL AND (station_id = $1 OR power_bank_id IN (SELECT id FROM banks))
            RETURNING 1
        )
        SELECT serial_number, id FROM banks
    """
    SLOTS_AND_FINISH = """
        WITH station_row AS (
            UPDATE stations SET status = 'ONLINE', total_slots = $3, hardware_info = $4::jsonb,
                last_heartbeat = $2, observed_at = $2, modified_at = $2
            WHERE id = $1 RETURNING 1
        ), completed AS (
            UPDATE processed_events SET outcome = 'SUCCESS', station_id = $1, result = $5::jsonb
            WHERE event_key = $6 RETURNING 1
        ), logged AS (
            INSERT INTO sync_logs (id, station_id, station_key, event_type, event_id, outcome, payload, error,
                duration_ms, created_at)
            VALUES (gen_random_uuid(), $1, $7, 'full', $6, 'SUCCESS', $8::jsonb, NULL, 0, $2) RETURNING 1
        )
        INSERT INTO station_slots (id, station_id, slot_number, status, battery_level, power_bank_id,
            slot_metadata, created_at)
        SELECT gen_random_uuid(), $1, t.number, t.status, t.battery, t.bank, t.metadata::jsonb, $2
        FROM unnest($9::int[], $10::text[], $11::int[], $12::uuid[], $13::text[])
            AS t(number, status, battery, bank, metadata)
        ON CONFLICT (station_id, slot_number) DO UPDATE SET status = excluded.status,
            battery_level = excluded.battery_level, power_bank_id = excluded.power_bank_id,
            slot_metadata = excluded.slot_metadata, modified_at = excluded.created_at
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def sync(self, event: dict[str, Any]) -> None:
        now = datetime.now(UTC)
        banks = event["power_banks"]
        slots = event["slots"]
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.fetch(self.CLAIM, event["event_id"], now)
            station_id = (await connection.fetchrow(self.LOCK, event["device"]["imei"]))["id"]
            rows = await connection.fetch(
                self.BANKS,
                station_id,
                now,
                [bank["serial_number"] for bank in banks],
                [bank["status"] for bank in banks],
                [bank["battery_level"] for bank in banks],
                [json.dumps(bank["hardware_info"]) for bank in banks],
                [bank["current_slot"] for bank in banks],
            )
            bank_ids = {row["serial_number"]: row["id"] for row in rows}
            await connection.execute(
                self.SLOTS_AND_FINISH,
                station_id,
                now,
                SLOTS,
                json.dumps({"signal_strength": "27", "protocol_version": "0xA8"}),
                json.dumps({"station_id": str(station_id), "applied": True}),
                event["event_id"],
                event["device"]["imei"],
                json.dumps(event),
                [slot["slot_number"] for slot in slots],
                [slot["status"] for slot in slots],
                [slot["battery_level"] for slot in slots],
                [bank_ids.get(slot.get("power_bank_serial", "")) for slot in slots],
                [json.dumps(slot["slot_metadata"]) for slot in slots],
            )


async def ceiling_phase(
    meter: CpuMeter, db_name: str, cabinets: list[Cabinet], concurrency: int, seconds: float
) -> Phase:
    pool = await asyncpg.create_pool(
        database_url(db_name, "postgresql"), min_size=concurrency, max_size=concurrency
    )
    latencies: list[float] = []
    done = [0]
    try:
        writer = RawWriter(pool)
        stop_at = time.perf_counter() + seconds

        async def worker(number: int) -> None:
            own = owned(cabinets, number, STATIONS_PER_WORKER)
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                await writer.sync(random.choice(own).full_event())
                latencies.append((time.perf_counter() - started) * 1000)
                done[0] += 1

        meter.begin()
        started = time.perf_counter()
        try:
            await asyncio.gather(*(worker(n) for n in range(concurrency)))
        finally:
            elapsed = time.perf_counter() - started
            cpu = meter.end()
    finally:
        await pool.close()
    # "server" here is nothing: the writes go straight to PostgreSQL from this process (loadgen).
    return Phase("asyncpg", concurrency, done[0], done[0], 0, elapsed, latencies, cpu)


# --------------------------------------------------------------------------------------------- core


async def admin_execute(sql: str) -> None:
    connection = await asyncpg.connect(ADMIN_URL, timeout=10)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def postgres_version() -> str:
    connection = await asyncpg.connect(ADMIN_URL, timeout=10)
    try:
        return str(await connection.fetchval("SHOW server_version"))
    finally:
        await connection.close()


@dataclass
class CoreUnderTest:
    """Core of ``tree`` as a child process on its own database and port, with its log in ``log_dir``."""

    tree: CodeTree
    db_name: str
    workers: int
    pool_size: int | None
    environment: str
    log_dir: Path
    port: int = field(default_factory=free_port)
    process: ServiceProcess | None = None

    def env(self) -> dict[str, str]:
        # Inherited CORE_* variables (a developer's shell) must not leak into the measured configuration.
        env = {key: value for key, value in os.environ.items() if not key.startswith("CORE_")}
        env.update(
            {
                "CORE_ENVIRONMENT": self.environment,
                "CORE_LOG_LEVEL": "WARNING",
                "CORE_DB__URL": database_url(self.db_name),
                "CORE_JWT__SECRET": JWT_SECRET,
                "CORE_HMAC__SECRET": HMAC_SECRET,
                "CORE_INTERNAL__RATE_LIMIT_PER_MINUTE": "0",
                "CORE_DOCS_ENABLED": "false",
                # Production refuses the payment sandbox; the benchmark never pays.
                "CORE_PAYMENTS__SANDBOX_ENABLED": "false",
                **self.tree.core_env(),
            }
        )
        if self.pool_size is not None:
            env["CORE_DB__POOL_SIZE"] = str(self.pool_size)
        return env

    async def _run(self, what: str, command: list[str], within_s: float) -> None:
        result = await asyncio.to_thread(
            subprocess.run,
            command,
            env=self.env(),
            cwd=self.tree.root,
            capture_output=True,
            text=True,
            timeout=within_s,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{what} failed ({result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )

    async def prepare(self, within_s: float) -> None:
        """Migrate with the tree's own alembic.ini and migrations; create the service account the load
        generator logs in with (the tree's own command line)."""
        await self._run("migrate", python_module("chargeghar_core", "migrate"), within_s)
        await self._run(
            "create-service-account",
            python_module(
                "chargeghar_protocol.cli",
                "create-service-account",
                "--email",
                SERVICE_EMAIL,
                "--password",
                SERVICE_PASSWORD,
            ),
            within_s,
        )

    def start(self) -> int:
        self.process = ServiceProcess(
            "core",
            python_module(
                "chargeghar_core",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
            ),
            env=self.env(),
            log_path=self.log_dir / f"core-{self.port}.log",
            cwd=self.tree.root,
        ).start()
        assert self.process.pid is not None
        return self.process.pid

    async def wait_ready(self, within_s: float) -> float:
        """Poll readiness (database reachable) until it answers 200; progress every 10 s. A loaded machine
        can take most of a minute to import and start two workers."""
        assert self.process is not None
        started = time.monotonic()
        last_report = started
        last_state = "no answer yet"
        async with httpx.AsyncClient(base_url=self.base_url, timeout=3.0) as client:
            while time.monotonic() - started < within_s:
                self.process.check_alive()
                try:
                    answer = await client.get("/health/ready")
                    if answer.status_code == 200:
                        return time.monotonic() - started
                    last_state = f"HTTP {answer.status_code}"
                except httpx.TransportError as exc:
                    last_state = type(exc).__name__
                if time.monotonic() - last_report >= 10:
                    last_report = time.monotonic()
                    say(f"  … waiting for core: {last_report - started:.0f} s ({last_state})")
                    # uvicorn's master outlives workers that crash at import and starts new ones: a crash
                    # loop never gets ready, so stop waiting once the log shows it.
                    if self.log_text().count("Traceback") >= 3:
                        raise RuntimeError(f"core's workers keep crashing:\n{self.log_tail()}")
                await asyncio.sleep(0.25)
        raise RuntimeError(f"core not ready after {within_s:.0f} s ({last_state}):\n{self.log_tail()}")

    def log_text(self) -> str:
        path = self.process.log_path if self.process else None
        return path.read_text(errors="replace") if path is not None and path.exists() else ""

    def log_tail(self, lines: int = 15) -> str:
        path = self.process.log_path if self.process else None
        return "\n".join([f"--- {path} ---", *self.log_text().splitlines()[-lines:]])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace_s=10)


# --------------------------------------------------------------------------------------------- report


def table_header() -> list[str]:
    return [
        f"{'phase':<12}{'C':>3} {'items/s':>9} {'p50':>7} {'p95':>7} {'p99':>7} {'err':>5} │"
        f" {'server':>7} {'pg':>6} {'srv+pg':>7} {'loadgen':>8} │ {'pg conn':>7} {'box':>5}",
        f"{'':<12}{'':>3} {'':>9} {'latency ms':>23} {'':>5} │ CPU ms per request (batch: per event)",
    ]


def table_row(phase: Phase) -> str:
    rate = phase.items / phase.seconds if phase.seconds else 0.0
    ordered = sorted(phase.latencies_ms)
    postgres = phase.cpu.groups.get("postgres") if phase.cpu else None
    loadgen = None if phase.cpu is None else per(phase.cpu.loadgen_ms, phase.items)
    return (
        f"{phase.name:<12}{phase.concurrency:>3} {rate:9.1f} {fmt(percentile(ordered, 0.5), 7)}"
        f" {fmt(percentile(ordered, 0.95), 7)} {fmt(percentile(ordered, 0.99), 7)} {phase.errors:>5} │"
        f" {fmt(phase.cpu_per_item('server'), 7)} {fmt(phase.cpu_per_item('postgres'), 6)}"
        f" {fmt(phase.server_plus_postgres, 7)} {fmt(loadgen, 8)} │"
        f" {'-' if postgres is None else f'+{postgres.joined}/-{postgres.left}':>7}"
        f" {fmt(phase.cpu.machine_busy_pct if phase.cpu else None, 4, 0)}%"
    )


def targets(phases: list[Phase], batch_name: str) -> list[dict[str, Any]]:
    found = []
    for name, key, concurrency in (
        ("full", "full", 8),
        ("returned", "returned", 8),
        (batch_name, "batch", None),
    ):
        phase = next(
            (p for p in phases if p.name == name and (concurrency is None or p.concurrency == concurrency)),
            None,
        )
        value = None if phase is None else phase.server_plus_postgres
        found.append(
            {
                "figure": f"{name} server+PostgreSQL CPU ms per {'event' if key == 'batch' else 'request'}"
                + (f" at C={concurrency}" if concurrency else f" at C={phase.concurrency if phase else '?'}"),
                "value": _round(value),
                "target": TARGETS_MS[key],
                "met": None if value is None else value <= TARGETS_MS[key],
            }
        )
    return found


# --------------------------------------------------------------------------------------------- main


async def run(args: argparse.Namespace, report: dict[str, Any]) -> list[Phase]:
    tree = CodeTree(args.repo_root.resolve())
    db_name = f"cg_bench_core_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    log_dir = Path(tempfile.mkdtemp(prefix="bench-core-"))
    core = CoreUnderTest(tree, db_name, args.workers, args.pool_size, args.environment, log_dir)
    deadline = time.monotonic() + args.deadline
    phases: list[Phase] = []
    succeeded = False
    report["code"] = tree.describe()
    report["database"] = db_name
    report["postgres_version"] = await postgres_version()
    say(f"core bench: {report['code']}")
    say(
        f"  {args.workers} uvicorn worker(s), pool size {args.pool_size or 'core default'}, PostgreSQL "
        f"{report['postgres_version']}, database {db_name}, {args.seconds:g} s per phase; "
        f"machine: {report['machine']['cpus']} CPUs, load {report['machine']['load_average']}"
    )
    await admin_execute(f'CREATE DATABASE "{db_name}"')
    meter = CpuMeter([PostgresBackends("postgres", db_name), PostgresServer("postgres_all")])
    try:
        t0 = time.monotonic()
        await core.prepare(within_s=max(10.0, deadline - time.monotonic()))
        say(f"  migrated and service account created in {time.monotonic() - t0:.1f} s")
        meter.add(ProcessTree("server", core.start()))
        ready_s = await core.wait_ready(min(args.startup_timeout, max(1.0, deadline - time.monotonic())))
        say(f"  core ready after {ready_s:.1f} s; seeding stations …")
        meter.start()
        async with httpx.AsyncClient(base_url=core.base_url, timeout=60.0) as client:
            login = await client.post(
                "/api/admin/login", json={"email": SERVICE_EMAIL, "password": SERVICE_PASSWORD}
            )
            login.raise_for_status()
            sign = Signer(login.json()["data"]["access_token"])
            count = max(max(CONCURRENCIES) * STATIONS_PER_WORKER, args.batch_size * args.batch_concurrency)
            cabinets = [Cabinet.numbered(index) for index in range(count)]
            await send_layouts(client, sign, cabinets)
            say(f"  {len(cabinets)} stations × {SLOTS} slots seeded; measuring")
            say("")

            port = core.port
            length = PhaseLength(args.seconds, args.min_requests, args.seconds * 2.5)
            warm_up = PhaseLength(0.5)

            def measured(phase: Phase) -> None:
                phases.append(phase)
                say(table_row(phase))

            # Warm-ups at the highest concurrency: every worker's pool has grown to what it keeps, and the
            # statement caches are filled, before anything is measured.
            top = max(CONCURRENCIES)
            await health_phase(meter, port, 8, warm_up)
            await full_phase(meter, port, sign, cabinets, top, PhaseLength(1.0))
            for line in table_header():
                say(line)
            for concurrency in CONCURRENCIES:
                measured(await health_phase(meter, port, concurrency, length))
            for concurrency in CONCURRENCIES:
                measured(await full_phase(meter, port, sign, cabinets, concurrency, length))
            # Snapshots built and never sent moved the bench's idea of the layouts on: put it back in core.
            await send_layouts(client, sign, cabinets)
            await returned_phase(meter, port, sign, cabinets, top, warm_up)
            for concurrency in CONCURRENCIES:
                measured(await returned_phase(meter, port, sign, cabinets, concurrency, length))
            measured(
                await batch_phase(
                    meter, port, sign, cabinets, args.batch_concurrency, args.batch_size, length
                )
            )
            if args.ceiling:
                try:
                    measured(await ceiling_phase(meter, db_name, cabinets, 8, args.seconds))
                except (asyncpg.PostgresError, OSError) as exc:
                    say(f"  asyncpg ceiling skipped: {type(exc).__name__}: {exc}")
        report["core_ready_seconds"] = round(ready_s, 1)
        report["stations"] = len(cabinets)
        succeeded = True
        return phases
    finally:
        meter.stop()
        core.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(admin_execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'), 30)
        if succeeded:
            shutil.rmtree(log_dir, ignore_errors=True)  # core's log is kept only when something went wrong
        elif core.process is not None and core.process.log_path is not None:
            report["core_log"] = str(core.process.log_path)


def render(phases: list[Phase], report: dict[str, Any], batch_name: str) -> list[str]:
    lines = [*table_header(), *map(table_row, phases)]
    errors = [phase for phase in phases if phase.errors]
    for phase in errors:
        lines.append(
            f"  ! {phase.name} C={phase.concurrency}: {phase.errors} errors, first: {phase.first_error}"
        )
    lines.append("")
    lines.append("targets (server + PostgreSQL CPU):")
    for target in report["targets"]:
        verdict = {True: "met", False: "NOT met", None: "no figure"}[target["met"]]
        lines.append(f"  {target['figure']:<58} {fmt(target['value'], 7)}  (≤ {target['target']})  {verdict}")
    floor = next((p for p in phases if p.name == "health" and p.concurrency == 8), None)
    if floor is not None:
        lines.append(
            "  framework floor: GET /health at C=8 costs core "
            f"{fmt(floor.cpu_per_item('server'), 0)} ms per request"
        )
    lines += [
        "",
        CPU_NOTE,
        "  server  = uvicorn master + workers (utime + stime from /proc/<pid>/stat)",
        "  pg      = PostgreSQL backends connected to the bench database, sampled every 0.5 s; a backend",
        "            that connects and exits between two samples is missed ('pg conn': backends connected /",
        "            disconnected during the phase); the JSON adds postgres_all: every PostgreSQL process of",
        "            every database incl. reaped backends, complete but shared with other work",
        "  loadgen = this process (the load generator), without its /proc sampler",
        f"  box     = how busy the whole machine was, all work ({os.cpu_count() or 1}00 % = all busy)",
    ]
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers for core (default 2)")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each measured phase")
    parser.add_argument(
        "--min-requests",
        type=int,
        default=200,
        help="a slow phase runs on until it carried this many (at most 2.5 × --seconds)",
    )
    parser.add_argument(
        "--pool-size", type=int, default=None, help="CORE_DB__POOL_SIZE (default: core's own)"
    )
    parser.add_argument("--batch-size", type=int, default=50, help="events per batch request")
    parser.add_argument("--batch-concurrency", type=int, default=4, help="batch requests in flight")
    parser.add_argument("--ceiling", action="store_true", help="also measure the raw-asyncpg ceiling")
    parser.add_argument("--environment", default="production", help="CORE_ENVIRONMENT of the measured core")
    parser.add_argument(
        "--repo-root",
        type=Path,
        default=LIVE_ROOT,
        help="tree whose core, protocol library and migrations to run (default: this checkout)",
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=120.0, help="longest wait for core's readiness"
    )
    parser.add_argument("--deadline", type=float, default=240.0, help="hard stop for the whole run (seconds)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    parser.add_argument("--label", default=None, help="a name for this run in the JSON (e.g. before, after)")
    return parser.parse_args(argv)


async def main_async(args: argparse.Namespace) -> int:
    report: dict[str, Any] = {
        "bench": "core",
        "label": args.label,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {
            "workers": args.workers,
            "seconds_per_phase": args.seconds,
            "min_requests_per_phase": args.min_requests,
            "pool_size": args.pool_size,
            "slots": SLOTS,
            "banks_per_station": BANKS_PER_STATION,
            "batch_size": args.batch_size,
            "batch_concurrency": args.batch_concurrency,
            "environment": args.environment,
        },
        "cpu_source": "/proc/<pid>/stat utime+stime; server = uvicorn tree, postgres = backends of the "
        "bench database, postgres_all = every postgres process + postmaster's reaped children, "
        "loadgen = bench process",
    }
    started = time.monotonic()
    try:
        async with asyncio.timeout(args.deadline):
            phases = await run(args, report)
    except TimeoutError:
        say(f"stopped: the run exceeded its {args.deadline:.0f} s deadline")
        if report.get("core_log"):
            say(f"core's log: {report['core_log']}")
        return 1
    except Exception as exc:
        say(f"core bench failed: {type(exc).__name__}: {exc}")
        if report.get("core_log"):
            say(f"core's log: {report['core_log']}")
        return 1
    batch_name = f"batch×{args.batch_size}"
    report["phases"] = [phase.summary() for phase in phases]
    report["targets"] = targets(phases, batch_name)
    report["machine"]["load_average_after"] = machine()["load_average"]
    report["seconds"] = round(time.monotonic() - started, 1)
    lines = render(phases, report, batch_name)
    say("\n".join(lines[len(table_header()) + len(phases) :]))  # the rows were printed as they came
    say(f"total {report['seconds']:.0f} s")
    report["text"] = lines
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False))
        say(f"figures written to {args.json}")
    return 0


def main() -> int:
    return asyncio.run(main_async(parse_args()))


if __name__ == "__main__":
    sys.exit(main())
