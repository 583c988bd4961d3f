"""Simulator → broker → ingest → core: the station API shows what the cabinets hold.

Core and ingest run as child processes (see conftest); the simulated cabinets run in the test process.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from chargeghar_ingest.simulator.device import CabinetConfig, VirtualCabinet
from chargeghar_ingest.simulator.fleet import Fleet, FleetConfig
from chargeghar_ingest.simulator.stack import LocalStack
from chargeghar_protocol.signing import signed_headers
from e2e_support import event_counts, eventually
from sqlalchemy.ext.asyncio import AsyncEngine

pytestmark = [pytest.mark.mqtt]


@pytest.fixture
async def fleet(running_stack: LocalStack) -> AsyncIterator[Fleet]:
    config = running_stack.config
    cabinet = CabinetConfig(
        imei="0",
        ingest_url=config.ingest_url,
        topic_prefix=config.topic_prefix,
        # Only the uploads a test asks for: two in flight at once could be applied in either order.
        first_upload_delay_s=3600.0,
        upload_interval_s=3600.0,
        echo_timeout_s=2.0,
    )
    fleet = Fleet(FleetConfig(stations=2, slots=12, seed=uuid.uuid4().int % 10**9, cabinet=cabinet))
    run = asyncio.create_task(fleet.run())
    await fleet.wait_connected(20)
    try:
        yield fleet
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await fleet.aclose()


async def admin_station(core_url: str, token: str, imei: str) -> dict[str, Any] | None:
    """Core's admin view of one station with its slots (async: the cabinets share this event loop)."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=core_url, headers=headers, timeout=10) as client:
        listing = await client.get("/api/admin/stations", params={"search": imei})
        listing.raise_for_status()
        match = [item for item in listing.json()["data"]["items"] if item["imei"] == imei]
        if not match:
            return None
        detail = await client.get(f"/api/admin/stations/{match[0]['id']}")
    detail.raise_for_status()
    station: dict[str, Any] = detail.json()["data"]
    return station


def slots_as_seen_by_core(station: dict[str, Any]) -> dict[int, tuple[str, str | None, int]]:
    return {
        slot["slot_number"]: (
            slot["status"],
            slot["power_bank"]["serial_number"] if slot["power_bank"] else None,
            slot["battery_level"],
        )
        for slot in station["slots"]
    }


def slots_as_held_by_cabinet(cabinet: VirtualCabinet) -> dict[int, tuple[str, str | None, int]]:
    return {
        hole: ("OCCUPIED", str(slot.bank.sn), slot.bank.soc) if slot.bank else ("AVAILABLE", None, 0)
        for hole, slot in cabinet.state.slots.items()
    }


async def station_matching(core_url: str, token: str, cabinet: VirtualCabinet) -> dict[str, Any]:
    """Core's admin view of the cabinet's station, once its slots match what the cabinet holds."""
    expected = slots_as_held_by_cabinet(cabinet)
    seen: list[dict[str, Any]] = []

    async def matches() -> bool:
        station = await admin_station(core_url, token, cabinet.imei)
        if station is None:
            return False
        seen.append(station)
        return slots_as_seen_by_core(station) == expected

    try:
        await eventually(matches, within_s=30, what=f"core to show cabinet {cabinet.imei}")
    except AssertionError as error:
        last = slots_as_seen_by_core(seen[-1]) if seen else None
        raise AssertionError(f"{error}\ncabinet holds {expected}\ncore shows   {last}") from None
    return seen[-1]


async def test_uploads_show_up_as_stations_slots_and_banks_in_core(
    fleet: Fleet, running_stack: LocalStack, admin_token: str
) -> None:
    core_url = running_stack.config.core_url
    for cabinet in fleet.cabinets:
        await cabinet.upload_now()
    for cabinet in fleet.cabinets:
        station = await station_matching(core_url, admin_token, cabinet)
        assert station["total_slots"] == 12 and station["status"] == "ONLINE"
        assert station["rentable_banks"] == sum(1 for slot in cabinet.state.slots.values() if slot.bank)

    # Once deployed (an admin's step), the station is on the public list with its slots and banks.
    cabinet = fleet.cabinets[0]
    listed = await admin_station(core_url, admin_token, cabinet.imei)
    assert listed is not None
    station = listed
    async with httpx.AsyncClient(base_url=core_url, timeout=10) as client:
        patched = await client.patch(
            f"/api/admin/stations/{station['id']}",
            json={"name": "E2E station", "latitude": 27.71, "longitude": 85.32, "is_deployed": True},
            headers={"Authorization": f"Bearer {admin_token}"},
        )
        patched.raise_for_status()
        public = await client.get(f"/api/stations/{station['serial_number']}")
        public.raise_for_status()
    assert slots_as_seen_by_core(public.json()["data"]) == slots_as_held_by_cabinet(cabinet)


async def test_a_popup_command_from_core_side_ejects_and_the_return_rehomes_the_bank(
    fleet: Fleet, running_stack: LocalStack, admin_token: str, events_db: AsyncEngine
) -> None:
    config = running_stack.config
    cabinet = fleet.cabinets[0]
    sn = min(cabinet.state.banks())
    for known in fleet.cabinets:  # core must know both stations before a bank moves between them
        await known.upload_now()
        await station_matching(config.core_url, admin_token, known)

    # What core does to rent a bank: a signed command to the ingest (contract.md §3).
    body = json.dumps({"cmd": "popup_sn", "data": str(sn), "command_id": str(uuid.uuid4()), "timeout_s": 10})
    async with httpx.AsyncClient(timeout=20) as client:
        response = await client.post(
            f"{config.ingest_url}/internal/devices/{cabinet.imei}/commands",
            content=body,
            headers={"Content-Type": "application/json", **signed_headers(config.hmac_secret, body.encode())},
        )
    assert response.status_code == 200, response.text
    result = response.json()["data"]
    assert result["outcome"] == "ok"
    assert sn not in cabinet.state.banks() and sn in cabinet.rented_banks

    # The bank comes back into another cabinet; 0x40 on MQTT and the HTTP call are one "returned" event.
    target = fleet.cabinets[1]
    slot = await target.return_bank(sn, soc=41, via="both")

    last_seen: list[object] = []

    async def rehomed() -> bool:
        station = await admin_station(config.core_url, admin_token, target.imei)
        seen = slots_as_seen_by_core(station).get(slot.hole) if station else None
        last_seen.append(seen)
        # The cabinet keeps charging the bank, so a later upload may already show more than 41 %.
        return seen is not None and seen[:2] == ("OCCUPIED", str(sn)) and 41 <= seen[2] <= 100

    try:
        await eventually(rehomed, within_s=30, what="the returned bank in its new slot")
    except AssertionError as error:
        raise AssertionError(f"{error}; core shows slot {slot.hole} as {last_seen[-1:]}") from None
    await asyncio.sleep(1.0)  # let a duplicate (if any) arrive before counting
    assert await event_counts(events_db, [target.imei], "returned") == (1, 1)
