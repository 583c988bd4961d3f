"""The durable local spool: every event is committed here before the device gets its answer.

One SQLite file per replica (WAL, ``synchronous=FULL`` so a commit survives power loss). Tables:

- ``events``: waiting for core, in arrival order (``seq``); a row is deleted only after core answered 2xx.
- ``dead_letters``: bad device input (raw bytes as hex) and events core refused for good (403, 4xx).
- ``return_keys``: content keys of returns, so one return reported over MQTT *and* HTTP is one event.
- ``command_audit``: every command sent to a station, its (masked) payload, outcome and timing.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    station TEXT NOT NULL,
    type TEXT NOT NULL,
    body TEXT NOT NULL,
    correlation_id TEXT,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS events_station_seq ON events (station, seq);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    source TEXT NOT NULL,
    station TEXT,
    reason TEXT NOT NULL,
    detail TEXT,
    raw_hex TEXT,
    event_id TEXT,
    body TEXT
);
CREATE TABLE IF NOT EXISTS return_keys (
    station TEXT NOT NULL,
    power_bank_serial TEXT NOT NULL,
    slot_number INTEGER NOT NULL,
    observed_ts REAL NOT NULL,
    event_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS return_keys_lookup
    ON return_keys (station, power_bank_serial, slot_number, observed_ts);
CREATE TABLE IF NOT EXISTS command_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    command_id TEXT NOT NULL,
    station TEXT NOT NULL,
    caller TEXT,
    cmd TEXT NOT NULL,
    payload TEXT NOT NULL,
    qos INTEGER NOT NULL,
    started_at REAL NOT NULL,
    outcome TEXT,
    reply TEXT,
    elapsed_ms INTEGER
);
CREATE INDEX IF NOT EXISTS command_audit_station ON command_audit (station, id);
CREATE INDEX IF NOT EXISTS command_audit_command ON command_audit (command_id);
"""


_AUDIT_COLUMNS = "command_id, station, caller, cmd, payload, qos, outcome, reply, elapsed_ms"
_AUDIT_BY_STATION = f"SELECT {_AUDIT_COLUMNS} FROM command_audit WHERE station = ? ORDER BY id"  # noqa: S608
_AUDIT_BY_COMMAND = f"SELECT {_AUDIT_COLUMNS} FROM command_audit WHERE command_id = ? ORDER BY id"  # noqa: S608


@dataclass(frozen=True, slots=True)
class SpooledEvent:
    seq: int
    event_id: str
    station: str
    type: str
    body: dict[str, Any]
    correlation_id: str | None
    attempts: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    created_at: float
    source: str
    station: str | None
    reason: str
    detail: str | None
    raw_hex: str | None
    event_id: str | None
    body: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class AuditRow:
    command_id: str
    station: str
    caller: str | None
    cmd: str
    payload: dict[str, Any]
    qos: int
    outcome: str | None
    reply: dict[str, Any] | None
    elapsed_ms: int | None


class SpoolClosedError(RuntimeError):
    pass


