"""The SQLite spool on its own: durability across reopen, per-station ordering, retries, dead letters."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

from chargeghar_ingest.spool import Spool


def status_event(station: str, n: int = 0) -> dict[str, Any]:
    return {
        "type": "status",
        "timestamp": 1_762_928_776 + n,
        "device": {"serial_number": station, "imei": station, "status": "ONLINE"},
        "event_id": str(uuid.uuid4()),
        "observed_at": "2025-11-12T06:26:16Z",
    }


async def open_spool(path: Path) -> Spool:
    spool = Spool(path)
    await spool.open()
    return spool


async def test_events_survive_close_and_reopen_in_order(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    spool = await open_spool(path)
    written = [status_event("A", n) for n in range(5)]
    for event in written:
        await spool.enqueue(event, station="A", correlation_id="corr-1")
    await spool.close()

    reopened = await open_spool(path)
    try:
        pending = await reopened.pending_events()
        assert [e.event_id for e in pending] == [e["event_id"] for e in written]
        assert pending[0].body == written[0] and pending[0].correlation_id == "corr-1"
        cursor = await reopened.db.execute("PRAGMA journal_mode")
        assert (await cursor.fetchone()) == ("wal",)
    finally:
        await reopened.close()


async def test_only_the_oldest_event_of_each_station_is_due(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path / "s.sqlite3")
    try:
        a = [status_event("A", n) for n in range(3)]
        b = [status_event("B", n) for n in range(2)]
        for ea, eb in zip(a, b, strict=False):
            await spool.enqueue(ea, station="A")
            await spool.enqueue(eb, station="B")
        await spool.enqueue(a[2], station="A")
        now = time.time()
        due = await spool.due_events(now=now, limit=10)
        assert [e.event_id for e in due] == [a[0]["event_id"], b[0]["event_id"]]

        # A's head waits for a retry: nothing of A may overtake it, B goes on.
        await spool.schedule_retries([(due[0].seq, now + 60, "HTTP 500")])
        await spool.ack([due[1].seq])
        due = await spool.due_events(now=now, limit=10)
        assert [e.event_id for e in due] == [b[1]["event_id"]]
        assert await spool.next_retry_at() == 0  # B's remaining event is due now

        later = await spool.due_events(now=now + 61, limit=10)
        assert later[0].event_id == a[0]["event_id"]
        assert later[0].attempts == 1
    finally:
        await spool.close()


async def test_dead_lettered_event_unblocks_its_station(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path / "s.sqlite3")
    try:
        first, second = status_event("A", 1), status_event("A", 2)
        await spool.enqueue(first, station="A")
        await spool.enqueue(second, station="A")
        head = (await spool.due_events(now=time.time(), limit=5))[0]
        await spool.move_to_dead_letter(head, reason="core_refused", detail="HTTP 403")
        due = await spool.due_events(now=time.time(), limit=5)
        assert [e.event_id for e in due] == [second["event_id"]]
        letters = await spool.dead_letters()
        assert letters[0].event_id == first["event_id"] and letters[0].body == first
        assert letters[0].source == "forwarder" and letters[0].detail == "HTTP 403"
    finally:
        await spool.close()


async def test_return_dedupe_window(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path / "s.sqlite3")
    try:

        def returned(event_id: str) -> dict[str, Any]:
            return {"type": "returned", "event_id": event_id, "observed_at": "x"}

        base = 1_762_928_800.0
        args = {"station": "A", "power_bank_serial": "40818052", "slot_number": 3, "dedupe_window_s": 90.0}
        assert (await spool.enqueue_return(returned("r1"), observed_ts=base, **args))[:2] == ("r1", False)
        assert (await spool.enqueue_return(returned("r2"), observed_ts=base + 30, **args))[:2] == ("r1", True)
        other_slot = {**args, "slot_number": 4}
        assert (await spool.enqueue_return(returned("r3"), observed_ts=base + 30, **other_slot))[:2] == (
            "r3",
            False,
        )
        # Long after: the same bank returned to the same slot again is a new return.
        assert (await spool.enqueue_return(returned("r4"), observed_ts=base + 600, **args))[:2] == (
            "r4",
            False,
        )
        assert [e.event_id for e in await spool.pending_events()] == ["r1", "r3", "r4"]
    finally:
        await spool.close()


async def test_a_later_report_completes_a_waiting_return(tmp_path: Path) -> None:
    """HTTP return first (no battery level), then the 0x40 frame with SOC: one event, with the SOC."""
    spool = await open_spool(tmp_path / "s.sqlite3")
    try:

        def returned(event_id: str, battery: int | None, hardware: dict[str, Any]) -> dict[str, Any]:
            info: dict[str, Any] = {"power_bank_serial": "40818052", "slot_number": 3}
            info["hardware_info"] = hardware
            if battery is not None:
                info["battery_level"] = battery
            return {"type": "returned", "event_id": event_id, "return_event": info}

        args = {"station": "A", "power_bank_serial": "40818052", "slot_number": 3, "dedupe_window_s": 90.0}
        http_first = returned("r1", None, {"source": "http"})
        frame_later = returned("r2", 95, {"source": "mqtt", "soft_version": 202})
        assert (await spool.enqueue_return(http_first, observed_ts=1000.0, **args))[:2] == ("r1", False)
        assert (await spool.enqueue_return(frame_later, observed_ts=1002.0, **args))[:2] == ("r1", True)
        [event] = await spool.pending_events()
        assert event.event_id == "r1"
        assert event.body["return_event"]["battery_level"] == 95
        # What the first report said wins; only missing fields are filled in.
        assert event.body["return_event"]["hardware_info"] == {"source": "http", "soft_version": 202}

        # Once delivered, a late duplicate changes nothing and adds nothing.
        await spool.ack([event.seq])
        assert (await spool.enqueue_return(returned("r3", 50, {}), observed_ts=1003.0, **args))[:2] == (
            "r1",
            True,
        )
        assert await spool.pending_events() == []
    finally:
        await spool.close()


async def test_audit_rows_round_trip(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path / "s.sqlite3")
    try:
        audit_id = await spool.audit_command_started(
            command_id="c1",
            station="A",
            caller="core",
            cmd="setWifi",
            payload={"cmd": "setWifi", "password": "***"},
            qos=1,
            started_at=time.time(),
        )
        await spool.audit_command_finished(audit_id, outcome="ok", reply=None, elapsed_ms=12)
        rows = await spool.audit_rows("A")
        assert [(r.command_id, r.outcome, r.elapsed_ms, r.payload["password"]) for r in rows] == [
            ("c1", "ok", 12, "***")
        ]
    finally:
        await spool.close()


async def test_concurrent_writes_share_commits_and_a_failing_one_fails_alone(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path / "s.sqlite3")
    try:
        events = [status_event(f"S{n % 7}", n) for n in range(200)]
        await spool.enqueue(events[0], station="S0")
        duplicate = {**status_event("S0", 999), "event_id": events[0]["event_id"]}
        outcomes = await asyncio.gather(
            *(spool.enqueue(e, station=e["device"]["imei"]) for e in events[1:]),
            spool.enqueue(duplicate, station="S0"),
            return_exceptions=True,
        )
        # Only the duplicate id failed; everything else of its transaction was committed.
        assert [type(o) for o in outcomes if o is not None] == [sqlite3.IntegrityError]
        assert await spool.pending_count() == 200
        commits, jobs = spool.group_commit_stats
        assert jobs == 201 and commits < jobs  # concurrent events shared fsyncs
    finally:
        await spool.close()
    # Every acknowledged write is in the file after a reopen.
    reopened = await open_spool(tmp_path / "s.sqlite3")
    try:
        assert [e.event_id for e in await reopened.pending_events()] == [e["event_id"] for e in events]
    finally:
        await reopened.close()


async def test_due_batch_keeps_station_order_and_skips_stations_in_flight(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path / "s.sqlite3")
    try:
        a = [status_event("A", n) for n in range(4)]
        b = [status_event("B", n) for n in range(2)]
        c = [status_event("C", n) for n in range(2)]
        for event in [a[0], b[0], a[1], c[0], a[2], b[1], a[3], c[1]]:
            await spool.enqueue(event, station=event["device"]["imei"])
        now = time.time()

        due = await spool.due_batch(now=now, limit=10, per_station=3)
        assert [e.event_id for e in due] == [
            e["event_id"] for e in [a[0], b[0], a[1], c[0], a[2], b[1], c[1]]
        ]  # A capped at three, all in spool order

        in_flight = await spool.due_batch(now=now, limit=10, per_station=3, exclude=["A", "C"])
        assert [e.event_id for e in in_flight] == [b[0]["event_id"], b[1]["event_id"]]

        # B's head waits for a retry: none of B goes, not even its later event.
        await spool.schedule_retries([(in_flight[0].seq, now + 60, "HTTP 500")])
        due = await spool.due_batch(now=now, limit=10, per_station=1)
        assert [e.event_id for e in due] == [a[0]["event_id"], c[0]["event_id"]]
        assert await spool.next_retry_at(exclude=["A", "C"]) == now + 60
    finally:
        await spool.close()
