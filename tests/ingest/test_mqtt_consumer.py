"""The MQTT consumer over the real broker: routing of every frame type, dedupe, bad frames."""

from __future__ import annotations

from pathlib import Path

import pytest
from chargeghar_ingest.consumer import device_subscriptions, parse_device_topic
from chargeghar_protocol.codec import (
    Heartbeat,
    PopupByHoleResult,
    PopupBySnResult,
    ReturnReport,
    WifiScanList,
    build_frame,
    encode_frame,
)
from chargeghar_protocol.signing import device_sign
from ingest_harness import STATION, UPLOAD_FRAME, RunningIngest, running_ingest, wait_until
from ingest_mqtt import mqtt_settings, publish_frame, station_client

pytestmark = pytest.mark.mqtt


def test_subscriptions_and_topic_parsing() -> None:
    assert device_subscriptions("", None) == ["/powerbank/+/user/update", "/powerbank/+/user/heart"]
    assert device_subscriptions("", "ingest") == [
        "$share/ingest//powerbank/+/user/update",
        "$share/ingest//powerbank/+/user/heart",
    ]
    assert device_subscriptions("/t1", "g")[0] == "$share/g//t1/powerbank/+/user/update"
    parsed = parse_device_topic("/t1/powerbank/864601069946994/user/heart", "/t1")
    assert parsed is not None and (parsed.station, parsed.leaf) == ("864601069946994", "heart")
    assert parse_device_topic("/powerbank/864601069946994/user/upload", "") is None
    assert parse_device_topic("powerbank/864601069946994/user/update", "") is None


async def wait_for_events(ingest: RunningIngest, event_type: str, count: int, station: str = STATION) -> None:
    async def enough() -> bool:
        return len(await ingest.event_bodies(event_type, station)) >= count

    await wait_until(enough)


