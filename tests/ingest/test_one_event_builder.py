"""One event builder: a frame becomes the same event whether it came over device HTTP or MQTT.

Both roads decode, apply the checksum policy and map frames through ``chargeghar_ingest.pipeline``; only
what the road itself says differs (an MQTT snapshot proves the MQTT link, an HTTP upload carries `signal`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from chargeghar_ingest.pipeline import decode_device_frame
from chargeghar_protocol.codec import FrameError
from chargeghar_protocol.signing import device_sign
from ingest_harness import STATION, UPLOAD_FRAME, running_ingest, wait_until
from ingest_mqtt import mqtt_settings, publish_frame, station_client

_ISO_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
_PER_EVENT = {"event_id", "observed_at", "correlation_id", "timestamp"}


def _without_times(value: Any) -> Any:
    """The event with what only says *when* (receipt times, ids) blanked: the rest must be equal."""
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if k not in _PER_EVENT}
    if isinstance(value, list):
        return [_without_times(item) for item in value]
    if isinstance(value, str) and _ISO_INSTANT.match(value):
        return "<time>"
    return value


def test_checksum_policy_is_one_rule() -> None:
    garbled = UPLOAD_FRAME[:-1] + bytes([UPLOAD_FRAME[-1] ^ 0xFF])
    with pytest.raises(FrameError, match="checksum mismatch"):
        decode_device_frame(garbled, accept_bad_checksum=False)
    assert decode_device_frame(garbled, accept_bad_checksum=True).checksum_valid is False
    assert decode_device_frame(UPLOAD_FRAME, accept_bad_checksum=False).checksum_valid is True


@pytest.mark.mqtt
async def test_the_same_snapshot_over_http_and_mqtt_gives_the_same_full_event(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str
) -> None:
    async with running_ingest(mqtt_settings(tmp_path, mqtt_broker, topic_prefix)) as ingest:
        params = {"rentboxSN": STATION, "signal": "25"}
        response = await ingest.client.post(
            "/api/rentbox/upload/data", params={**params, "sign": device_sign(params)}, content=UPLOAD_FRAME
        )
        assert response.json()["code"] == 200
        async with station_client(mqtt_broker) as station:
            await publish_frame(station, topic_prefix, STATION, UPLOAD_FRAME)

            async def both() -> bool:
                return len(await ingest.event_bodies("full", STATION)) == 2

            await wait_until(both)
        over_http, over_mqtt = (_without_times(e) for e in await ingest.event_bodies("full", STATION))
        # What the road itself says, and nothing else, differs.
        assert over_http["device"].pop("signal_strength") == "25"
        assert "status" not in over_http["device"]  # HTTP life leaves the station's status to presence
        assert "signal_strength" not in over_mqtt["device"]  # MQTT carries none: the heartbeat's stays
        assert over_mqtt["device"].pop("status") == "ONLINE"
        assert over_http == over_mqtt
