"""No station is ever frozen by one event: poison input is cleaned or refused at the edges, and an event
core keeps failing is parked (dead letter "parked", counted, re-drivable) so the station's later events
flow again — while an outage of core parks nothing."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from chargeghar_ingest.cli import register
from chargeghar_ingest.settings import IngestSettings
from chargeghar_ingest.spool import Spool
from chargeghar_protocol.signing import device_sign, signed_headers
from ingest_fake_core import HMAC_SECRET, FakeCore
from ingest_harness import STATION, UPLOAD_FRAME, RunningIngest, make_settings, running_ingest, wait_until
from ingest_mqtt import mqtt_settings, publish_frame, station_client


def status_event(station: str, n: int) -> dict[str, Any]:
    return {
        "type": "status",
        "timestamp": 1_762_928_776 + n,
        "device": {"serial_number": station, "imei": station, "status": "ONLINE"},
        "event_id": str(uuid.uuid4()),
        "observed_at": "2025-11-12T06:26:16Z",
    }


def forwarding(tmp_path: Path, core: FakeCore, **core_overrides: Any) -> IngestSettings:
    return make_settings(tmp_path, forwarder_enabled=True, core={"base_url": core.base_url, **core_overrides})


async def keep_other_stations_flowing(ingest: RunningIngest, core: FakeCore, until: asyncio.Event) -> None:
    """Other stations' traffic, one event at a time: the evidence that core is healthy meanwhile."""
    n = 0
    while not until.is_set():
        n += 1
        event = status_event("OTHER", n)
        await ingest.runtime.spool.enqueue(event, station="OTHER")

        async def taken(event_id: str = str(event["event_id"])) -> bool:
            return event_id in core.accepted_ids or until.is_set()

        await wait_until(taken)


async def signed_post(ingest: RunningIngest, path: str, payload: dict[str, Any]) -> Any:
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", **signed_headers(HMAC_SECRET, body)}
    return await ingest.client.post(path, content=body, headers=headers)


# ------------------------------------------------------------------------------------------------ HTTP edge


async def test_nul_in_ssid_is_cleaned_and_the_upload_applies(tmp_path: Path) -> None:
    # Anyone can compute the device sign, so a sign over a NUL is valid: the ingest must clean the value.
    params = {"rentboxSN": STATION, "signal": "CSQ:31\x00", "ssid": "cafe\x00net\x01" + "x" * 200}
    params["sign"] = device_sign(params)
    async with running_ingest(make_settings(tmp_path)) as ingest:
        response = await ingest.client.post("/api/rentbox/upload/data", params=params, content=UPLOAD_FRAME)
        assert response.json()["code"] == 200
        [full] = await ingest.event_bodies("full", STATION)
        ssid = full["device"]["wifi_ssid"]
        assert ssid.startswith("cafenet") and len(ssid) == 64
        assert "\x00" not in json.dumps(full) and "\\u0000" not in json.dumps(full)
        assert ingest.runtime.metrics.counters["device_strings_cleaned_total"] >= 2


@pytest.mark.parametrize("imei", ["8646010699\x0046994", "8" * 40, "864601;069946994"])
async def test_implausible_station_id_is_refused_with_evidence(tmp_path: Path, imei: str) -> None:
    params = {"rentboxSN": imei, "signal": "CSQ:31"}
    params["sign"] = device_sign(params)
    async with running_ingest(make_settings(tmp_path)) as ingest:
        response = await ingest.client.post("/api/rentbox/upload/data", params=params, content=UPLOAD_FRAME)
        assert response.status_code == 400 and response.json()["code"] == 400
        assert await ingest.events() == []
        [letter] = await ingest.runtime.spool.dead_letters()
        assert (letter.source, letter.reason, letter.station) == ("http", "implausible_id", None)
        # The evidence: the raw body (the frame) and the query carrying the bad id.
        assert letter.raw_hex == UPLOAD_FRAME.hex()
        assert "rentboxSN" in json.loads(letter.detail or "{}")["query"]


async def test_oversized_body_with_bad_sign_is_413_and_the_station_carries_on(tmp_path: Path) -> None:
    bad_sign = {"rentboxSN": STATION, "signal": "CSQ:31", "sign": "0" * 32}
    huge = b"\xa8" * (10 * 1024 * 1024)

    async def streamed() -> Any:
        # No Content-Length: the ingest must count what it reads and stop past the limit.
        for offset in range(0, len(huge), 64 * 1024):
            yield huge[offset : offset + 64 * 1024]

    async with running_ingest(make_settings(tmp_path)) as ingest:
        declared = await ingest.client.post("/api/rentbox/upload/data", params=bad_sign, content=huge)
        chunked = await ingest.client.post("/api/rentbox/upload/data", params=bad_sign, content=streamed())
        for response in (declared, chunked):
            assert response.status_code == 413 and response.json()["code"] == 413
        letters = await ingest.runtime.spool.dead_letters()
        assert [d.reason for d in letters] == ["body_too_large", "body_too_large"]
        limit = ingest.runtime.settings.device.max_body_bytes
        by_declared, by_counting = letters[1], letters[0]
        assert by_declared.raw_len == len(huge) and by_declared.raw_hex == ""
        # At most the capped prefix is kept; the sha256 is left out, as the whole body was never read.
        assert by_counting.raw_len is not None and by_counting.raw_len > limit
        assert len(by_counting.raw_hex or "") <= 2 * ingest.runtime.spool.dead_letter_raw_max_bytes
        assert by_counting.raw_sha256 is None
        assert ingest.runtime.metrics.counters["http_device_too_large_total"] == 2

        # The station's next, real upload is applied.
        good = {"rentboxSN": STATION, "signal": "CSQ:31"}
        good["sign"] = device_sign(good)
        response = await ingest.client.post("/api/rentbox/upload/data", params=good, content=UPLOAD_FRAME)
        assert response.json()["code"] == 200
        assert len(await ingest.event_bodies("full", STATION)) == 1


