"""Benchmark of core's internal endpoint against PostgreSQL, with a raw-asyncpg ceiling.

    uv run python bench/bench_core.py [--workers 2] [--seconds 4]

Creates its own database on 127.0.0.1 (dropped at the end), migrates it, starts core under uvicorn in a
subprocess on a free port, logs in a service account, then measures signed 12-slot ``full`` syncs:
the single-event endpoint at concurrency 1, 8 and 32, the batch endpoint, and the same writes done
straight with asyncpg (no HTTP, no ORM) as the ceiling. Everything is bounded (< 90 s).
Targets: single-event ≥ 400 syncs/s at concurrency 8 with p99 < 100 ms; batch ≥ 40 % of the ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from chargeghar_core.auth.accounts import create_account
from chargeghar_core.auth.models import Role
from chargeghar_core.kit.migrate import migrate
from chargeghar_core.settings import DatabaseSettings, HmacSettings, JwtSettings, Settings
from chargeghar_protocol.signing import signed_headers

ADMIN_URL = os.environ.get("BENCH_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
HMAC_SECRET = "bench-hmac-secret-" + "x" * 24
JWT_SECRET = "bench-jwt-secret-" + "y" * 24
SLOTS = 12
STATIONS_PER_WORKER = 4
BATCH_SIZE = 50
HARD_DEADLINE_S = 85.0
REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_url(name: str, driver: str = "postgresql+asyncpg") -> str:
    rest = ADMIN_URL.split("://", 1)[1].rsplit("/", 1)[0]
    return f"{driver}://{rest}/{name}"


# --------------------------------------------------------------------------------------------- payloads


@dataclass
class Cabinet:
    imei: str
    banks: list[str]
    tick: int = 0

    def full_event(self) -> dict[str, Any]:
        """A 12-slot snapshot; every call rotates which slots hold the banks (realistic churn)."""
        self.tick += 1
        now = datetime.now(UTC).isoformat()
        slots: list[dict[str, Any]] = []
        power_banks: list[dict[str, Any]] = []
        for number in range(1, SLOTS + 1):
            index = (number + self.tick) % SLOTS
            serial = self.banks[index] if index < len(self.banks) else None
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


def make_cabinets(count: int) -> list[Cabinet]:
    cabinets = []
    for index in range(count):
        imei = str(868000000000000 + index)
        banks = [str(50_000_000 + index * 100 + b) for b in range(8)]  # 8 of 12 slots occupied
        cabinets.append(Cabinet(imei, banks))
    return cabinets


# --------------------------------------------------------------------------------------------- stats


@dataclass
class Result:
    name: str
    syncs: int
    seconds: float
    latencies_ms: list[float]
    errors: int

    @property
    def rate(self) -> float:
        return self.syncs / self.seconds if self.seconds else 0.0

    def percentile(self, fraction: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    def line(self) -> str:
        return (
            f"{self.name:<34} {self.rate:8.1f} syncs/s   p50 {self.percentile(0.50):7.2f} ms   "
            f"p95 {self.percentile(0.95):7.2f} ms   p99 {self.percentile(0.99):7.2f} ms   "
            f"({self.syncs} syncs, {self.errors} errors)"
        )


async def run_workers(
    name: str, concurrency: int, seconds: float, one: Callable[[int], Awaitable[int]]
) -> Result:
    """``one(worker)`` performs one request and returns how many syncs it carried (0 = failed)."""
    latencies: list[float] = []
    counts = [0, 0]  # syncs, errors
    stop_at = time.perf_counter() + seconds

    async def worker(number: int) -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            carried = await one(number)
            latencies.append((time.perf_counter() - started) * 1000)
            if carried:
                counts[0] += carried
            else:
                counts[1] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return Result(name, counts[0], time.perf_counter() - started, latencies, counts[1])


# --------------------------------------------------------------------------------------------- HTTP


class RawHttpConnection:
    """A minimal HTTP/1.1 keep-alive client, one request at a time. The load generator shares the CPUs
    with core and PostgreSQL, so it must cost as little as possible (httpx spends several hundred µs of
    CPU per request, which would be taken from the server being measured)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        lines = [f"POST {path} HTTP/1.1", f"Host: {self.host}", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class CoreCaller:
    def __init__(self, host: str, port: int, token: str) -> None:
        self.host = host
        self.port = port
        self.token = token

    def signed(self, body: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        raw = json.dumps(body, separators=(",", ":")).encode()
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        headers.update(signed_headers(HMAC_SECRET, raw))
        return raw, headers

    def connection(self) -> RawHttpConnection:
        return RawHttpConnection(self.host, self.port)


class PreparedRequests:
    """Signed bodies built before the clock starts (building and signing a 12-slot snapshot is client
    work, not server work); built on the fly if a fast run uses them all."""

    def __init__(
        self, caller: CoreCaller, make_body: Callable[[int], dict[str, Any]], per_worker: int, workers: int
    ):
        self.caller = caller
        self.make_body = make_body
        self.queues = [[caller.signed(make_body(w)) for _ in range(per_worker)] for w in range(workers)]

    def next(self, worker: int) -> tuple[bytes, dict[str, str]]:
        queue = self.queues[worker]
        return queue.pop() if queue else self.caller.signed(self.make_body(worker))


def _own(cabinets: list[Cabinet], worker: int, count: int) -> list[Cabinet]:
    # Each worker owns its cabinets: no two requests wait on one station's row lock, and one cabinet's
    # snapshots arrive in order (an older one would be recorded as stale, not applied).
    return cabinets[(worker * count) % len(cabinets) :][:count]


async def bench_single(
    caller: CoreCaller, cabinets: list[Cabinet], concurrency: int, seconds: float
) -> Result:
    def body(worker: int) -> dict[str, Any]:
        return random.choice(_own(cabinets, worker, STATIONS_PER_WORKER)).full_event()

    prepared = PreparedRequests(caller, body, per_worker=min(1200, 4000 // concurrency), workers=concurrency)
    connections = [caller.connection() for _ in range(concurrency)]
    for worker in range(concurrency):  # requests are popped from the end: keep per-cabinet order
        prepared.queues[worker].reverse()

    async def one(worker: int) -> int:
        raw, headers = prepared.next(worker)
        status, _ = await connections[worker].post("/api/internal/stations/data", raw, headers)
        return 1 if status == 200 else 0

    try:
        return await run_workers(f"single event, concurrency {concurrency}", concurrency, seconds, one)
    finally:
        for connection in connections:
            await connection.close()


async def bench_batch(
    caller: CoreCaller, cabinets: list[Cabinet], concurrency: int, seconds: float
) -> Result:
    def body(worker: int) -> dict[str, Any]:
        return {"events": [cabinet.full_event() for cabinet in _own(cabinets, worker, BATCH_SIZE)]}

    prepared = PreparedRequests(caller, body, per_worker=4, workers=concurrency)
    for worker in range(concurrency):
        prepared.queues[worker].reverse()
    connections = [caller.connection() for _ in range(concurrency)]

    async def one(worker: int) -> int:
        raw, headers = prepared.next(worker)
        status, answer = await connections[worker].post("/api/internal/stations/data/batch", raw, headers)
        if status != 200:
            return 0
        return sum(1 for item in json.loads(answer)["data"]["results"] if item["success"])

    try:
        return await run_workers(
            f"batch of {BATCH_SIZE}, concurrency {concurrency}", concurrency, seconds, one
        )
    finally:
        for connection in connections:
            await connection.close()


# --------------------------------------------------------------------------------------------- ceiling


class RawWriter:
    """The rows core writes for one applied snapshot, with the same four statements core sends on
    PostgreSQL (claim, station lock, banks, slots + station + result + sync log), straight with asyncpg:
    no HTTP, no framework, no ORM, no validation. The difference to core is the cost of everything else."""

    CLAIM = (
        "INSERT INTO processed_events (event_key, event_type, created_at) VALUES ($1, 'full', $2) "
        "ON CONFLICT (event_key) DO NOTHING RETURNING event_key"
    )
    LOCK = "SELECT id, observed_at, status, hardware_info FROM stations WHERE imei = $1 FOR UPDATE"
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
            station = await connection.fetchrow(self.LOCK, event["device"]["imei"])
            station_id = station["id"]
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


async def bench_ceiling(db_name: str, cabinets: list[Cabinet], concurrency: int, seconds: float) -> Result:
    pool = await asyncpg.create_pool(
        database_url(db_name, "postgresql"), min_size=concurrency, max_size=concurrency
    )
    try:
        writer = RawWriter(pool)

        async def one(worker: int) -> int:
            own = cabinets[(worker * STATIONS_PER_WORKER) % len(cabinets) :][:STATIONS_PER_WORKER]
            await writer.sync(random.choice(own).full_event())
            return 1

        return await run_workers(f"asyncpg ceiling, concurrency {concurrency}", concurrency, seconds, one)
    finally:
        await pool.close()


# --------------------------------------------------------------------------------------------- orchestration


async def admin_execute(sql: str) -> None:
    connection = await asyncpg.connect(ADMIN_URL, timeout=5)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


def core_environment(db_name: str, port: int, workers: int) -> dict[str, str]:
    return {
        **os.environ,
        "CORE_ENVIRONMENT": "production",
        "CORE_LOG_LEVEL": "WARNING",
        "CORE_DB__URL": database_url(db_name),
        "CORE_DB__POOL_SIZE": "20",
        "CORE_DB__ALEMBIC_INI": str(REPO_ROOT / "alembic.ini"),
        "CORE_JWT__SECRET": JWT_SECRET,
        "CORE_HMAC__SECRET": HMAC_SECRET,
        "CORE_INTERNAL__RATE_LIMIT_PER_MINUTE": "0",
        "CORE_PORT": str(port),
        "CORE_WORKERS": str(workers),
        "CORE_DOCS_ENABLED": "false",
    }


async def wait_healthy(base_url: str, process: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base_url, timeout=1.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"core exited with {process.returncode}")
            try:
                if (await client.get("/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("core did not become healthy")


async def main_async(args: argparse.Namespace) -> int:
    started = time.monotonic()
    db_name = f"cg_bench_core_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    port = free_port()
    env = core_environment(db_name, port, args.workers)
    await admin_execute(f'CREATE DATABASE "{db_name}"')
    process: subprocess.Popen[bytes] | None = None
    try:
        core_settings = Settings(
            environment="production",
            db=DatabaseSettings(url=env["CORE_DB__URL"]),
            jwt=JwtSettings(secret=JWT_SECRET),
            hmac=HmacSettings(secret=HMAC_SECRET),
        )
        await migrate(core_settings.db)
        await create_account(core_settings, "bench@example.com", "bench-password-123", Role.SERVICE)
        process = subprocess.Popen(  # noqa: ASYNC220 - started once, before any measurement
            [sys.executable, "-m", "chargeghar_core", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        base_url = f"http://127.0.0.1:{port}"
        await wait_healthy(base_url, process)
        async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as client:
            login = await client.post(
                "/api/admin/login", json={"email": "bench@example.com", "password": "bench-password-123"}
            )
            login.raise_for_status()
            caller = CoreCaller("127.0.0.1", port, login.json()["data"]["access_token"])
            cabinets = make_cabinets(max(32 * STATIONS_PER_WORKER, 8 * BATCH_SIZE))
            for chunk in range(0, len(cabinets), BATCH_SIZE):  # first sight: creates stations and banks
                raw, headers = caller.signed(
                    {"events": [cabinet.full_event() for cabinet in cabinets[chunk : chunk + BATCH_SIZE]]}
                )
                created = await client.post("/api/internal/stations/data/batch", content=raw, headers=headers)
                created.raise_for_status()

        print(
            f"core: {args.workers} uvicorn worker(s), PostgreSQL, {SLOTS}-slot full syncs, "
            f"{args.seconds} s each"
        )
        results = []
        await bench_single(caller, cabinets, 4, 1.0)  # warm-up (connections, statement caches)
        for concurrency in (1, 8, 32):
            results.append(await bench_single(caller, cabinets, concurrency, args.seconds))
            print(results[-1].line(), flush=True)
        batch = await bench_batch(caller, cabinets, 8, args.seconds)
        print(batch.line(), flush=True)
        ceiling = await bench_ceiling(db_name, cabinets, 8, args.seconds)
        print(ceiling.line())

        single_8 = results[1]
        print()
        print(
            f"single-event @8: {single_8.rate:.0f}/s (target ≥ 400), p99 {single_8.percentile(0.99):.1f} ms "
            f"(target < 100)"
        )
        print(f"batch / ceiling: {batch.rate / ceiling.rate * 100:.0f} % (target ≥ 40 %)")
        print(f"total {time.monotonic() - started:.1f} s")
        return 0
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        await admin_execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers for core (default 2)")
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each measurement")
    args = parser.parse_args()
    return asyncio.run(asyncio.wait_for(main_async(args), HARD_DEADLINE_S))


if __name__ == "__main__":
    sys.exit(main())
