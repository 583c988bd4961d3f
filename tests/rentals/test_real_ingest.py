"""End to end with the REAL ingest: core's command client → the ingest's command API over HTTP → the MQTT
broker → a cabinet answering with real protocol frames → back to core, which settles the rental."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from chargeghar_ingest.app import create_app as create_ingest_app
from chargeghar_ingest.settings import IngestSettings
from chargeghar_protocol.codec import Frame, Heartbeat, PopupBySnResult, encode_frame
from rentals_support import (
    HMAC_SECRET,
    add_package,
    add_renter,
    add_station,
    rental_settings,
    running_rentals_app,
    running_server,
)
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

pytestmark = pytest.mark.mqtt

# A real 0x10 snapshot (protocol.md §4.2): bank 40818052 sits in hole 3 of a 4-hole cabinet.
SNAPSHOT_WITH_BANK_IN_HOLE_3 = bytes.fromhex(
    "A8004710"
    "01040000040F"
    "010000000000000000000100000080"
    "020000000000000000000100000080"
    "030100E449026ED584641832021900"
    "040000000000000000000100000080"
    "9C"
)
BANK = "40818052"
POPUP_SUCCESS, POPUP_FAILED = 0x01, 0x02

Answer = Callable[[dict[str, str]], list[Frame | bytes]]


def _topic(prefix: str, imei: str, leaf: str) -> str:
    return f"{prefix}/powerbank/{imei}/user/{leaf}"


@asynccontextmanager
async def mqtt_cabinet(
    broker: tuple[str, int], prefix: str, imei: str, answer: Answer
) -> AsyncIterator[list[str]]:
    """A cabinet on the real broker: says hello, then answers every command it receives."""
    received: list[str] = []
    async with aiomqtt.Client(broker[0], broker[1], identifier=f"cabinet-{uuid.uuid4().hex[:8]}") as client:
        await client.subscribe(_topic(prefix, imei, "get"), qos=1)

        async def serve() -> None:
            async for message in client.messages:
                command = json.loads(bytes(message.payload))
                received.append(command["cmd"])
                for frame in answer(command):
                    payload = frame if isinstance(frame, bytes) else encode_frame(frame)
                    await client.publish(_topic(prefix, imei, "update"), payload, qos=1)

        task = asyncio.create_task(serve())
        try:
            await client.publish(
                _topic(prefix, imei, "heart"), encode_frame(Heartbeat(board=1, text="CSQ:25;BP:0")), qos=1
            )
            yield received
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@asynccontextmanager
async def real_ingest(tmp_path: Path, broker: tuple[str, int], prefix: str) -> AsyncIterator[tuple[str, Any]]:
    settings = IngestSettings.model_validate(
        {
            "environment": "test",
            "mqtt_enabled": True,
            "forwarder_enabled": False,
            "mqtt": {
                "host": broker[0],
                "port": broker[1],
                "topic_prefix": prefix,
                "client_id": f"ingest-rentals-{uuid.uuid4().hex[:8]}",
                "reconnect_initial_s": 0.1,
                "reconnect_max_s": 0.5,
            },
            "spool": {"path": tmp_path / "spool.sqlite3"},
            "core": {
                "base_url": "http://127.0.0.1:9",
                "hmac_secret": HMAC_SECRET,
                "password": "unused-password",
            },
            "device": {"credential_secret": "test-credential-secret"},
        }
    )
    app = create_ingest_app(settings)
    async with app.router.lifespan_context(app):
        runtime = app.state.runtime
        if runtime.transport is not None and not await runtime.transport.wait_connected(15):
            raise AssertionError("the ingest did not connect to the broker")
        async with running_server(app) as base_url:
            yield base_url, runtime


async def _online(runtime: Any, imei: str) -> None:
    """Wait (bounded) until the ingest has seen the cabinet's heartbeat."""
    deadline = time.monotonic() + 10
    while not await runtime.recorder.is_online(imei, 60):
        if time.monotonic() > deadline:
            raise AssertionError("the cabinet never came online at the ingest")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("popup_state", "expected_status", "expected_commands", "balance_after"),
    [
        (POPUP_SUCCESS, 201, ["popup_sn"], 0),
        # The cabinet says the eject failed; the real `check` snapshot shows the bank still in hole 3.
        (POPUP_FAILED, 409, ["popup_sn", "check"], 5000),
    ],
)
async def test_start_through_the_real_ingest_and_broker(
    tmp_path: Path,
    mqtt_broker: tuple[str, int],
    topic_prefix: str,
    rentals_database_url: str,
    test_sessionmaker: async_sessionmaker[AsyncSession],
    session: AsyncSession,
    popup_state: int,
    expected_status: int,
    expected_commands: list[str],
    balance_after: int,
) -> None:
    from chargeghar_core.payments.models import Wallet
    from chargeghar_core.stations.models import Station

    def answer(command: dict[str, str]) -> list[Frame | bytes]:
        if command["cmd"] == "popup_sn":
            return [PopupBySnResult(hole=3, sn_int=int(command["data"]), state=popup_state, solenoid=2)]
        if command["cmd"] == "check":
            return [SNAPSHOT_WITH_BANK_IN_HOLE_3]
        return []

    async with real_ingest(tmp_path, mqtt_broker, topic_prefix) as (ingest_url, ingest_runtime):
        async with running_rentals_app(
            rentals_database_url, rental_settings(ingest_url), sessionmaker=test_sessionmaker
        ) as client:
            imei = await add_station(client, session, {1: None, 2: None, 3: BANK, 4: None})
            async with mqtt_cabinet(mqtt_broker, topic_prefix, imei, answer) as received:
                await _online(ingest_runtime, imei)
                renter = await add_renter(session, balance_paisa=5000)
                station_id = await session.scalar(select(Station.id).where(Station.imei == imei))
                response = await client.start(
                    renter, station_id=station_id, package_id=await add_package(session, price_paisa=5000)
                )

    assert response.status_code == expected_status, response.text
    assert received == expected_commands
    balance = await session.scalar(
        select(Wallet.balance_paisa).where(Wallet.user_id == renter).execution_options(populate_existing=True)
    )
    assert balance == balance_after