async def test_dead_letter_keeps_a_capped_prefix_with_length_and_sha256(tmp_path: Path) -> None:
    # Under the body limit but far above the dead-letter cap: a garbled frame with a good sign.
    body = bytes(range(256)) * 40
    params = {"rentboxSN": STATION, "signal": "CSQ:31"}
    params["sign"] = device_sign(params)
    async with running_ingest(make_settings(tmp_path)) as ingest:
        response = await ingest.client.post("/api/rentbox/upload/data", params=params, content=body)
        assert response.json()["code"] == 400
        [letter] = await ingest.runtime.spool.dead_letters()
        cap = ingest.runtime.spool.dead_letter_raw_max_bytes
        assert letter.raw_hex == body[:cap].hex()
        assert letter.raw_len == len(body)
        assert letter.raw_sha256 == hashlib.sha256(body).hexdigest()


# ------------------------------------------------------------------------------------------------ MQTT edge


@pytest.mark.mqtt
async def test_oversized_mqtt_payload_and_bad_topic_id_are_recorded_and_the_station_carries_on(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str
) -> None:
    oversized = b"\xa8\x00" + bytes(1024 * 1024)
    async with running_ingest(mqtt_settings(tmp_path, mqtt_broker, topic_prefix)) as ingest:
        assert ingest.runtime.transport is not None
        async with station_client(mqtt_broker) as station:
            await publish_frame(station, topic_prefix, STATION, oversized)
            await publish_frame(station, topic_prefix, "8" * 40, UPLOAD_FRAME)
            await publish_frame(station, topic_prefix, STATION, UPLOAD_FRAME)

            async def all_handled() -> bool:
                full = await ingest.event_bodies("full", STATION)
                return len(full) == 1 and await ingest.runtime.spool.dead_letter_count() == 2

            await wait_until(all_handled)
        assert {e.station for e in await ingest.events()} == {STATION}
        letters = {d.reason: d for d in await ingest.runtime.spool.dead_letters()}
        assert set(letters) == {"bad_frame", "bad_topic"}
        assert letters["bad_frame"].raw_len == len(oversized)
        assert letters["bad_frame"].raw_sha256 == hashlib.sha256(oversized).hexdigest()
        assert len(letters["bad_frame"].raw_hex or "") == 2 * ingest.runtime.spool.dead_letter_raw_max_bytes
        assert letters["bad_topic"].station is None


# ------------------------------------------------------------------------------------------------ parking


async def test_poison_event_is_parked_then_redriven_to_its_place(tmp_path: Path, fake_core: FakeCore) -> None:
    poison, later_1, later_2 = status_event("A", 1), status_event("A", 2), status_event("A", 3)
    fake_core.poison_event_ids.add(str(poison["event_id"]))
    async with running_ingest(forwarding(tmp_path, fake_core, max_attempts=3)) as ingest:
        spool = ingest.runtime.spool
        for event in (poison, later_1, later_2):
            await spool.enqueue(event, station="A")
        [original] = [e for e in await spool.pending_events("A") if e.event_id == poison["event_id"]]
        parked = asyncio.Event()
        traffic = asyncio.create_task(keep_other_stations_flowing(ingest, fake_core, parked))

        async def station_flows_again() -> bool:
            return {later_1["event_id"], later_2["event_id"]} <= set(fake_core.accepted_ids)

        try:
            await wait_until(station_flows_again, timeout_s=30)
        finally:
            parked.set()
            await traffic
        # The later events of the station were applied in order; the poison was not.
        accepted_a = [i for i in fake_core.accepted_ids if i in (later_1["event_id"], later_2["event_id"])]
        assert accepted_a == [later_1["event_id"], later_2["event_id"]]
        [letter] = await spool.dead_letters(reason="parked")
        assert (letter.event_id, letter.station, letter.event_seq) == (poison["event_id"], "A", original.seq)
        assert ingest.runtime.metrics.counters["events_parked_total"] == 1
        metrics = (await ingest.client.get("/metrics.json")).json()
        assert metrics["parked_events"] == 1 and metrics["events_struck_total"] >= 3

        # Visible to an operator (signed admin call), then re-driven once core is fixed.
        unsigned = await ingest.client.post("/internal/ops/redrive", json={"all_parked": True})
        assert unsigned.status_code in (401, 403)
        listing = await ingest.client.get(
            "/internal/ops/dead-letters",
            params={"reason": "parked"},
            headers=signed_headers(HMAC_SECRET, b""),
        )
        assert [item["event_id"] for item in listing.json()["data"]["items"]] == [poison["event_id"]]
        # Held back by core for a moment so the re-driven event is seen back in the spool at its place.
        fake_core.fail_everything_with = 503
        answer = await signed_post(ingest, "/internal/ops/redrive", {"station": "A"})
        assert answer.status_code == 200 and answer.json()["data"]["count"] == 1
        [back] = await spool.pending_events("A")
        assert (back.event_id, back.seq, back.attempts, back.strikes) == (
            poison["event_id"],
            original.seq,
            0,
            0,
        )
        fake_core.poison_event_ids.clear()
        fake_core.fail_everything_with = None

        async def redriven_applied() -> bool:
            return poison["event_id"] in fake_core.accepted_ids and await spool.pending_count() == 0

        await wait_until(redriven_applied)
        assert await spool.dead_letter_count("parked") == 0
        assert ingest.runtime.metrics.counters["events_redriven_total"] == 1