async def test_every_frame_type_is_routed(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str
) -> None:
    async with running_ingest(mqtt_settings(tmp_path, mqtt_broker, topic_prefix)) as ingest:
        assert ingest.runtime.transport is not None
        assert await ingest.runtime.transport.wait_connected(10)
        async with station_client(mqtt_broker) as station:
            # 0x7A heartbeat on the heart topic → ONLINE with signal.
            await publish_frame(
                station, topic_prefix, STATION, Heartbeat(board=0x10, text="CSQ:27;BP:0"), leaf="heart"
            )
            await wait_for_events(ingest, "status", 1)
            # 0x10 → full.
            await publish_frame(station, topic_prefix, STATION, UPLOAD_FRAME)
            await wait_for_events(ingest, "full", 1)
            # 0x40 failed insertion → nothing; 0x40 success → returned with the frame's SOC.
            failed = ReturnReport(
                board=0x10, hole=2, area=4, sn_int=93198088, state=0x11, soft_version=0xCA, soc_byte=95
            )
            await publish_frame(station, topic_prefix, STATION, failed)
            ok = ReturnReport(
                board=0x10, hole=1, area=4, sn_int=93198088, state=0x01, soft_version=0xCA, soc_byte=95
            )
            await publish_frame(station, topic_prefix, STATION, ok)
            await wait_for_events(ingest, "returned", 1)
            # 0x28 → slot_event.
            # Built byte by byte (protocol.md §4.8) so the test does not depend on the encoder.
            slot = build_frame(
                0x28,
                bytes([0x10, 5, 0x24, 0, 0, 4])
                + (80146582).to_bytes(4, "big")
                + bytes([60, 30, 50, 1, 26, 0]),
            )
            await publish_frame(station, topic_prefix, STATION, slot)
            await wait_for_events(ingest, "slot_event", 1)
            # 0x31 / 0x21 / 0xCF with nobody waiting → command_result events.
            await publish_frame(
                station, topic_prefix, STATION, PopupBySnResult(hole=1, sn_int=40818048, state=1, solenoid=2)
            )
            await publish_frame(
                station, topic_prefix, STATION, PopupByHoleResult(board=0x10, hole=1, state=0, solenoid=2)
            )
            await publish_frame(station, topic_prefix, STATION, WifiScanList(payload=b'["cafe","home"]'))
            await wait_for_events(ingest, "command_result", 3)

        status = await ingest.event_bodies("status", STATION)
        assert len(status) == 1
        assert status[0]["device"]["status"] == "ONLINE"
        assert status[0]["device"]["hardware_info"] == {"signal_strength": 27, "backup_power": 0}
        full = (await ingest.event_bodies("full", STATION))[0]
        assert full["station"]["total_slots"] == 4 and "signal_strength" not in full["device"]
        returned = await ingest.event_bodies("returned", STATION)
        assert len(returned) == 1
        assert returned[0]["return_event"] | {"returned_at": None} == returned[0]["return_event"] | {
            "power_bank_serial": "93198088",
            "slot_number": 1,
            "battery_level": 95,
            "returned_at": None,
        }
        slot_event = (await ingest.event_bodies("slot_event", STATION))[0]
        assert (slot_event["slot_number"], slot_event["state_code"], slot_event["power_bank_serial"]) == (
            5,
            0x24,
            "80146582",
        )
        results = await ingest.event_bodies("command_result", STATION)
        assert [(r["cmd"], r["outcome"], r.get("command_id")) for r in results] == [
            ("popup_sn", "ok", None),
            ("popup", "failed", None),
            ("getWifi", "ok", None),
        ]
        assert results[2]["reply"]["ssids"] == ["cafe", "home"]


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_heartbeat_status_only_on_change(
    tmp_path: Path, mqtt_broker: tuple[str, int], mqtt_is_embedded: bool, topic_prefix: str, protocol: str
) -> None:
    if protocol == "5" and mqtt_is_embedded:
        pytest.skip("the embedded amqtt broker speaks MQTT 3.1.1 only")
    settings = mqtt_settings(tmp_path, mqtt_broker, topic_prefix, mqtt={"protocol": protocol})
    async with running_ingest(settings) as ingest:
        assert ingest.runtime.transport is not None and await ingest.runtime.transport.wait_connected(10)
        async with station_client(mqtt_broker) as station:
            for text in ("CSQ:20;BP:0", "CSQ:20;BP:0", "CSQ:20;BP:0", "CSQ:25;BP:0"):
                await publish_frame(
                    station, topic_prefix, STATION, Heartbeat(board=0x10, text=text), leaf="heart"
                )
            await wait_for_events(ingest, "status", 2)

            async def all_handled() -> bool:
                return ingest.runtime.metrics.counters["mqtt_messages_total"] == 4

            await wait_until(all_handled)
        status = await ingest.event_bodies("status", STATION)
        assert [s["device"]["hardware_info"]["signal_strength"] for s in status] == [20, 25]


async def test_bad_frames_are_dead_lettered_and_the_consumer_carries_on(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str
) -> None:
    good = encode_frame(Heartbeat(board=0x10, text="CSQ:27;BP:0"))
    garbled = [
        b"hello",
        good[:-1] + bytes([good[-1] ^ 0xFF]),
        b"\xa8\x00\x05",
        bytes.fromhex("A8 00 06 99 00 00"),
    ]
    async with running_ingest(mqtt_settings(tmp_path, mqtt_broker, topic_prefix)) as ingest:
        assert ingest.runtime.transport is not None and await ingest.runtime.transport.wait_connected(10)
        async with station_client(mqtt_broker) as station:
            for payload in garbled:
                await publish_frame(station, topic_prefix, STATION, payload)
            await publish_frame(station, topic_prefix, STATION, good, leaf="heart")
            await wait_for_events(ingest, "status", 1)

            async def counted() -> bool:
                return ingest.runtime.metrics.counters["mqtt_frames_invalid_total"] == len(garbled)

            await wait_until(counted)
        letters = await ingest.runtime.spool.dead_letters()
        assert sorted(d.raw_hex or "" for d in letters) == sorted(p.hex() for p in garbled)
        assert {(d.source, d.reason, d.station) for d in letters} == {("mqtt", "bad_frame", STATION)}
        assert ingest.runtime.transport.handler_errors == 0