class Spool:
    """Async facade over the SQLite file; one connection, writes serialised by a lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        # Set on every enqueue so the forwarder wakes at once instead of polling.
        self.new_event = asyncio.Event()

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(self.path, isolation_level=None)
        await db.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced on every commit, so an acknowledged device request is on disk.
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("PRAGMA busy_timeout=5000")
        await db.executescript(SCHEMA)
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise SpoolClosedError("spool is not open")
        return self._db

    # ------------------------------------------------------------------------------------------ events

    async def enqueue(
        self, event: dict[str, Any], *, station: str, correlation_id: str | None = None
    ) -> None:
        """Commit one event (it must carry ``event_id``, ``type`` and ``observed_at``)."""
        async with self._write_lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                await self._insert_event(event, station, correlation_id)
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
        self.new_event.set()

    async def enqueue_return(
        self,
        event: dict[str, Any],
        *,
        station: str,
        power_bank_serial: str,
        slot_number: int,
        observed_ts: float,
        dedupe_window_s: float,
        correlation_id: str | None = None,
    ) -> tuple[str, bool]:
        """Commit a return unless the same one was seen within the window.

        Returns ``(event_id, duplicate)``: on a duplicate nothing is written and the first event's id is
        returned.
        """
        async with self._write_lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                cursor = await self.db.execute(
                    "SELECT event_id FROM return_keys WHERE station = ? AND power_bank_serial = ?"
                    " AND slot_number = ? AND observed_ts BETWEEN ? AND ? ORDER BY observed_ts LIMIT 1",
                    (
                        station,
                        power_bank_serial,
                        slot_number,
                        observed_ts - dedupe_window_s,
                        observed_ts + dedupe_window_s,
                    ),
                )
                row = await cursor.fetchone()
                if row is not None:
                    await self.db.execute("COMMIT")
                    return str(row[0]), True
                await self.db.execute(
                    "INSERT INTO return_keys (station, power_bank_serial, slot_number, observed_ts, event_id)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (station, power_bank_serial, slot_number, observed_ts, event["event_id"]),
                )
                # Keys older than a day can never match again.
                await self.db.execute("DELETE FROM return_keys WHERE observed_ts < ?", (observed_ts - 86400,))
                await self._insert_event(event, station, correlation_id)
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
        self.new_event.set()
        return str(event["event_id"]), False

    async def _insert_event(self, event: dict[str, Any], station: str, correlation_id: str | None) -> None:
        await self.db.execute(
            "INSERT INTO events (event_id, station, type, body, correlation_id, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                event["event_id"],
                station,
                event["type"],
                json.dumps(event, separators=(",", ":")),
                correlation_id,
                time.time(),
            ),
        )

    async def due_events(self, *, now: float, limit: int) -> list[SpooledEvent]:
        """The oldest waiting event of each station whose retry time has come, oldest first.

        Only a station's *first* event is eligible, so a station's events reach core strictly in order:
        a later one never overtakes one that is waiting for a retry.
        """
        cursor = await self.db.execute(
            "SELECT e.seq, e.event_id, e.station, e.type, e.body, e.correlation_id, e.attempts"
            " FROM events e JOIN (SELECT station, MIN(seq) AS first_seq FROM events GROUP BY station) f"
            " ON e.seq = f.first_seq WHERE e.next_attempt_at <= ? ORDER BY e.seq LIMIT ?",
            (now, limit),
        )
        rows = await cursor.fetchall()
        return [
            SpooledEvent(
                seq=int(r[0]),
                event_id=str(r[1]),
                station=str(r[2]),
                type=str(r[3]),
                body=json.loads(r[4]),
                correlation_id=r[5],
                attempts=int(r[6]),
            )
            for r in rows
        ]

    async def next_retry_at(self) -> float | None:
        # Only a station's head event can become due; later ones wait behind it whatever their time.
        cursor = await self.db.execute(
            "SELECT MIN(e.next_attempt_at) FROM events e"
            " JOIN (SELECT station, MIN(seq) AS first_seq FROM events GROUP BY station) f"
            " ON e.seq = f.first_seq"
        )
        row = await cursor.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def ack(self, seqs: Sequence[int]) -> None:
        """Core answered 2xx for these: forget them (one transaction, one fsync)."""
        if not seqs:
            return
        async with self._write_lock:
            await self._in_transaction("DELETE FROM events WHERE seq = ?", [(s,) for s in seqs])

    async def schedule_retries(self, retries: Sequence[tuple[int, float, str]]) -> None:
        """``(seq, next_attempt_at, error)`` per event that must be sent again later."""
        if not retries:
            return
        async with self._write_lock:
            await self._in_transaction(
                "UPDATE events SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?"
                " WHERE seq = ?",
                [(next_at, error[:500], seq) for seq, next_at, error in retries],
            )

    async def _in_transaction(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        await self.db.execute("BEGIN IMMEDIATE")
        try:
            await self.db.executemany(sql, rows)
            await self.db.execute("COMMIT")
        except BaseException:
            await self.db.execute("ROLLBACK")
            raise

    async def move_to_dead_letter(self, event: SpooledEvent, *, reason: str, detail: str) -> None:
        """Core refused this event for good: keep it (with why) and stop blocking its station."""
        async with self._write_lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                await self.db.execute(
                    "INSERT INTO dead_letters (created_at, source, station, reason, detail, event_id, body)"
                    " VALUES (?, 'forwarder', ?, ?, ?, ?, ?)",
                    (
                        time.time(),
                        event.station,
                        reason,
                        detail[:2000],
                        event.event_id,
                        json.dumps(event.body),
                    ),
                )
                await self.db.execute("DELETE FROM events WHERE seq = ?", (event.seq,))
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise

    async def pending_count(self) -> int:
        cursor = await self.db.execute("SELECT COUNT(*) FROM events")
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def pending_events(self, station: str | None = None) -> list[SpooledEvent]:
        """Everything still waiting (ops and tests); optionally one station only."""
        query = "SELECT seq, event_id, station, type, body, correlation_id, attempts FROM events"
        params: tuple[Any, ...] = ()
        if station is not None:
            query += " WHERE station = ?"
            params = (station,)
        cursor = await self.db.execute(query + " ORDER BY seq", params)
        return [
            SpooledEvent(int(r[0]), str(r[1]), str(r[2]), str(r[3]), json.loads(r[4]), r[5], int(r[6]))
            for r in await cursor.fetchall()
        ]

    # ------------------------------------------------------------------------------------------ dead letters

    async def add_dead_letter(
        self,
        *,
        source: str,
        reason: str,
        station: str | None = None,
        detail: str | None = None,
        raw: bytes | None = None,
    ) -> int:
        async with self._write_lock:
            cursor = await self.db.execute(
                "INSERT INTO dead_letters (created_at, source, station, reason, detail, raw_hex)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (time.time(), source, station, reason, detail, raw.hex() if raw is not None else None),
            )
            return int(cursor.lastrowid or 0)

    async def dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        cursor = await self.db.execute(
            "SELECT id, created_at, source, station, reason, detail, raw_hex, event_id, body"
            " FROM dead_letters ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [
            DeadLetter(
                id=int(r[0]),
                created_at=float(r[1]),
                source=str(r[2]),
                station=r[3],
                reason=str(r[4]),
                detail=r[5],
                raw_hex=r[6],
                event_id=r[7],
                body=json.loads(r[8]) if r[8] else None,
            )
            for r in await cursor.fetchall()
        ]

    async def dead_letter_count(self) -> int:
        cursor = await self.db.execute("SELECT COUNT(*) FROM dead_letters")
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------------------------------ audit

    async def audit_command_started(
        self,
        *,
        command_id: str,
        station: str,
        caller: str | None,
        cmd: str,
        payload: dict[str, Any],
        qos: int,
        started_at: float,
    ) -> int:
        async with self._write_lock:
            cursor = await self.db.execute(
                "INSERT INTO command_audit (command_id, station, caller, cmd, payload, qos, started_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (command_id, station, caller, cmd, json.dumps(payload), qos, started_at),
            )
            return int(cursor.lastrowid or 0)

    async def audit_command_finished(
        self, audit_id: int, *, outcome: str, reply: dict[str, Any] | None, elapsed_ms: int
    ) -> None:
        async with self._write_lock:
            await self.db.execute(
                "UPDATE command_audit SET outcome = ?, reply = ?, elapsed_ms = ? WHERE id = ?",
                (outcome, json.dumps(reply) if reply is not None else None, elapsed_ms, audit_id),
            )

    async def audit_rows(self, station: str) -> list[AuditRow]:
        return await self._audit_query(_AUDIT_BY_STATION, station)

    async def audit_for_command(self, command_id: str) -> AuditRow | None:
        rows = await self._audit_query(_AUDIT_BY_COMMAND, command_id)
        return rows[0] if rows else None

    async def _audit_query(self, query: str, value: str) -> list[AuditRow]:
        cursor = await self.db.execute(query, (value,))
        return [
            AuditRow(
                command_id=str(r[0]),
                station=str(r[1]),
                caller=r[2],
                cmd=str(r[3]),
                payload=json.loads(r[4]),
                qos=int(r[5]),
                outcome=r[6],
                reply=json.loads(r[7]) if r[7] else None,
                elapsed_ms=r[8],
            )
            for r in await cursor.fetchall()
        ]
