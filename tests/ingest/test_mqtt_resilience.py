"""Broker restarts (reconnect + re-subscribe) and shared subscriptions across two ingest replicas."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from chargeghar_ingest.settings import MqttSettings
from chargeghar_ingest.simulator.stack import die_with_parent
from chargeghar_ingest.transport import InboundMessage, MqttConnection, MqttTransport
from chargeghar_protocol.codec import Heartbeat
from ingest_harness import UPLOAD_FRAME, free_tcp_port, running_ingest, wait_until
from ingest_mqtt import mqtt_settings, publish_frame, station_client

pytestmark = pytest.mark.mqtt

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class OwnMosquitto:
    """A private Mosquitto on a free port that a test can stop and start again."""

    def __init__(self, directory: Path) -> None:
        self.port = free_tcp_port()
        self.config = directory / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_type error\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            die_with_parent([MOSQUITTO, "-c", str(self.config)]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def own_mosquitto(tmp_path: Path) -> Iterator[OwnMosquitto]:
    if not Path(MOSQUITTO).exists():
        if os.environ.get("CHARGEGHAR_REQUIRE_SERVICES", "") not in ("", "0", "false", "no"):
            pytest.fail("the mosquitto binary is required in CI (CHARGEGHAR_REQUIRE_SERVICES=1)")
        pytest.skip("the mosquitto binary is not installed")
    broker = OwnMosquitto(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def test_consumer_reconnects_and_resubscribes_after_broker_restart(
    tmp_path: Path, own_mosquitto: OwnMosquitto, topic_prefix: str
) -> None:
    broker = ("127.0.0.1", own_mosquitto.port)
    station = "864601069940077"
    async with running_ingest(mqtt_settings(tmp_path, broker, topic_prefix)) as ingest:
        transport = ingest.runtime.transport
        assert transport is not None and await transport.wait_connected(10)
        async with station_client(broker) as client:
            await publish_frame(client, topic_prefix, station, UPLOAD_FRAME)

        async def first_full() -> bool:
            return len(await ingest.event_bodies("full", station)) == 1

        await wait_until(first_full)

        own_mosquitto.stop()

        async def disconnected() -> bool:
            return not transport.connected

        await wait_until(disconnected)
        # Devices keep uploading over HTTP while MQTT is down.
        health = (await ingest.client.get("/health")).json()
        assert health["mqtt"] == "reconnecting" and health["status"] == "ok"
        await asyncio.sleep(0.5)  # a few failed reconnect attempts
        own_mosquitto.start()

        async def reconnected() -> bool:
            return transport.connected and transport.connect_count >= 2

        await wait_until(reconnected, timeout_s=15)
        # The new session has no subscriptions unless the ingest made them again.
        async with station_client(broker) as client:
            await publish_frame(
                client, topic_prefix, station, Heartbeat(board=1, text="CSQ:9;BP:0"), leaf="heart"
            )
            await publish_frame(client, topic_prefix, station, UPLOAD_FRAME)

        async def second_full() -> bool:
            return len(await ingest.event_bodies("full", station)) == 2

        await wait_until(second_full)
        assert transport.handler_errors == 0


async def test_two_replicas_on_one_shared_subscription_handle_each_message_once(
    tmp_path: Path, mqtt_broker: tuple[str, int], mqtt_is_embedded: bool, topic_prefix: str
) -> None:
    if mqtt_is_embedded:
        pytest.skip("the embedded amqtt broker has no shared subscriptions; needs Mosquitto/EMQX")
    group = f"g{uuid.uuid4().hex[:8]}"
    stations = [f"8646010699{n:05d}" for n in range(10)]
    per_station = 4
    async with (
        running_ingest(
            mqtt_settings(tmp_path / "a", mqtt_broker, topic_prefix, mqtt={"shared_group": group})
        ) as a,
        running_ingest(
            mqtt_settings(tmp_path / "b", mqtt_broker, topic_prefix, mqtt={"shared_group": group})
        ) as b,
    ):
        for replica in (a, b):
            assert replica.runtime.transport is not None and await replica.runtime.transport.wait_connected(
                10
            )
        async with station_client(mqtt_broker) as client:
            for _ in range(per_station):
                for station in stations:
                    await publish_frame(client, topic_prefix, station, UPLOAD_FRAME)
        total = len(stations) * per_station

        async def all_handled() -> bool:
            handled = (
                a.runtime.metrics.counters["mqtt_messages_total"]
                + b.runtime.metrics.counters["mqtt_messages_total"]
            )
            return handled >= total

        await wait_until(all_handled)
        await asyncio.sleep(0.3)  # a duplicate delivery would show up by now
        full_a = await a.event_bodies("full")
        full_b = await b.event_bodies("full")
        assert len(full_a) + len(full_b) == total
        assert full_a and full_b, "the broker should spread the group's messages over both replicas"
        ids = [e["event_id"] for e in full_a + full_b]
        assert len(set(ids)) == total


def test_default_mqtt_settings_resume_one_session_and_reconnect_within_seconds() -> None:
    """What a user gets without configuring anything: the same client id after a restart (the broker keeps
    the session under it), a persistent session, QoS 1, and a reconnect backoff of a few seconds at most."""
    first, second = MqttSettings(), MqttSettings()
    assert first.client_id == second.client_id == f"ingest-{socket.gethostname()}"
    assert first.persistent_session and first.session_expiry_s > 0 and first.subscribe_qos == 1

    async def ignore(message: InboundMessage) -> None:
        return None

    transport = MqttTransport(
        MqttConnection(first.host, first.port, first.client_id),
        subscriptions=[],
        handler=ignore,
        reconnect_initial_s=first.reconnect_initial_s,
        reconnect_max_s=first.reconnect_max_s,
    )
    delays = [transport._backoff(failures) for failures in range(1, 40) for _ in range(20)]
    assert max(delays) <= 5.0, "after a long broker outage the ingest must not lag the stations"
    assert len({round(d, 6) for d in delays[-100:]}) > 1, "jitter: replicas must not reconnect in lockstep"


async def test_default_session_delivers_what_arrived_while_the_ingest_was_down(
    tmp_path: Path, mqtt_broker: tuple[str, int], mqtt_is_embedded: bool, topic_prefix: str
) -> None:
    if mqtt_is_embedded:
        pytest.skip("relies on Mosquitto's queueing for offline persistent sessions")
    # Only the client id is pinned (the default, ingest-<hostname>, is shared by every test on this host).
    client_id = f"ingest-persistent-{uuid.uuid4().hex[:8]}"
    settings = mqtt_settings(tmp_path, mqtt_broker, topic_prefix, mqtt={"client_id": client_id})
    stations = [f"8646010699{n:05d}" for n in range(5)]
    async with running_ingest(settings) as ingest:
        assert ingest.runtime.transport is not None and await ingest.runtime.transport.wait_connected(10)
    # The ingest is down (restart, deploy): stations keep publishing at QoS 1.
    async with station_client(mqtt_broker) as client:
        for station in stations:
            await publish_frame(client, topic_prefix, station, UPLOAD_FRAME)
    async with running_ingest(settings) as ingest:

        async def delivered() -> bool:
            return len(await ingest.event_bodies("full")) == len(stations)

        await wait_until(delivered)
        assert sorted(e["device"]["imei"] for e in await ingest.event_bodies("full")) == stations
    # Drop the broker-side session so the broker does not queue for a client that never returns.
    async with aiomqtt.Client(mqtt_broker[0], mqtt_broker[1], identifier=client_id, clean_session=True):
        pass


async def test_transport_stops_when_cancelled_at_any_moment(
    mqtt_broker: tuple[str, int], topic_prefix: str
) -> None:
    """Cancelling while connecting/subscribing must stop the consumer (shutdown never hangs).

    Python 3.11's wait_for inside aiomqtt can swallow such a cancellation; the transport re-raises it.
    """

    async def ignore(message: InboundMessage) -> None:
        return None

    rng = random.Random(7)
    for attempt in range(60):
        transport = MqttTransport(
            # Throwaway ids: no session left behind on the shared broker for each of the 60 attempts.
            MqttConnection(
                mqtt_broker[0], mqtt_broker[1], f"cancel-{uuid.uuid4().hex[:8]}", persistent_session=False
            ),
            subscriptions=[(f"{topic_prefix}/powerbank/+/user/update", 1)],
            handler=ignore,
        )
        task = asyncio.create_task(transport.run())
        await asyncio.sleep(rng.uniform(0, 0.02))
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done, f"attempt {attempt}: the transport ignored its cancellation"