@pytest.mark.parametrize("status", [500, 503])
async def test_core_failing_everything_parks_nothing(
    tmp_path: Path, fake_core: FakeCore, status: int
) -> None:
    fake_core.fail_everything_with = status
    async with running_ingest(forwarding(tmp_path, fake_core, max_attempts=2)) as ingest:
        spool = ingest.runtime.spool
        events = [status_event("A", 1), status_event("B", 1), status_event("A", 2)]
        for event in events:
            await spool.enqueue(event, station=event["device"]["imei"])

        async def tried_well_past_the_limit() -> bool:
            return all(
                e.attempts >= 5 for e in await spool.pending_events() if e.event_id == events[0]["event_id"]
            )

        await wait_until(tried_well_past_the_limit, timeout_s=30)
        assert await spool.dead_letter_count() == 0
        assert all(e.strikes == 0 for e in await spool.pending_events())
        fake_core.fail_everything_with = None

        async def all_applied() -> bool:
            return await spool.pending_count() == 0

        await wait_until(all_applied)
        assert sorted(fake_core.accepted_ids) == sorted(str(e["event_id"]) for e in events)
        assert ingest.runtime.metrics.counters["events_parked_total"] == 0


async def test_batch_failing_as_a_whole_is_resent_alone_and_only_the_poison_waits(
    tmp_path: Path, fake_core: FakeCore
) -> None:
    # A core without per-event isolation: one poison fails every batch carrying it.
    fake_core.poison_fails_whole_batch = True
    poison, after = status_event("A", 1), status_event("A", 2)
    others = [status_event(station, 1) for station in ("B", "C", "D")]
    fake_core.poison_event_ids.add(str(poison["event_id"]))
    settings = make_settings(tmp_path, core={"base_url": fake_core.base_url, "max_attempts": 1})
    async with running_ingest(settings) as ingest:
        spool = ingest.runtime.spool
        for event in (poison, after, *others):
            await spool.enqueue(event, station=event["device"]["imei"])
        # Started after everything is spooled, so the first batch carries all of it.
        forwarder = asyncio.create_task(ingest.runtime.forwarder.run())
        try:

            async def all_but_the_poison_applied() -> bool:
                return await spool.pending_count() == 0

            await wait_until(all_but_the_poison_applied)
        finally:
            forwarder.cancel()
            await asyncio.gather(forwarder, return_exceptions=True)
        assert set(fake_core.accepted_ids) == {str(e["event_id"]) for e in (after, *others)}
        [letter] = await spool.dead_letters(reason="parked")
        assert letter.event_id == poison["event_id"]


def test_cli_redrive_puts_a_stations_parked_events_back_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "spool.sqlite3"
    monkeypatch.setenv("INGEST_SPOOL__PATH", str(path))
    first, second, later = status_event("A", 1), status_event("A", 2), status_event("A", 3)

    async def park_two() -> list[int]:
        spool = Spool(path)
        await spool.open()
        try:
            for event in (first, second, later):
                await spool.enqueue(event, station="A")
            pending = await spool.pending_events("A")
            for event in pending[:2]:
                await spool.move_to_dead_letter(event, reason="parked", detail="HTTP 500")
            return [e.seq for e in pending]
        finally:
            await spool.close()

    async def after() -> tuple[list[tuple[int, str]], int]:
        spool = Spool(path)
        await spool.open()
        try:
            events = [(e.seq, e.event_id) for e in await spool.pending_events("A")]
            return events, await spool.dead_letter_count("parked")
        finally:
            await spool.close()

    seqs = asyncio.run(park_two())
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["ingest-redrive", "--station", "A"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"redriven": 2}
    events, parked = asyncio.run(after())
    # Back before the event that overtook them, in their own order.
    assert events == list(zip(seqs, [first["event_id"], second["event_id"], later["event_id"]], strict=True))
    assert parked == 0
