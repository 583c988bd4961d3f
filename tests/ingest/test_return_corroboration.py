"""A return claimed over device HTTP only, then reported by its 0x40 over MQTT: the claim is corroborated.

The ingest's return dedupe must not swallow the 0x40: still spooled, the claim is upgraded in place to
``source: mqtt``; already delivered, a new ``returned`` event with ``source: mqtt`` follows it to core.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from chargeghar_ingest.spool import Spool, corroboration_event_id
from chargeghar_protocol.codec import ReturnReport
from chargeghar_protocol.signing import device_sign
from ingest_fake_core import FakeCore
from ingest_harness import STATION, running_ingest, wait_until
from ingest_mqtt import mqtt_settings, publish_frame, station_client

ARGS: dict[str, Any] = {
    "station": "A",
    "power_bank_serial": "40818052",
    "slot_number": 3,
    "dedupe_window_s": 90.0,
}


def _returned(event_id: str, source: str, battery: int | None, returned_at: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "power_bank_serial": "40818052",
        "slot_number": 3,
        "battery_level": battery,
        "returned_at": returned_at,
        "hardware_info": {"source": "http"} if source == "http" else {"soft_version": 25},
        "source": source,
    }
    return {"type": "returned", "event_id": event_id, "return_event": info}


async def _spool(tmp_path: Path) -> Spool:
    spool = Spool(tmp_path / "s.sqlite3")
    await spool.open()
    return spool


async def test_a_waiting_claim_is_upgraded_in_place(tmp_path: Path) -> None:
    spool = await _spool(tmp_path)
    try:
        claim = _returned("c1", "http", None, "2026-12-01T10:00:00.000Z")
        assert (await spool.enqueue_return(claim, observed_ts=1000.0, source="http", **ARGS))[:2] == (
            "c1",
            False,
        )
        frame = _returned("m1", "mqtt", 77, "2026-12-01T10:00:02.000Z")
        spooled = await spool.enqueue_return(frame, observed_ts=1002.0, source="mqtt", **ARGS)
        assert spooled == (corroboration_event_id("c1"), True, True)
        [event] = await spool.pending_events()
        assert event.event_id == event.body["event_id"] == corroboration_event_id("c1")
        info = event.body["return_event"]
        assert info["source"] == "mqtt" and info["battery_level"] == 77
        assert info["returned_at"] == "2026-12-01T10:00:00.000Z"  # the claim's (first) time
        assert info["hardware_info"] == {"source": "mqtt", "soft_version": 25}
        # A repeated 0x40 of the same return is a plain duplicate now.
        again = await spool.enqueue_return(frame, observed_ts=1003.0, source="mqtt", **ARGS)
        assert again == (corroboration_event_id("c1"), True, False)
        assert len(await spool.pending_events()) == 1
    finally:
        await spool.close()


async def test_a_delivered_claim_gets_a_corroborating_event(tmp_path: Path) -> None:
    spool = await _spool(tmp_path)
    try:
        claim = _returned("c1", "http", None, "2026-12-01T10:00:00.000Z")
        await spool.enqueue_return(claim, observed_ts=1000.0, source="http", **ARGS)
        await spool.ack(await spool.pending_events())
        frame = _returned("m1", "mqtt", 77, "2026-12-01T10:00:30.000Z")
        spooled = await spool.enqueue_return(frame, observed_ts=1030.0, source="mqtt", **ARGS)
        assert spooled == (corroboration_event_id("c1"), False, True)
        [event] = await spool.pending_events()
        assert event.event_id == corroboration_event_id("c1")
        info = event.body["return_event"]
        assert info["source"] == "mqtt" and info["battery_level"] == 77
        assert info["returned_at"] == "1970-01-01T00:16:40Z"  # the claim's time (observed_ts 1000)
        # Corroborated once: neither another 0x40 nor an HTTP repeat adds a third event.
        await spool.enqueue_return(frame, observed_ts=1031.0, source="mqtt", **ARGS)
        await spool.enqueue_return(claim, observed_ts=1032.0, source="http", **ARGS)
        assert len(await spool.pending_events()) == 1
    finally:
        await spool.close()


async def test_mqtt_first_then_http_stays_one_event(tmp_path: Path) -> None:
    spool = await _spool(tmp_path)
    try:
        frame = _returned("m1", "mqtt", 77, "2026-12-01T10:00:00.000Z")
        await spool.enqueue_return(frame, observed_ts=1000.0, source="mqtt", **ARGS)
        claim = _returned("c1", "http", None, "2026-12-01T10:00:01.000Z")
        assert await spool.enqueue_return(claim, observed_ts=1001.0, source="http", **ARGS) == (
            "m1",
            True,
            False,
        )
        await spool.ack(await spool.pending_events())
        assert await spool.enqueue_return(claim, observed_ts=1002.0, source="http", **ARGS) == (
            "m1",
            True,
            False,
        )
        assert await spool.pending_events() == []
    finally:
        await spool.close()


async def test_a_claim_upgraded_while_in_flight_is_sent_again(tmp_path: Path) -> None:
    spool = await _spool(tmp_path)
    try:
        claim = _returned("c1", "http", None, "2026-12-01T10:00:00.000Z")
        await spool.enqueue_return(claim, observed_ts=1000.0, source="http", **ARGS)
        in_flight = await spool.due_batch(now=time.time(), limit=10, per_station=10)
        assert [e.event_id for e in in_flight] == ["c1"]
        # The 0x40 arrives while the forwarder is sending the claim; then core's 200 for the claim.
        frame = _returned("m1", "mqtt", 77, "2026-12-01T10:00:02.000Z")
        await spool.enqueue_return(frame, observed_ts=1002.0, source="mqtt", **ARGS)
        await spool.ack(in_flight)
        [event] = await spool.pending_events()
        assert event.event_id == corroboration_event_id("c1")
        assert event.body["return_event"]["source"] == "mqtt"
    finally:
        await spool.close()


@pytest.mark.mqtt
async def test_mqtt_report_after_a_delivered_http_claim_reaches_core(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str, fake_core: FakeCore
) -> None:
    settings = mqtt_settings(
        tmp_path,
        mqtt_broker,
        topic_prefix,
        forwarder_enabled=True,
        core={"base_url": fake_core.base_url},
    )
    async with running_ingest(settings) as ingest:
        assert ingest.runtime.transport is not None and await ingest.runtime.transport.wait_connected(10)
        params = {"rentboxSN": STATION, "singleSN": "40818052", "hole": "3"}
        response = await ingest.client.post(
            "/api/rentbox/order/return", data={**params, "sign": device_sign(params)}
        )
        assert response.json()["code"] == 200

        def returns() -> list[dict[str, Any]]:
            return [e for e in fake_core.accepted if e["type"] == "returned"]

        async def claim_delivered() -> bool:
            return len(returns()) == 1 and await ingest.runtime.spool.pending_count() == 0

        await wait_until(claim_delivered)
        async with station_client(mqtt_broker) as station:
            report = ReturnReport(
                board=0x01, hole=3, area=73, sn_int=40818052, state=1, soft_version=25, soc_byte=66
            )
            await publish_frame(station, topic_prefix, STATION, report)

            async def corroborated() -> bool:
                return len(returns()) == 2

            await wait_until(corroborated)
        claim, confirmation = returns()
        assert claim["return_event"]["source"] == "http"
        assert confirmation["return_event"]["source"] == "mqtt"
        assert confirmation["return_event"]["battery_level"] == 66
        assert confirmation["return_event"]["returned_at"] == claim["return_event"]["returned_at"]
        assert confirmation["event_id"] == corroboration_event_id(claim["event_id"])
        assert ingest.runtime.metrics.counters["returns_corroborated_total"] == 1