async def test_one_return_reported_over_mqtt_and_http_is_one_event(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str
) -> None:
    async with running_ingest(mqtt_settings(tmp_path, mqtt_broker, topic_prefix)) as ingest:
        assert ingest.runtime.transport is not None and await ingest.runtime.transport.wait_connected(10)
        async with station_client(mqtt_broker) as station:
            report = ReturnReport(
                board=0x01, hole=3, area=73, sn_int=40818052, state=1, soft_version=25, soc_byte=88
            )
            await publish_frame(station, topic_prefix, STATION, report)
            await wait_for_events(ingest, "returned", 1)
        params = {"rentboxSN": STATION, "singleSN": "40818052", "hole": "3"}
        response = await ingest.client.post(
            "/api/rentbox/order/return", data={**params, "sign": device_sign(params)}
        )
        assert response.json()["code"] == 200
        returned = await ingest.event_bodies("returned", STATION)
        assert len(returned) == 1
        assert returned[0]["return_event"]["battery_level"] == 88  # the MQTT report's real SOC
        assert ingest.runtime.metrics.counters["returns_deduplicated_total"] == 1


async def test_http_return_first_gets_the_battery_level_of_the_later_mqtt_report(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str
) -> None:
    # The harness runs without a forwarder, so the first report is still waiting in the spool.
    async with running_ingest(mqtt_settings(tmp_path, mqtt_broker, topic_prefix)) as ingest:
        assert ingest.runtime.transport is not None and await ingest.runtime.transport.wait_connected(10)
        params = {"rentboxSN": STATION, "singleSN": "40818052", "hole": "3"}
        response = await ingest.client.post(
            "/api/rentbox/order/return", data={**params, "sign": device_sign(params)}
        )
        assert response.json()["code"] == 200
        async with station_client(mqtt_broker) as station:
            report = ReturnReport(
                board=0x01, hole=3, area=73, sn_int=40818052, state=1, soft_version=25, soc_byte=77
            )
            await publish_frame(station, topic_prefix, STATION, report)

            async def deduplicated() -> bool:
                return ingest.runtime.metrics.counters["returns_deduplicated_total"] == 1

            await wait_until(deduplicated)
        returned = await ingest.event_bodies("returned", STATION)
        assert len(returned) == 1
        assert returned[0]["return_event"]["battery_level"] == 77


async def test_concurrent_handlers_keep_each_stations_order(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str
) -> None:
    stations = [f"86460106994{n:04d}" for n in range(5)]
    per_station = 12

    def slot_frame(hole: int) -> bytes:
        # 0x28 slot state for hole ``hole`` (protocol.md §4.8): the hole number marks the publish order.
        return build_frame(
            0x28,
            bytes([0x10, hole, 0x24, 0, 0, 4])
            + (80146582).to_bytes(4, "big")
            + bytes([60, 30, 50, 1, 26, 0]),
        )

    settings = mqtt_settings(
        tmp_path, mqtt_broker, topic_prefix, mqtt={"handler_workers": 4, "handler_queue_size": 2}
    )
    async with running_ingest(settings) as ingest:
        assert ingest.runtime.transport is not None
        assert await ingest.runtime.transport.wait_connected(10)
        async with station_client(mqtt_broker) as client:
            for hole in range(1, per_station + 1):
                for station in stations:
                    await publish_frame(client, topic_prefix, station, slot_frame(hole))

            async def all_spooled() -> bool:
                # Count the slot events themselves: each station's first message also spools an ONLINE
                # status event, so the spool's total reached the target while slot events were still
                # being handled (the old flaky wait).
                for station in stations:
                    if len(await ingest.event_bodies("slot_event", station)) < per_station:
                        return False
                return True

            await wait_until(all_spooled)
        # Exactly one ONLINE status per station, besides the slot events: why a total count cannot wait.
        assert await ingest.runtime.spool.pending_count() == len(stations) * (per_station + 1)
        for station in stations:
            events = await ingest.event_bodies("slot_event", station)
            assert [e["slot_number"] for e in events] == list(range(1, per_station + 1)), station
