"""The durable local spool: every event is committed here before the device gets its answer.

One SQLite file per replica (WAL, ``synchronous=FULL`` by default so a commit survives power loss).

Writes are group-committed: every write is a job handed to one writer thread, which runs all jobs waiting
at that moment in one transaction (a savepoint each, so one failing job fails alone) and commits them with
one fsync; each caller is resumed only after that commit. Under load many events share one fsync; alone,
an event waits for nothing but its own commit. Reads use a separate connection (WAL readers never block
the writer).

Tables:

- ``events``: waiting for core, in arrival order (``seq``); a row is deleted only after core answered 2xx
  (or when it moves to ``dead_letters``). ``strikes`` counts the answers in which core itself failed it.
- ``dead_letters``: bad device input (a capped prefix of the raw bytes as hex, with the full length and
  sha256), events core refused for good (403, 4xx) and events parked after too many strikes
  (``reason = 'parked'``; re-drivable to their original place with :meth:`Spool.redrive`). Pruned by age.
- ``return_keys``: content keys of returns, so one return reported over MQTT *and* HTTP is one event;
  ``source`` is the channel of the report the key stands for (``http``: a claim not yet corroborated).
- ``command_audit``: every command asked of a station, its (masked) payload, outcome and timing; a refused
  one (``outcome = 'refused'``) with its ``refusal_code``. Pruned by age. Also forwarded to core as
  ``command_audit`` events (see :mod:`chargeghar_ingest.commands`).

An existing spool file is migrated at open: columns added since are appended with ``ALTER TABLE``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

import aiosqlite
from chargeghar_protocol.contract import format_iso_instant

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

# Columns added after the first release: (table, column, declaration). Appended to an older file at open.
MIGRATION_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("events", "strikes", "INTEGER NOT NULL DEFAULT 0"),
    ("dead_letters", "raw_len", "INTEGER"),
    ("dead_letters", "raw_sha256", "TEXT"),
    ("dead_letters", "event_seq", "INTEGER"),
    ("dead_letters", "correlation_id", "TEXT"),
    ("return_keys", "source", "TEXT"),
    ("command_audit", "refusal_code", "TEXT"),
)
# Indexes over migrated columns (or for the retention job): created after the columns exist.
MIGRATION_INDEXES = """
CREATE INDEX IF NOT EXISTS dead_letters_created ON dead_letters (created_at);
CREATE INDEX IF NOT EXISTS dead_letters_reason_station ON dead_letters (reason, station, event_seq);
CREATE INDEX IF NOT EXISTS command_audit_started ON command_audit (started_at);
"""

PARKED = "parked"
DEFAULT_DEAD_LETTER_RAW_MAX_BYTES = 4096
# Rows deleted per write job by the retention job: a big backlog never holds the writer for long.
PRUNE_CHUNK_ROWS = 1000


def migrate(db: sqlite3.Connection) -> list[str]:
    """Add the columns a spool file created by an older release lacks; returns ``table.column`` added."""
    added: list[str] = []
    for table, column, declaration in MIGRATION_COLUMNS:
        present = {str(row[1]) for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
            added.append(f"{table}.{column}")
    db.executescript(MIGRATION_INDEXES)
    return added


_AUDIT_COLUMNS = "command_id, station, caller, cmd, payload, qos, outcome, reply, elapsed_ms, refusal_code"
_AUDIT_BY_STATION = f"SELECT {_AUDIT_COLUMNS} FROM command_audit WHERE station = ? ORDER BY id"  # noqa: S608
# The command as sent under this id (a refused attempt with the same id was never sent).
_AUDIT_BY_COMMAND = (
    f"SELECT {_AUDIT_COLUMNS} FROM command_audit"  # noqa: S608
    " WHERE command_id = ? AND outcome IS NOT 'refused' ORDER BY id"
)


@dataclass(frozen=True, slots=True)
class SpooledEvent:
    seq: int
    event_id: str
    station: str
    type: str
    body_json: str  # the event as stored: sent to core as these bytes, without a decode/encode round
    correlation_id: str | None
    attempts: int
    strikes: int = 0

    @property
    def body(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body_json)
        return parsed


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
    raw_len: int | None = None
    raw_sha256: str | None = None
    event_seq: int | None = None


@dataclass(frozen=True, slots=True)
class RedrivenEvent:
    """A dead letter put back into the spool (at its original place when its seq is known)."""

    dead_letter_id: int
    seq: int
    event_id: str
    station: str


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
    refusal_code: str | None = None


class ReturnSpooled(NamedTuple):
    """What :meth:`Spool.enqueue_return` did with a return report."""

    event_id: str  # the event that stands for this return in the spool (or stood, once delivered)
    duplicate: bool  # no event was added: an earlier report of the same return stands for it
    corroborated: bool = False  # an MQTT report confirmed an earlier HTTP-only claim


# Namespace of the id of the event that corroborates an HTTP-only return claim: derived from the claim's id,
# so the same corroboration has the same id whichever way (in place or as a new event) it is spooled.
CORROBORATION_ID_NAMESPACE = uuid.UUID("0c6a3f64-5b0e-4f5e-9d1f-8a3e4c2b7d19")


def corroboration_event_id(claim_event_id: str) -> str:
    return str(uuid.uuid5(CORROBORATION_ID_NAMESPACE, claim_event_id))


class SpoolClosedError(RuntimeError):
    pass


T = TypeVar("T")
WriteJob = Callable[[sqlite3.Connection], Any]
SyncMode = Literal["FULL", "NORMAL"]


@dataclass(slots=True)
class _PendingWrite:
    job: WriteJob
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    outcome: tuple[bool, Any] = field(default=(False, None))


# Sentinel that stops the writer thread (put after every job already queued, so those still commit).
_STOP = object()


class GroupCommitWriter:
    """One thread, one SQLite connection: runs queued write jobs in shared transactions.

    ``submit`` returns once the transaction holding the job has committed (or raises the job's error).
    """

    def __init__(self, path: Path, *, synchronous: SyncMode, max_jobs_per_commit: int) -> None:
        self._path = path
        self._synchronous = synchronous
        self._max_jobs = max(1, max_jobs_per_commit)
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._open_error: BaseException | None = None
        self.commits = 0
        self.jobs_committed = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"spool-writer:{self._path.name}", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._open_error is not None:
            raise self._open_error

    async def submit(self, job: Callable[[sqlite3.Connection], T]) -> T:
        if self._thread is None:
            raise SpoolClosedError("spool is not open")
        loop = asyncio.get_running_loop()
        pending = _PendingWrite(job, loop.create_future(), loop)
        self._jobs.put(pending)
        result: T = await pending.future
        return result

    def stop(self) -> None:
        """Commit what is queued, then end the thread (blocking; call it off the event loop)."""
        if self._thread is None:
            return
        self._jobs.put(_STOP)
        self._thread.join()
        self._thread = None

    def _run(self) -> None:
        try:
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: the WAL is fsynced at every commit, so an acknowledged event survives power loss.
            # NORMAL (opt-in): survives a crash of the process, not of the machine (see SpoolSettings).
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(SCHEMA)
            migrate(db)
        except BaseException as exc:  # handed to start() in the opening thread
            self._open_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            stopping = False
            while not stopping:
                group: list[_PendingWrite] = []
                item = self._jobs.get()
                while True:
                    if item is _STOP:
                        stopping = True
                        break
                    group.append(item)
                    if len(group) >= self._max_jobs:
                        break
                    try:
                        item = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                if group:
                    self._commit_group(db, group)
        finally:
            db.close()

    def _commit_group(self, db: sqlite3.Connection, group: list[_PendingWrite]) -> None:
        try:
            db.execute("BEGIN IMMEDIATE")
            for pending in group:
                # A savepoint per job: a job that fails (e.g. a duplicate event id) is undone alone.
                db.execute("SAVEPOINT job")
                try:
                    pending.outcome = (True, pending.job(db))
                    db.execute("RELEASE job")
                except BaseException as exc:  # even a non-Exception must not kill the writer thread
                    db.execute("ROLLBACK TO job")
                    db.execute("RELEASE job")
                    pending.outcome = (False, _as_exception(exc))
            db.execute("COMMIT")
            self.commits += 1
            self.jobs_committed += len(group)
        except BaseException as exc:
            # The commit itself failed (disk full, I/O error): nothing of the group is durable.
            if db.in_transaction:
                db.execute("ROLLBACK")
            for pending in group:
                pending.outcome = (False, _as_exception(exc))
        by_loop: dict[asyncio.AbstractEventLoop, list[_PendingWrite]] = {}
        for pending in group:
            by_loop.setdefault(pending.loop, []).append(pending)
        for loop, resolved in by_loop.items():
            # One wake-up of the event loop per group, not per job.
            try:
                loop.call_soon_threadsafe(_resolve_all, resolved)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                continue


def _as_exception(exc: BaseException) -> Exception:
    # A waiter gets an ordinary exception: a SystemExit raised into an unrelated task would stop the loop.
    return exc if isinstance(exc, Exception) else RuntimeError(f"spool write interrupted: {exc!r}")


def _resolve_all(group: list[_PendingWrite]) -> None:
    for pending in group:
        if pending.future.done():  # the waiter was cancelled; the write stands anyway
            continue
        ok, value = pending.outcome
        if ok:
            pending.future.set_result(value)
        else:
            pending.future.set_exception(value)


def _complete_waiting_return(db: sqlite3.Connection, event_id: str, later: dict[str, Any]) -> None:
    """Fill the fields a spooled return lacks (battery level, hardware info) from a later report of it."""
    stored = db.execute("SELECT body FROM events WHERE event_id = ?", (event_id,)).fetchone()
    later_info = later.get("return_event")
    if stored is None or not isinstance(later_info, dict):
        return  # already delivered (or not a return): nothing left to complete
    first = json.loads(stored[0])
    first_info = first.get("return_event")
    if not isinstance(first_info, dict):
        return
    changed = False
    if first_info.get("battery_level") is None and later_info.get("battery_level") is not None:
        first_info["battery_level"] = later_info["battery_level"]
        changed = True
    later_hardware = later_info.get("hardware_info") or {}
    first_hardware = first_info.get("hardware_info") or {}
    missing = {key: value for key, value in later_hardware.items() if key not in first_hardware}
    if missing:
        first_info["hardware_info"] = {**first_hardware, **missing}
        changed = True
    if changed:
        body = json.dumps(first, separators=(",", ":"))
        db.execute("UPDATE events SET body = ? WHERE event_id = ?", (body, event_id))


def _corroborate_claim(
    db: sqlite3.Connection,
    claim: tuple[str, float],
    later: dict[str, Any],
    station: str,
    correlation_id: str | None,
) -> ReturnSpooled:
    """An MQTT report of a return first claimed over device HTTP only: the claim is corroborated.

    Still waiting in the spool, the claim is upgraded in place (``source: mqtt``, the frame's SOC and
    hardware info) under a new id: should the forwarder have the claim in flight right now, its ack (by seq
    *and* id) leaves the upgraded row to be sent after it. Already delivered, a new ``returned`` event with
    ``source: mqtt`` is spooled; core completes the claimed rental with it (or finds nothing to do). Either
    way the return keeps the time of its first report."""
    claim_id, claim_ts = claim
    new_id = corroboration_event_id(claim_id)
    db.execute("UPDATE return_keys SET source = 'mqtt', event_id = ? WHERE event_id = ?", (new_id, claim_id))
    later_info = later.get("return_event")
    stored = db.execute("SELECT body FROM events WHERE event_id = ?", (claim_id,)).fetchone()
    if stored is not None:
        body = json.loads(stored[0])
        info = body.get("return_event")
        if isinstance(info, dict) and isinstance(later_info, dict):
            info["source"] = "mqtt"
            if later_info.get("battery_level") is not None:
                info["battery_level"] = later_info["battery_level"]
            hardware = dict(info.get("hardware_info") or {})
            for key, value in (later_info.get("hardware_info") or {}).items():
                hardware.setdefault(key, value)
            hardware["source"] = "mqtt"
            info["hardware_info"] = hardware
        body["event_id"] = new_id
        db.execute(
            "UPDATE events SET event_id = ?, body = ? WHERE event_id = ?",
            (new_id, json.dumps(body, separators=(",", ":")), claim_id),
        )
        return ReturnSpooled(new_id, True, True)
    event = {**later, "event_id": new_id}
    if isinstance(later_info, dict) and _instant(later_info.get("returned_at"), claim_ts + 1) > claim_ts:
        first = format_iso_instant(datetime.fromtimestamp(claim_ts, UTC))
        event["return_event"] = {**later_info, "returned_at": first}
    _insert_event_row(db, event, station, correlation_id)
    return ReturnSpooled(new_id, False, True)


def _instant(value: Any, default: float) -> float:
    """An ISO instant from an event body as epoch seconds (``default`` when absent or unreadable)."""
    try:
        return datetime.fromisoformat(str(value)).timestamp() if value else default
    except ValueError:
        return default


def _insert_event_row(
    db: sqlite3.Connection, event: dict[str, Any], station: str, correlation_id: str | None
) -> None:
    body = json.dumps(event, separators=(",", ":"))
    _insert_serialized_row(db, str(event["event_id"]), str(event["type"]), body, station, correlation_id)


def _insert_serialized_row(
    db: sqlite3.Connection,
    event_id: str,
    event_type: str,
    body_json: str,
    station: str,
    correlation_id: str | None,
) -> None:
    db.execute(
        "INSERT INTO events (event_id, station, type, body, correlation_id, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (event_id, station, event_type, body_json, correlation_id, time.time()),
    )


class Spool:
    """Async facade over the SQLite file: writes through the group-commit writer, reads on aiosqlite."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: SyncMode = "FULL",
        max_jobs_per_commit: int = 512,
        dead_letter_raw_max_bytes: int = DEFAULT_DEAD_LETTER_RAW_MAX_BYTES,
    ) -> None:
        self.path = path
        self.dead_letter_raw_max_bytes = dead_letter_raw_max_bytes
        self._synchronous: SyncMode = synchronous
        self._max_jobs_per_commit = max_jobs_per_commit
        self._db: aiosqlite.Connection | None = None
        self._writer: GroupCommitWriter | None = None
        # Set on every enqueue so the forwarder wakes at once instead of polling.
        self.new_event = asyncio.Event()

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = GroupCommitWriter(
            self.path, synchronous=self._synchronous, max_jobs_per_commit=self._max_jobs_per_commit
        )
        # The writer creates the file and the schema before the reader connects.
        await asyncio.to_thread(writer.start)
        self._writer = writer
        db = await aiosqlite.connect(self.path, isolation_level=None)
        await db.execute("PRAGMA busy_timeout=5000")
        self._db = db

    async def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await asyncio.to_thread(writer.stop)
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        """The read connection."""
        if self._db is None:
            raise SpoolClosedError("spool is not open")
        return self._db

    @property
    def group_commit_stats(self) -> tuple[int, int]:
        """(commits, jobs committed) since open: their ratio is the average group size."""
        writer = self._writer
        return (writer.commits, writer.jobs_committed) if writer is not None else (0, 0)

    async def _write(self, job: Callable[[sqlite3.Connection], T]) -> T:
        writer = self._writer
        if writer is None:
            raise SpoolClosedError("spool is not open")
        return await writer.submit(job)

    # ------------------------------------------------------------------------------------------ events

    async def enqueue(
        self, event: dict[str, Any], *, station: str, correlation_id: str | None = None
    ) -> None:
        """Commit one event (it must carry ``event_id``, ``type`` and ``observed_at``).

        Returns only after the transaction holding it is durable (shared with concurrent writers)."""
        await self._write(lambda db: _insert_event_row(db, event, station, correlation_id))
        self.new_event.set()

    async def enqueue_serialized(
        self,
        *,
        event_id: str,
        event_type: str,
        body_json: str,
        station: str,
        correlation_id: str | None = None,
    ) -> None:
        """:meth:`enqueue` for an event already serialised to JSON text (carrying that id and type)."""
        await self._write(
            lambda db: _insert_serialized_row(db, event_id, event_type, body_json, station, correlation_id)
        )
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
        source: str | None = None,
    ) -> ReturnSpooled:
        """Commit a return unless the same one was seen within the window.

        On a duplicate the first event's id is returned and no event is added. When the first report lacked
        what the second carries (the HTTP return call has no battery level, the 0x40 frame does) and the
        first is still waiting in the spool, it is completed in place. ``source`` is the reporting channel:
        an ``mqtt`` report of a return first reported over ``http`` only corroborates that claim (see
        :func:`_corroborate_claim`); the reverse order stays one event.
        """

        def job(db: sqlite3.Connection) -> ReturnSpooled:
            # Jobs run one after the other on the writer: the check and the insert cannot interleave.
            row = db.execute(
                "SELECT event_id, source, observed_ts FROM return_keys WHERE station = ?"
                " AND power_bank_serial = ? AND slot_number = ? AND observed_ts BETWEEN ? AND ?"
                " ORDER BY observed_ts LIMIT 1",
                (
                    station,
                    power_bank_serial,
                    slot_number,
                    observed_ts - dedupe_window_s,
                    observed_ts + dedupe_window_s,
                ),
            ).fetchone()
            if row is not None:
                if source == "mqtt" and row[1] == "http":
                    return _corroborate_claim(
                        db, (str(row[0]), float(row[2])), event, station, correlation_id
                    )
                _complete_waiting_return(db, str(row[0]), event)
                return ReturnSpooled(str(row[0]), True)
            db.execute(
                "INSERT INTO return_keys"
                " (station, power_bank_serial, slot_number, observed_ts, event_id, source)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (station, power_bank_serial, slot_number, observed_ts, event["event_id"], source),
            )
            # Keys older than a day can never match again.
            db.execute("DELETE FROM return_keys WHERE observed_ts < ?", (observed_ts - 86400,))
            _insert_event_row(db, event, station, correlation_id)
            return ReturnSpooled(str(event["event_id"]), False)

        spooled = await self._write(job)
        if not spooled.duplicate:
            self.new_event.set()
        return spooled

    async def due_events(self, *, now: float, limit: int) -> list[SpooledEvent]:
        """The oldest waiting event of each station whose retry time has come, oldest first.

        Only a station's *first* event is eligible, so a station's events reach core strictly in order:
        a later one never overtakes one that is waiting for a retry.
        """
        cursor = await self.db.execute(
            "SELECT e.seq, e.event_id, e.station, e.type, e.body, e.correlation_id, e.attempts, e.strikes"
            " FROM events e JOIN (SELECT station, MIN(seq) AS first_seq FROM events GROUP BY station) f"
            " ON e.seq = f.first_seq WHERE e.next_attempt_at <= ? ORDER BY e.seq LIMIT ?",
            (now, limit),
        )
        return [_spooled(r) for r in await cursor.fetchall()]

    async def due_batch(
        self, *, now: float, limit: int, per_station: int, exclude: Sequence[str] = ()
    ) -> list[SpooledEvent]:
        """Up to ``per_station`` waiting events of each station whose oldest event is due, in spool order.

        A station is eligible when its *oldest* event's retry time has come; its next events follow it in
        order (the receiver applies them in order and stops a station at its first retryable failure).
        Stations in ``exclude`` (already in flight) are left out entirely.
        """
        cursor = await self.db.execute(
            "WITH heads AS (SELECT station, MIN(seq) AS first_seq FROM events GROUP BY station),"
            " ready AS (SELECT h.station, h.first_seq FROM heads h JOIN events e ON e.seq = h.first_seq"
            "  WHERE e.next_attempt_at <= ? AND h.station NOT IN (SELECT value FROM json_each(?))"
            "  ORDER BY h.first_seq LIMIT ?),"
            " ranked AS (SELECT e.seq, e.event_id, e.station, e.type, e.body, e.correlation_id, e.attempts,"
            "  e.strikes, ROW_NUMBER() OVER (PARTITION BY e.station ORDER BY e.seq) AS position"
            "  FROM events e JOIN ready r ON e.station = r.station)"
            " SELECT seq, event_id, station, type, body, correlation_id, attempts, strikes FROM ranked"
            " WHERE position <= ? ORDER BY seq LIMIT ?",
            (now, json.dumps(list(exclude)), limit, max(1, per_station), limit),
        )
        return [_spooled(r) for r in await cursor.fetchall()]

    async def next_retry_at(self, exclude: Sequence[str] = ()) -> float | None:
        """When the next station head becomes due (stations in ``exclude`` not counted)."""
        # Only a station's head event can become due; later ones wait behind it whatever their time.
        cursor = await self.db.execute(
            "SELECT MIN(e.next_attempt_at) FROM events e"
            " JOIN (SELECT station, MIN(seq) AS first_seq FROM events GROUP BY station) f"
            " ON e.seq = f.first_seq WHERE f.station NOT IN (SELECT value FROM json_each(?))",
            (json.dumps(list(exclude)),),
        )
        row = await cursor.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def ack(self, delivered: Sequence[int] | Sequence[SpooledEvent]) -> None:
        """Core answered 2xx for these: forget them (shares a commit with concurrent writes).

        Given the events as read, a row whose id changed since (a return claim upgraded in place while in
        flight, see :func:`_corroborate_claim`) stays: what was delivered is not what it holds now."""
        if not delivered:
            return
        by_seq = [(item,) for item in delivered if isinstance(item, int)]
        by_event = [(item.seq, item.event_id) for item in delivered if isinstance(item, SpooledEvent)]

        def job(db: sqlite3.Connection) -> None:
            db.executemany("DELETE FROM events WHERE seq = ?", by_seq)
            db.executemany("DELETE FROM events WHERE seq = ? AND event_id = ?", by_event)

        await self._write(job)

    async def schedule_retries(
        self, retries: Sequence[tuple[int, float, str]], *, strikes: Sequence[int] = ()
    ) -> None:
        """``(seq, next_attempt_at, error)`` per event that must be sent again later; the events whose seq
        is in ``strikes`` also count one more strike (core itself failed them, see the forwarder)."""
        if not retries:
            return
        struck = set(strikes)
        rows = [(next_at, error[:500], 1 if seq in struck else 0, seq) for seq, next_at, error in retries]
        await self._write(
            lambda db: db.executemany(
                "UPDATE events SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?,"
                " strikes = strikes + ? WHERE seq = ?",
                rows,
            )
        )

    async def move_to_dead_letter(self, event: SpooledEvent, *, reason: str, detail: str) -> None:
        """Core refused this event for good, or it was parked: keep it (with why, its seq and correlation
        id, so it can be re-driven to its place) and stop blocking its station."""

        def job(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO dead_letters (created_at, source, station, reason, detail, event_id, body,"
                " event_seq, correlation_id) VALUES (?, 'forwarder', ?, ?, ?, ?, ?, ?, ?)",
                (
                    time.time(),
                    event.station,
                    reason,
                    detail[:2000],
                    event.event_id,
                    event.body_json,
                    event.seq,
                    event.correlation_id,
                ),
            )
            db.execute("DELETE FROM events WHERE seq = ?", (event.seq,))

        await self._write(job)

    async def redrive(
        self,
        *,
        ids: Sequence[int] = (),
        station: str | None = None,
        all_parked: bool = False,
    ) -> list[RedrivenEvent]:
        """Put dead-lettered events back into the spool, attempts and strikes reset.

        ``ids`` picks forwarder dead letters by id (parked or refused: the operator's explicit choice);
        ``station`` and ``all_parked`` pick parked ones only. Each event gets back its original ``seq``
        (never reused: AUTOINCREMENT), so it sits before the station's later events still waiting and
        re-driven events of one station keep their order. The dead-letter row is removed in the same
        transaction.
        """
        if not ids and station is None and not all_parked:
            return []
        clauses: list[str] = []
        params: list[Any] = []
        if ids:
            clauses.append("id IN (SELECT value FROM json_each(?))")
            params.append(json.dumps([int(i) for i in ids]))
        if station is not None:
            clauses.append("(reason = ? AND station = ?)")
            params += [PARKED, station]
        if all_parked:
            clauses.append("reason = ?")
            params.append(PARKED)
        query = (
            "SELECT id, station, event_id, body, event_seq, correlation_id FROM dead_letters"  # noqa: S608
            f" WHERE source = 'forwarder' AND body IS NOT NULL AND ({' OR '.join(clauses)})"
            " ORDER BY COALESCE(event_seq, 9223372036854775807), id"
        )

        def job(db: sqlite3.Connection) -> list[RedrivenEvent]:
            moved: list[RedrivenEvent] = []
            for row_id, row_station, event_id, body, event_seq, correlation_id in db.execute(
                query, params
            ).fetchall():
                event = json.loads(body)
                # The original seq when it is known and free; otherwise the end of the queue.
                taken = (
                    event_seq is not None
                    and db.execute("SELECT 1 FROM events WHERE seq = ?", (event_seq,)).fetchone()
                )
                seq = None if taken else event_seq
                try:
                    cursor = db.execute(
                        "INSERT INTO events (seq, event_id, station, type, body, correlation_id, created_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            seq,
                            event_id,
                            row_station,
                            str(event.get("type")),
                            body,
                            correlation_id,
                            time.time(),
                        ),
                    )
                except sqlite3.IntegrityError:
                    continue  # the same event is already waiting (re-spooled meanwhile): nothing to move
                db.execute("DELETE FROM dead_letters WHERE id = ?", (row_id,))
                moved.append(
                    RedrivenEvent(int(row_id), int(cursor.lastrowid or 0), str(event_id), str(row_station))
                )
            return moved

        moved = await self._write(job)
        if moved:
            self.new_event.set()
        return moved

    async def pending_count(self) -> int:
        cursor = await self.db.execute("SELECT COUNT(*) FROM events")
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def pending_events(self, station: str | None = None) -> list[SpooledEvent]:
        """Everything still waiting (ops and tests); optionally one station only."""
        query = "SELECT seq, event_id, station, type, body, correlation_id, attempts, strikes FROM events"
        params: tuple[Any, ...] = ()
        if station is not None:
            query += " WHERE station = ?"
            params = (station,)
        cursor = await self.db.execute(query + " ORDER BY seq", params)
        return [_spooled(r) for r in await cursor.fetchall()]

    # ------------------------------------------------------------------------------------------ dead letters

    async def add_dead_letter(
        self,
        *,
        source: str,
        reason: str,
        station: str | None = None,
        detail: str | None = None,
        raw: bytes | None = None,
        raw_len: int | None = None,
    ) -> int:
        """Keep bad input: at most ``dead_letter_raw_max_bytes`` of it as hex, its length and sha256.

        ``raw_len`` is the true length when ``raw`` is only what was read of a longer body (a 413): the
        sha256 is then left out, as the whole body was never seen."""
        raw_hex = raw_sha256 = None
        length = raw_len
        if raw is not None:
            raw_hex = raw[: self.dead_letter_raw_max_bytes].hex()
            complete = raw_len is None or raw_len <= len(raw)
            length = len(raw) if complete else raw_len
            raw_sha256 = hashlib.sha256(raw).hexdigest() if complete else None
        values = (
            time.time(),
            source,
            station,
            reason,
            (detail or "")[:2000] or None,
            raw_hex,
            length,
            raw_sha256,
        )
        return await self._write(
            lambda db: int(
                db.execute(
                    "INSERT INTO dead_letters (created_at, source, station, reason, detail, raw_hex,"
                    " raw_len, raw_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    values,
                ).lastrowid
                or 0
            )
        )

    async def dead_letters(
        self, *, limit: int = 100, reason: str | None = None, station: str | None = None
    ) -> list[DeadLetter]:
        """Newest first; optionally one reason (e.g. ``parked``) and/or one station only."""
        cursor = await self.db.execute(
            "SELECT id, created_at, source, station, reason, detail, raw_hex, event_id, body, raw_len,"
            " raw_sha256, event_seq FROM dead_letters"
            " WHERE (? IS NULL OR reason = ?) AND (? IS NULL OR station = ?) ORDER BY id DESC LIMIT ?",
            (reason, reason, station, station, limit),
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
                raw_len=r[9],
                raw_sha256=r[10],
                event_seq=r[11],
            )
            for r in await cursor.fetchall()
        ]

    async def dead_letter_count(self, reason: str | None = None) -> int:
        cursor = await self.db.execute(
            "SELECT COUNT(*) FROM dead_letters WHERE (? IS NULL OR reason = ?)", (reason, reason)
        )
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def prune(
        self, *, dead_letters_before: float, parked_before: float, audit_before: float
    ) -> dict[str, int]:
        """Delete dead letters (parked ones by their own cut-off) and command audit rows older than the
        given times, in chunks of PRUNE_CHUNK_ROWS per write job so event writes keep flowing."""
        statements = {
            "dead_letters": (
                "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters"
                " WHERE created_at < ? AND reason != ? LIMIT ?)",
                (dead_letters_before, PARKED),
            ),
            "parked": (
                "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters"
                " WHERE created_at < ? AND reason = ? LIMIT ?)",
                (parked_before, PARKED),
            ),
            "command_audit": (
                "DELETE FROM command_audit WHERE id IN (SELECT id FROM command_audit"
                " WHERE started_at < ? LIMIT ?)",
                (audit_before,),
            ),
        }
        removed: dict[str, int] = {}
        for name, (statement, params) in statements.items():
            removed[name] = 0
            args = (*params, PRUNE_CHUNK_ROWS)

            def chunk(
                db: sqlite3.Connection, statement: str = statement, args: tuple[Any, ...] = args
            ) -> int:
                return int(db.execute(statement, args).rowcount)

            while True:
                count = await self._write(chunk)
                removed[name] += count
                if count < PRUNE_CHUNK_ROWS:
                    break
        return removed

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
        values = (command_id, station, caller, cmd, json.dumps(payload), qos, started_at)
        return await self._write(
            lambda db: int(
                db.execute(
                    "INSERT INTO command_audit (command_id, station, caller, cmd, payload, qos, started_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    values,
                ).lastrowid
                or 0
            )
        )

    async def audit_command_finished(
        self, audit_id: int, *, outcome: str, reply: dict[str, Any] | None, elapsed_ms: int
    ) -> None:
        values = (outcome, json.dumps(reply) if reply is not None else None, elapsed_ms, audit_id)
        await self._write(
            lambda db: db.execute(
                "UPDATE command_audit SET outcome = ?, reply = ?, elapsed_ms = ? WHERE id = ?", values
            )
        )

    async def audit_command_refused(
        self,
        *,
        command_id: str | None,
        station: str,
        caller: str | None,
        cmd: str,
        payload: dict[str, Any],
        refusal_code: str,
        at: float,
    ) -> None:
        """A command refused before anything was published (busy, offline, invalid, ...)."""
        values = (command_id or "", station, caller, cmd, json.dumps(payload), at, refusal_code)
        await self._write(
            lambda db: db.execute(
                "INSERT INTO command_audit (command_id, station, caller, cmd, payload, qos, started_at,"
                " outcome, elapsed_ms, refusal_code) VALUES (?, ?, ?, ?, ?, 0, ?, 'refused', 0, ?)",
                values,
            )
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
                refusal_code=r[9],
            )
            for r in await cursor.fetchall()
        ]


def _spooled(row: Any) -> SpooledEvent:
    return SpooledEvent(
        seq=int(row[0]),
        event_id=str(row[1]),
        station=str(row[2]),
        type=str(row[3]),
        body_json=str(row[4]),
        correlation_id=row[5],
        attempts=int(row[6]),
        strikes=int(row[7]),
    )
