"""Core's GET /metrics: the Prometheus text format, counters that move after real events, DB gauges."""

from __future__ import annotations

import re
import shutil
import subprocess

from chargeghar_core.stations.models import Station
from rentals_support import (
    FakeIngest,
    RentalsClient,
    add_package,
    add_renter,
    add_station,
    full_event,
    new_bank_serial,
    new_imei,
)
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?P<labels>\{.*\})? (?P<value>\S+)$")


def parse(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, labels kept in their exposed order."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, line
        values[match["name"] + (match["labels"] or "")] = float(match["value"])
    return values


async def scrape(client: RentalsClient) -> dict[str, float]:
    response = await client.http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


async def test_metrics_expose_every_family_and_the_text_format_is_valid(client: RentalsClient) -> None:
    response = await client.http.get("/metrics")
    assert response.status_code == 200
    text = response.text
    for family in (
        "http_request_duration_seconds",
        "events_applied_total",
        "rentals_started_total",
        "rentals_failed_total",
        "popup_outcomes_total",
        "dues_outstanding_paisa",
        "stations_by_status",
        "station_last_upload_timestamp_seconds",
    ):
        assert f"# TYPE chargeghar_core_{family} " in text, family
    assert parse(text)["chargeghar_core_database_up"] == 1.0
    promtool = shutil.which("promtool")
    if promtool is not None:  # the official linter of the exposition format, when installed
        checked = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_event_counters_move_after_a_signed_event(client: RentalsClient) -> None:
    key = 'chargeghar_core_events_applied_total{type="full",outcome="SUCCESS"}'
    before = (await scrape(client)).get(key, 0.0)
    imei = new_imei()
    response = await client.sync(full_event(imei, {1: new_bank_serial(), 2: None}))
    assert response.status_code == 200, response.text
    after = await scrape(client)
    assert after[key] == before + 1
    # The same event id again is a duplicate: counted under its own outcome, not as applied.
    duplicate_key = 'chargeghar_core_events_applied_total{type="full",outcome="DUPLICATE"}'
    duplicates_before = after.get(duplicate_key, 0.0)
    event = full_event(imei, {1: None, 2: None})
    assert (await client.sync(event, event_id="metrics-dup-1")).status_code == 200
    assert (await client.sync(event, event_id="metrics-dup-1")).status_code == 200
    final = await scrape(client)
    assert final[key] == before + 2
    assert final.get(duplicate_key, 0.0) == duplicates_before + 1
    # Latency by route template (never the raw path), counted for the internal endpoint.
    route = 'route="/api/internal/stations/data"'
    assert any(
        name.startswith("chargeghar_core_http_request_duration_seconds_count") and route in name
        for name in final
    )


async def test_rental_counters_and_gauges_follow_a_rental(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    serial = new_bank_serial()
    imei = await add_station(client, session, {1: serial, 2: None})
    fake_ingest.cabinet(imei, {1: serial, 2: None})
    renter = await add_renter(session, balance_paisa=10_000)
    package = await add_package(session, price_paisa=5000)
    station = await session.scalar(select(Station).where(Station.imei == imei))
    assert station is not None
    before = await scrape(client)

    response = await client.start(renter, station_id=station.id, package_id=package)
    assert response.status_code == 201, response.text

    after = await scrape(client)
    assert (
        after["chargeghar_core_rentals_started_total"] == before["chargeghar_core_rentals_started_total"] + 1
    )
    ok = 'chargeghar_core_popup_outcomes_total{outcome="ok"}'
    assert after[ok] == before.get(ok, 0.0) + 1
    assert after['chargeghar_core_rentals_open{status="ACTIVE"}'] >= 1
    upload = f'chargeghar_core_station_last_upload_timestamp_seconds{{station="{station.serial_number}"}}'
    assert after[upload] > 0
    assert after['chargeghar_core_stations_by_status{status="ONLINE"}'] >= 1

    # A start refused before any popup is counted by its error code.
    again = await client.start(renter, station_id=station.id, package_id=package)
    assert again.status_code >= 400
    code = again.json()["error"]
    refused = f'chargeghar_core_rentals_failed_total{{reason="{code}"}}'
    assert (await scrape(client))[refused] == after.get(refused, 0.0) + 1
