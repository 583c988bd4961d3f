"""The real ingest's output for "HTTP return first, 0x40 later", applied by the real core.

The device HTTP return reaches core as a claim (the rental stays ACTIVE); the 0x40 that follows it over the
real broker must still reach core (the ingest's return dedupe used to drop it once the claim was delivered),
and core completes the rental at the claim's time, once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from chargeghar_ingest.app import create_app as create_ingest_app
from chargeghar_ingest.runtime import IngestRuntime
from chargeghar_ingest.settings import IngestSettings
from chargeghar_protocol.codec import ReturnReport, encode_frame
from chargeghar_protocol.signing import device_sign
from httpx import ASGITransport, AsyncClient
from rentals_support import HMAC_SECRET, FakeIngest, RentalsClient
from sqlalchemy.ext.asyncio import AsyncSession
from test_returns import _ledger, _rent, _rental

pytestmark = pytest.mark.mqtt


@asynccontextmanager
async def _ingest(
    tmp_path: Path, broker: tuple[str, int], prefix: str
) -> AsyncIterator[tuple[IngestRuntime, AsyncClient]]:
    settings = IngestSettings.model_validate(
        {
            "environment": "test",
            "mqtt_enabled": True,
            "forwarder_enabled": False,  # the test delivers the spooled events to core itself, in order
            "mqtt": {
                "host": broker[0],
                "port": broker[1],
                "topic_prefix": prefix,
                "client_id": f"ingest-corroboration-{uuid.uuid4().hex[:8]}",
                "reconnect_initial_s": 0.1,
                "reconnect_max_s": 0.5,
            },
            "spool": {"path": tmp_path / "spool.sqlite3"},
            "core": {"base_url": "http://127.0.0.1:9", "hmac_secret": HMAC_SECRET, "password": "unused"},
            "device": {"credential_secret": "test-credential-secret"},
        }
    )
    app = create_ingest_app(settings)
    async with app.router.lifespan_context(app):
        runtime: IngestRuntime = app.state.runtime
        assert runtime.transport is not None and await runtime.transport.wait_connected(15)
        async with AsyncClient(transport=ASGITransport(app=app), base_url="http://ingest") as http:
            yield runtime, http


async def _deliver_returns(runtime: IngestRuntime, client: RentalsClient) -> list[dict[str, Any]]:
    """What the forwarder does: send the spooled `returned` events to core, then acknowledge them."""
    answers: list[dict[str, Any]] = []
    for event in await runtime.spool.pending_events():
        if event.type == "returned":
            response = await client.sync(event.body, event_id=event.event_id)
            assert response.status_code == 200, response.text
            answers.append(response.json()["data"])
    await runtime.spool.ack(await runtime.spool.pending_events())
    return answers


async def test_http_claim_then_mqtt_report_completes_the_rental_at_the_claims_time(
    tmp_path: Path,
    mqtt_broker: tuple[str, int],
    topic_prefix: str,
    client: RentalsClient,
    session: AsyncSession,
    fake_ingest: FakeIngest,
) -> None:
    imei, serial, renter, rental = await _rent(client, session, fake_ingest, balance=10_000)
    async with _ingest(tmp_path, mqtt_broker, topic_prefix) as (runtime, http):
        params = {"rentboxSN": imei, "singleSN": serial, "hole": "2"}
        answer = await http.post("/api/rentbox/order/return", data={**params, "sign": device_sign(params)})
        assert answer.json()["code"] == 200
        [claimed] = await _deliver_returns(runtime, client)
        assert claimed["return_claimed"] is True and claimed["rental_status"] == "ACTIVE"
        stored = await _rental(session, rental["id"])
        assert stored.status == "ACTIVE" and stored.return_claimed_at is not None
        claimed_at: datetime = stored.return_claimed_at

        # The cabinet's 0x40 for the same return, a moment later over the real broker.
        report = ReturnReport(
            board=1, hole=2, area=0, sn_int=int(serial), state=1, soft_version=25, soc_byte=64
        )
        async with aiomqtt.Client(
            mqtt_broker[0], mqtt_broker[1], identifier=f"cab-{uuid.uuid4().hex[:8]}"
        ) as cab:
            await cab.publish(f"{topic_prefix}/powerbank/{imei}/user/update", encode_frame(report), qos=1)
            deadline = time.monotonic() + 10
            while not [e for e in await runtime.spool.pending_events() if e.type == "returned"]:
                assert time.monotonic() < deadline, "the 0x40 after a delivered claim was dropped"
                await asyncio.sleep(0.05)
        [pending] = [e for e in await runtime.spool.pending_events() if e.type == "returned"]
        assert pending.body["return_event"]["source"] == "mqtt"
        [completed] = await _deliver_returns(runtime, client)
        assert completed["rental_status"] == "COMPLETED", completed
        assert completed["battery_level"] == 64

        # Delivered again (a retry after a lost answer): a duplicate, nothing charged twice.
        again = await client.sync(pending.body, event_id=pending.event_id)
        assert again.status_code == 200 and again.json()["data"].get("duplicate") is True

    finished = await _rental(session, rental["id"])
    assert finished.status == "COMPLETED" and finished.ended_at == claimed_at
    assert [kind for kind, _ in await _ledger(session, renter)].count("RENTAL_CHARGE") == 1
