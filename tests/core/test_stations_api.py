"""Public station list/detail (visibility, filters, distance) and the admin station endpoints."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from chargeghar_core.auth.models import Role
from chargeghar_core.stations.service import bounding_box, haversine_km
from core_support import CoreClient, full_event, new_bank_serial, new_imei, status_event

# A few places in Kathmandu (lat, lng).
DURBAR_MARG = (27.7104, 85.3180)
THAMEL = (27.7154, 85.3123)  # ~0.8 km from Durbar Marg
PATAN = (27.6727, 85.3250)  # ~4.2 km
POKHARA = (28.2096, 83.9856)  # ~140 km


async def _deployed_station(
    client: CoreClient, name: str, where: tuple[float, float], *, banks: dict[int, str | None] | None = None
) -> dict[str, Any]:
    imei = new_imei()
    synced = await client.sync(full_event(imei, banks or {1: None, 2: None}))
    station_id = synced.json()["data"]["station_id"]
    configured = await client.http.patch(
        f"/api/admin/stations/{station_id}",
        json={
            "name": name,
            "serial_number": f"CG-{uuid.uuid4().hex[:8].upper()}",
            "latitude": where[0],
            "longitude": where[1],
            "address": f"{name} street",
            "is_deployed": True,
        },
        headers=client.auth(Role.ADMIN),
    )
    assert configured.status_code == 200, configured.text
    data: dict[str, Any] = configured.json()["data"]
    return data


async def _names(client: CoreClient, **params: Any) -> list[str]:
    response = await client.http.get("/api/stations", params=params)
    assert response.status_code == 200, response.text
    return [item["name"] for item in response.json()["data"]["items"]]


async def test_new_station_is_hidden_until_an_admin_deploys_it(client: CoreClient) -> None:
    imei = new_imei()
    tag = uuid.uuid4().hex[:6]
    synced = await client.sync(full_event(imei, {1: new_bank_serial(), 2: None}))
    station_id = synced.json()["data"]["station_id"]
    serial = synced.json()["data"]["station_serial"]

    assert f"Hidden {tag}" not in await _names(client, search=tag)
    assert (await client.http.get(f"/api/stations/{serial}")).status_code == 404
    admin = client.auth(Role.ADMIN)
    too_early = await client.http.patch(
        f"/api/admin/stations/{station_id}", json={"is_deployed": True}, headers=admin
    )
    assert too_early.status_code == 400 and "latitude" in too_early.json()["details"]

    await client.http.patch(
        f"/api/admin/stations/{station_id}",
        json={"name": f"Hidden {tag}", "latitude": THAMEL[0], "longitude": THAMEL[1], "is_deployed": True},
        headers=admin,
    )
    assert await _names(client, search=tag) == [f"Hidden {tag}"]
    detail = await client.http.get(f"/api/stations/{serial}")
    assert detail.status_code == 200
    body = detail.json()["data"]
    assert body["rentable_banks"] == 1
    assert [slot["slot_number"] for slot in body["slots"]] == [1, 2]
    assert body["slots"][0]["power_bank"]["battery_level"] == 80
    assert body["slots"][1]["power_bank"] is None


async def test_admin_serial_survives_syncs_and_must_be_unique(client: CoreClient) -> None:
    first = await _deployed_station(client, "Serial A", DURBAR_MARG)
    second = await _deployed_station(client, "Serial B", THAMEL)
    await client.sync(full_event(first["imei"], {1: None, 2: None}))
    again = await client.http.get(f"/api/admin/stations/{first['id']}", headers=client.auth(Role.STAFF))
    assert again.json()["data"]["serial_number"] == first["serial_number"]

    clash = await client.http.patch(
        f"/api/admin/stations/{second['id']}",
        json={"serial_number": first["serial_number"]},
        headers=client.auth(Role.ADMIN),
    )
    assert clash.status_code == 409 and clash.json()["error"] == "SERIAL_TAKEN"


async def test_distance_sort_radius_and_pagination(client: CoreClient) -> None:
    tag = uuid.uuid4().hex[:6]
    for name, where in [("Pokhara", POKHARA), ("Patan", PATAN), ("Thamel", THAMEL), ("Durbar", DURBAR_MARG)]:
        await _deployed_station(client, f"{name} {tag}", where)

    near = {"lat": DURBAR_MARG[0], "lng": DURBAR_MARG[1], "search": tag}
    assert await _names(client, **near) == [f"{n} {tag}" for n in ("Durbar", "Thamel", "Patan", "Pokhara")]
    assert await _names(client, **near, radius_km=5) == [f"{n} {tag}" for n in ("Durbar", "Thamel", "Patan")]
    assert await _names(client, **near, radius_km=1) == [f"{n} {tag}" for n in ("Durbar", "Thamel")]

    response = await client.http.get("/api/stations", params={**near, "page": 2, "page_size": 2})
    page = response.json()["data"]
    assert (page["total"], page["page"], page["page_size"]) == (4, 2, 2)
    assert [item["name"] for item in page["items"]] == [f"Patan {tag}", f"Pokhara {tag}"]
    assert page["items"][0]["distance_km"] == pytest.approx(haversine_km(*DURBAR_MARG, *PATAN), abs=0.01)


async def test_status_filter_and_text_search(client: CoreClient) -> None:
    tag = uuid.uuid4().hex[:6]
    online = await _deployed_station(client, f"Mall {tag}", DURBAR_MARG)
    offline = await _deployed_station(client, f"Airport {tag}", PATAN)
    await client.sync(status_event(offline["imei"], "OFFLINE"))

    assert await _names(client, search=tag, status="ONLINE") == [online["name"]]
    assert await _names(client, search=tag, status="OFFLINE") == [offline["name"]]
    assert await _names(client, search=f"airport {tag}".upper()) == [offline["name"]]
    assert await _names(client, search=f"{tag}", status="MAINTENANCE") == []


async def test_list_parameter_errors_are_400_with_paths(client: CoreClient) -> None:
    bad_lat = await client.http.get("/api/stations", params={"lat": 91, "lng": 0})
    assert bad_lat.status_code == 400 and "query.lat" in bad_lat.json()["details"]
    lonely_radius = await client.http.get("/api/stations", params={"radius_km": 3})
    assert lonely_radius.status_code == 400
    bad_status = await client.http.get("/api/stations", params={"status": "SLEEPING"})
    assert bad_status.status_code == 400 and "query.status" in bad_status.json()["details"]


async def test_admin_sees_sync_log_status_history_and_banks(client: CoreClient) -> None:
    bank = new_bank_serial()
    station = await _deployed_station(client, "Ops", DURBAR_MARG, banks={1: bank, 2: None})
    await client.sync(status_event(station["imei"], "OFFLINE"))
    staff = client.auth(Role.STAFF)

    logs = await client.http.get(f"/api/admin/stations/{station['id']}/sync-logs", headers=staff)
    assert [entry["event_type"] for entry in logs.json()["data"]] == ["status", "full"]
    assert all(entry["outcome"] == "SUCCESS" for entry in logs.json()["data"])
    history = await client.http.get(f"/api/admin/stations/{station['id']}/status-history", headers=staff)
    assert [(h["previous_status"], h["status"]) for h in history.json()["data"]] == [
        ("ONLINE", "OFFLINE"),
        ("OFFLINE", "ONLINE"),
    ]
    banks = await client.http.get(
        "/api/admin/powerbanks", params={"station_id": station["id"]}, headers=staff
    )
    assert [item["serial_number"] for item in banks.json()["data"]["items"]] == [bank]

    undeployed = await client.http.get(
        "/api/admin/stations", params={"deployed": False, "search": "New station"}, headers=staff
    )
    assert undeployed.status_code == 200
    assert all(item["is_deployed"] is False for item in undeployed.json()["data"]["items"])


async def test_maintenance_flag_changes_status_with_history(client: CoreClient) -> None:
    station = await _deployed_station(client, "Fixing", THAMEL)
    admin = client.auth(Role.ADMIN)
    on = await client.http.patch(
        f"/api/admin/stations/{station['id']}", json={"is_maintenance": True}, headers=admin
    )
    assert on.json()["data"]["status"] == "MAINTENANCE"
    off = await client.http.patch(
        f"/api/admin/stations/{station['id']}", json={"is_maintenance": False}, headers=admin
    )
    assert off.json()["data"]["status"] == "ONLINE"
    history = await client.http.get(f"/api/admin/stations/{station['id']}/status-history", headers=admin)
    assert [h["trigger"] for h in history.json()["data"]][:2] == ["admin", "admin"]


def test_bounding_box_contains_the_circle() -> None:
    min_lat, max_lat, min_lng, max_lng = bounding_box(*DURBAR_MARG, 5)
    assert min_lat < PATAN[0] < max_lat and min_lng < PATAN[1] < max_lng
    assert haversine_km(*DURBAR_MARG, min_lat, DURBAR_MARG[1]) == pytest.approx(5, rel=1e-3)


async def test_health_and_readiness(client: CoreClient) -> None:
    assert (await client.http.get("/health")).json()["data"] == {"status": "ok"}
    ready = await client.http.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["data"] == {"database": "ok"}
    docs = await client.http.get("/openapi.json")
    assert "/api/internal/stations/data" in docs.json()["paths"]


async def test_maintenance_pins_status_and_hides_rentable_banks(client: CoreClient) -> None:
    station = await _deployed_station(client, "Pinned", THAMEL, banks={1: new_bank_serial(), 2: None})
    assert station["rentable_banks"] == 1
    admin = client.auth(Role.ADMIN)
    await client.http.patch(
        f"/api/admin/stations/{station['id']}", json={"is_maintenance": True}, headers=admin
    )
    await client.sync(full_event(station["imei"], {1: new_bank_serial(), 2: None}))
    detail = (await client.http.get(f"/api/stations/{station['serial_number']}")).json()["data"]
    assert (detail["status"], detail["rentable_banks"]) == ("MAINTENANCE", 0)
    await client.sync(status_event(station["imei"], "OFFLINE"))
    await client.http.patch(
        f"/api/admin/stations/{station['id']}", json={"is_maintenance": False}, headers=admin
    )
    detail = (await client.http.get(f"/api/stations/{station['serial_number']}")).json()["data"]
    assert (detail["status"], detail["rentable_banks"]) == ("ONLINE", 1)
