"""No event is lost or applied twice when core is down for a while, or when the ingest is SIGKILLed.

The cabinets upload over HTTP every second or so; an upload the ingest answered with 200 is durable (it is in
the spool before the answer goes out), so every such upload must end up as exactly one row of core's sync log.
Uploads the ingest never answered (it was dead) are the device's loss, not the pipeline's; not counted.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from chargeghar_ingest.simulator.device import CabinetConfig
from chargeghar_ingest.simulator.fleet import Fleet, FleetConfig
from chargeghar_ingest.simulator.stack import LocalStack
from e2e_support import event_counts, eventually, new_stack
from sqlalchemy.ext.asyncio import AsyncEngine

pytestmark = [pytest.mark.slow, pytest.mark.mqtt]

CORE_DOWN_S = 30.0
SNAPSHOT = 0x10


@pytest.fixture
def own_stack(
    e2e_database_url: str, mqtt_broker: tuple[str, int], tmp_path: Path, repo_root: Path
) -> Iterator[LocalStack]:
    """A core + ingest pair this test may stop and kill."""
    stack = new_stack(e2e_database_url, mqtt_broker, tmp_path, repo_root)
    try:
        stack.prepare()
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture
async def uploading_fleet(own_stack: LocalStack) -> AsyncIterator[Fleet]:
    config = own_stack.config
    cabinet = CabinetConfig(
        imei="0",
        ingest_url=config.ingest_url,
        topic_prefix=config.topic_prefix,
        first_upload_delay_s=0.3,
        upload_interval_s=0.7,
        echo_timeout_s=3.0,
        http_timeout_s=3.0,
    )
    fleet = Fleet(FleetConfig(stations=2, slots=8, seed=uuid.uuid4().int % 10**9, cabinet=cabinet))
    run = asyncio.create_task(fleet.run())
    await fleet.wait_connected(20)
    try:
        yield fleet
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await fleet.aclose()


def accepted_uploads(fleet: Fleet) -> int:
    return sum(
        1
        for cabinet in fleet.cabinets
        for frame in cabinet.sent
        if frame.channel == "http" and frame.cmd == SNAPSHOT and frame.accepted
    )


def attempted_uploads(fleet: Fleet) -> int:
    """Every upload a cabinet sent, answered or not: one spooled just before a kill is delivered although
    the cabinet never got its answer (at-least-once towards the device, exactly-once into core)."""
    return sum(
        1
        for cabinet in fleet.cabinets
        for frame in cabinet.sent
        if frame.channel == "http" and frame.cmd == SNAPSHOT
    )


async def spool_pending(stack: LocalStack) -> float:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"{stack.config.ingest_url}/metrics.json")
        response.raise_for_status()
        return float(response.json()["spool_pending_events"])


async def assert_every_upload_arrives_once(engine: AsyncEngine, fleet: Fleet, sent: int) -> None:
    """Every accepted upload is in core, none twice; at most the uploads the cabinets attempted."""
    imeis = [cabinet.imei for cabinet in fleet.cabinets]
    attempted = attempted_uploads(fleet)
    await eventually(
        lambda: _counts_reach(engine, imeis, sent), within_s=90, what=f"{sent} full events in core"
    )
    await asyncio.sleep(2.0)  # a duplicate or a late spooled event would show up now
    rows, distinct = await event_counts(engine, imeis)
    assert rows == distinct, f"{rows - distinct} events were applied twice"
    assert sent <= rows <= attempted, f"{rows} events in core for {sent} accepted / {attempted} sent uploads"


async def _counts_reach(engine: AsyncEngine, imeis: list[str], sent: int) -> bool:
    rows, distinct = await event_counts(engine, imeis)
    assert rows == distinct, f"{rows - distinct} events were applied twice"
    return rows >= sent


async def test_core_down_for_half_a_minute_loses_nothing(
    own_stack: LocalStack, uploading_fleet: Fleet, events_db: AsyncEngine
) -> None:
    imeis = [cabinet.imei for cabinet in uploading_fleet.cabinets]
    await eventually(lambda: _any_event(events_db, imeis), within_s=30, what="first events in core")

    own_stack.core.stop()
    await asyncio.sleep(CORE_DOWN_S)
    assert await spool_pending(own_stack) > 0  # the ingest kept answering the cabinets and spooled
    await asyncio.to_thread(own_stack.start_core)
    await asyncio.sleep(2.0)

    sent = await _freeze(uploading_fleet)
    assert sent >= 2 * CORE_DOWN_S  # two cabinets, well over one upload per second between them
    await assert_every_upload_arrives_once(events_db, uploading_fleet, sent)


async def test_ingest_killed_with_spooled_events_loses_nothing(
    own_stack: LocalStack, uploading_fleet: Fleet, events_db: AsyncEngine
) -> None:
    imeis = [cabinet.imei for cabinet in uploading_fleet.cabinets]
    await eventually(lambda: _any_event(events_db, imeis), within_s=30, what="first events in core")

    own_stack.core.stop()  # events now pile up in the ingest's spool
    await eventually(lambda: _spool_holds(own_stack, 5), within_s=20, what="events waiting in the spool")
    own_stack.ingest.kill()
    await asyncio.sleep(2.0)  # uploads in this window fail at the cabinet and are not counted

    await asyncio.to_thread(own_stack.start_core)
    await asyncio.to_thread(own_stack.start_ingest)  # same spool file: it drains what the killed one held
    await asyncio.sleep(2.0)

    sent = await _freeze(uploading_fleet)
    await assert_every_upload_arrives_once(events_db, uploading_fleet, sent)


async def _any_event(engine: AsyncEngine, imeis: list[str]) -> bool:
    rows, _ = await event_counts(engine, imeis)
    return rows > 0


async def _spool_holds(stack: LocalStack, events: int) -> bool:
    return await spool_pending(stack) >= events


async def _freeze(fleet: Fleet) -> int:
    """Stop every cabinet's uploads (their sessions stay) and return the accepted-upload count."""
    await asyncio.gather(*(cabinet.pause_uploads() for cabinet in fleet.cabinets))
    return accepted_uploads(fleet)
