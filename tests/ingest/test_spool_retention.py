"""Bounded disk: the retention job prunes old dead letters and command audit rows; an old spool file is
migrated in place when the ingest opens it."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from chargeghar_ingest.app import prune_once
from chargeghar_ingest.spool import PARKED, Spool, SpooledEvent
from ingest_harness import make_settings, running_ingest

DAY = 86400.0

# The tables as the first release created them (before strikes, raw_len, raw_sha256, event_seq, …).
FIRST_RELEASE_SCHEMA = """
CREATE TABLE events (
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
CREATE TABLE dead_letters (
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
"""


def backdate(path: Path, table: str, column: str, ids: list[int], when: float) -> None:
    """Age rows as if written long ago (a second connection to the WAL file, like an operator's)."""
    with sqlite3.connect(path) as db:
        db.executemany(f"UPDATE {table} SET {column} = ? WHERE id = ?", [(when, i) for i in ids])  # noqa: S608


async def test_retention_prunes_only_rows_older_than_their_setting(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        spool={
            "dead_letter_retention_days": 30,
            "parked_retention_days": 90,
            "command_audit_retention_days": 60,
        },
    )
    async with running_ingest(settings) as ingest:
        assert "retention" in ingest.runtime.background
        spool = ingest.runtime.spool
        now = time.time()
        old_refusal = await spool.add_dead_letter(source="http", reason="bad_sign", raw=b"old")
        new_refusal = await spool.add_dead_letter(source="http", reason="bad_sign", raw=b"new")
        await spool.enqueue(
            {"type": "status", "event_id": "e-parked-40d", "observed_at": "2025-11-12T06:26:16Z"},
            station="S1",
        )
        await spool.enqueue(
            {"type": "status", "event_id": "e-parked-100d", "observed_at": "2025-11-12T06:26:16Z"},
            station="S2",
        )
        for event in await spool.pending_events():
            await spool.move_to_dead_letter(event, reason=PARKED, detail="HTTP 500")
        parked = {d.event_id: d.id for d in await spool.dead_letters(reason=PARKED)}
        old_audit = await spool.audit_command_started(
            command_id="c-old",
            station="S1",
            caller="core",
            cmd="check",
            payload={},
            qos=1,
            started_at=now - 61 * DAY,
        )
        await spool.audit_command_started(
            command_id="c-new",
            station="S1",
            caller="core",
            cmd="check",
            payload={},
            qos=1,
            started_at=now - DAY,
        )
        backdate(spool.path, "dead_letters", "created_at", [old_refusal], now - 31 * DAY)
        backdate(spool.path, "dead_letters", "created_at", [parked["e-parked-40d"]], now - 40 * DAY)
        backdate(spool.path, "dead_letters", "created_at", [parked["e-parked-100d"]], now - 100 * DAY)
        assert old_audit > 0

        await prune_once(ingest.runtime, now=now)

        left = {(d.id, d.event_id) for d in await spool.dead_letters()}
        # A parked event outlives the refusal retention: it is a real event an operator may re-drive.
        assert left == {(new_refusal, None), (parked["e-parked-40d"], "e-parked-40d")}
        assert [row.command_id for row in await spool.audit_rows("S1")] == ["c-new"]
        # Counted whichever pass removed them (this one, or the job's own pass at start).
        assert ingest.runtime.metrics.counters["retention_pruned_total"] == 3
        # Idempotent: nothing more to prune.
        assert await prune_once(ingest.runtime, now=now) == {
            "dead_letters": 0,
            "parked": 0,
            "command_audit": 0,
        }


async def test_an_old_spool_file_is_migrated_and_keeps_its_events(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(FIRST_RELEASE_SCHEMA)
        db.execute(
            "INSERT INTO events (event_id, station, type, body, created_at) VALUES (?, ?, ?, ?, ?)",
            ("e-1", "S1", "status", '{"type":"status","event_id":"e-1"}', time.time()),
        )
        db.execute(
            "INSERT INTO dead_letters (created_at, source, reason, raw_hex)"
            " VALUES (?, 'http', 'bad_sign', 'ab')",
            (time.time(),),
        )
    spool = Spool(path)
    await spool.open()
    try:
        [event] = await spool.pending_events()
        assert (event.event_id, event.strikes) == ("e-1", 0)
        [old_letter] = await spool.dead_letters()
        assert (old_letter.raw_hex, old_letter.raw_len, old_letter.event_seq) == ("ab", None, None)
        # The new columns work on the migrated file: strikes, parking with its seq, re-drive to its place.
        await spool.schedule_retries([(event.seq, 0.0, "HTTP 500")], strikes=[event.seq])
        [struck] = await spool.pending_events()
        assert struck.strikes == 1
        await spool.move_to_dead_letter(struck, reason=PARKED, detail="parked")
        [moved] = await spool.redrive(all_parked=True)
        assert moved.seq == event.seq
        [back] = await spool.pending_events()
        assert back == SpooledEvent(event.seq, "e-1", "S1", "status", event.body_json, None, 0, 0)
    finally:
        await spool.close()
    # Opening again changes nothing (the migration is idempotent).
    reopened = Spool(path)
    await reopened.open()
    try:
        assert len(await reopened.pending_events()) == 1
    finally:
        await reopened.close()
