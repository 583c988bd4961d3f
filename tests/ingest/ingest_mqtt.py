"""MQTT test helpers: a fake station client on the real broker, and ingest settings bound to it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
from chargeghar_ingest.settings import IngestSettings
from chargeghar_protocol.codec import Frame, encode_frame
from ingest_harness import make_settings


def mqtt_settings(
    tmp_path: Path, broker: tuple[str, int], topic_prefix: str, **overrides: Any
) -> IngestSettings:
    host, port = broker
    mqtt = {
        "host": host,
        "port": port,
        "topic_prefix": topic_prefix,
        "client_id": f"ingest-test-{uuid.uuid4().hex[:8]}",
        "reconnect_initial_s": 0.1,
        "reconnect_max_s": 0.5,
        **overrides.pop("mqtt", {}),
    }
    return make_settings(tmp_path, mqtt_enabled=True, mqtt=mqtt, **overrides)


@asynccontextmanager
async def station_client(broker: tuple[str, int], name: str = "station") -> AsyncIterator[aiomqtt.Client]:
    host, port = broker
    async with aiomqtt.Client(host, port, identifier=f"{name}-{uuid.uuid4().hex[:8]}") as client:
        yield client


def device_topic(topic_prefix: str, imei: str, leaf: str) -> str:
    return f"{topic_prefix}/powerbank/{imei}/user/{leaf}"


async def publish_frame(
    client: aiomqtt.Client, topic_prefix: str, imei: str, frame: Frame | bytes, *, leaf: str = "update"
) -> None:
    payload = frame if isinstance(frame, bytes) else encode_frame(frame)
    await client.publish(device_topic(topic_prefix, imei, leaf), payload, qos=1)
