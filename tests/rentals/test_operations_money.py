"""Money views: GET /api/admin/transactions and the revenue report (JSON, CSV) reconcile with the ledger."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from chargeghar_core.auth.models import Role
from chargeghar_core.kit.db import utcnow
from chargeghar_core.payments.models import LedgerEntry
from chargeghar_core.stations.models import Station
from rentals_support import (
    FakeIngest,
    RentalsClient,
    add_package,
    add_renter,
    add_station,
    new_bank_serial,
)
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

REVENUE = "/api/admin/reports/revenue"
TRANSACTIONS = "/api/admin/transactions"


async def _two_rentals(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> dict[str, Any]:
    """One rental that starts (5000 charged) and one whose popup fails (3000 charged, then refunded)."""
    good_bank, bad_bank = new_bank_serial(), new_bank_serial()
    good_imei = await add_station(client, session, {1: good_bank})
    bad_imei = await add_station(client, session, {1: bad_bank})
    fake_ingest.cabinet(good_imei, {1: good_bank})
    fake_ingest.cabinet(bad_imei, {1: bad_bank}, popup_mode="failed")
    good_renter = await add_renter(session, balance_paisa=10_000)
    bad_renter = await add_renter(session, balance_paisa=10_000)
    good_package = await add_package(session, price_paisa=5000)
    bad_package = await add_package(session, price_paisa=3000, duration_minutes=30)
    good_station = await session.scalar(select(Station.id).where(Station.imei == good_imei))
    bad_station = await session.scalar(select(Station.id).where(Station.imei == bad_imei))
    started = await client.start(good_renter, station_id=good_station, package_id=good_package)
    assert started.status_code == 201, started.text
    failed = await client.start(bad_renter, station_id=bad_station, package_id=bad_package)
    assert failed.status_code == 409 and failed.json()["error"] == "POPUP_FAILED", failed.text
    return {
        "good_station": str(good_station),
        "bad_station": str(bad_station),
        "good_package": str(good_package),
        "bad_package": str(bad_package),
        "good_renter": good_renter,
        "bad_renter": bad_renter,
        "rental_id": started.json()["data"]["id"],
    }


async def _ledger_sum(session: AsyncSession, kinds: tuple[str, ...], since: datetime, until: datetime) -> int:
    total = await session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount_paisa), 0)).where(
            LedgerEntry.kind.in_(kinds), LedgerEntry.created_at >= since, LedgerEntry.created_at < until
        )
    )
    return int(total or 0)


async def test_revenue_report_reconciles_with_the_ledger_in_every_grouping(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    made = await _two_rentals(client, session, fake_ingest)
    today = utcnow().date()
    since = datetime(today.year, today.month, today.day, tzinfo=UTC)
    until = since + timedelta(days=1)
    headers = client.staff_headers()
    reports: dict[str, dict[str, Any]] = {}
    for group_by in ("day", "station", "package"):
        response = await client.http.get(
            REVENUE, params={"from": str(today), "to": str(today), "group_by": group_by}, headers=headers
        )
        assert response.status_code == 200, response.text
        reports[group_by] = response.json()["data"]

    # The totals are the ledger's sums over the same window, whatever the grouping ...
    charges = -await _ledger_sum(session, ("RENTAL_CHARGE",), since, until)
    fees = -await _ledger_sum(session, ("LATE_FEE",), since, until)
    refunds = await _ledger_sum(session, ("REFUND",), since, until)
    net = -await _ledger_sum(session, ("RENTAL_CHARGE", "LATE_FEE", "REFUND"), since, until)
    for report in reports.values():
        totals = report["totals"]
        assert (totals["rental_charges_paisa"], totals["late_fees_paisa"], totals["refunds_paisa"]) == (
            charges,
            fees,
            refunds,
        )
        assert totals["net_paisa"] == net == charges + fees - refunds
        # ... and the rows add up to them.
        for column in ("rental_charges_paisa", "late_fees_paisa", "refunds_paisa", "net_paisa"):
            assert sum(row[column] for row in report["rows"]) == totals[column], column
        assert totals["topups_paisa"] == await _ledger_sum(session, ("TOPUP",), since, until)
        assert totals["adjustments_paisa"] == await _ledger_sum(session, ("ADJUSTMENT",), since, until)

    by_station = {row["key"]: row for row in reports["station"]["rows"]}
    good, bad = by_station[made["good_station"]], by_station[made["bad_station"]]
    assert (good["rental_charges_paisa"], good["refunds_paisa"], good["net_paisa"], good["rentals"]) == (
        5000,
        0,
        5000,
        1,
    )
    assert (bad["rental_charges_paisa"], bad["refunds_paisa"], bad["net_paisa"], bad["rentals"]) == (
        3000,
        3000,
        0,
        1,
    )
    by_package = {row["key"]: row for row in reports["package"]["rows"]}
    assert by_package[made["good_package"]]["net_paisa"] == 5000
    assert by_package[made["bad_package"]]["net_paisa"] == 0
    day_rows = reports["day"]["rows"]
    assert [row["key"] for row in day_rows] == [str(today)]

    # The CSV variant: by format=csv and by Accept: text/csv, the same numbers, a closing total line.
    for params, extra in (
        ({"format": "csv"}, {}),
        ({}, {"Accept": "text/csv"}),
    ):
        response = await client.http.get(
            REVENUE,
            params={"from": str(today), "to": str(today), "group_by": "station", **params},
            headers={**headers, **extra},
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/csv")
        assert "attachment" in response.headers["content-disposition"]
        lines = list(csv.DictReader(io.StringIO(response.text)))
        total_line = lines[-1]
        assert total_line["key"] == "total" and int(total_line["net_paisa"]) == net
        assert sum(int(line["net_paisa"]) for line in lines[:-1]) == net
        assert {line["key"] for line in lines[:-1]} == set(by_station)


async def test_transactions_list_ledger_rows_and_payments_across_renters(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    made = await _two_rentals(client, session, fake_ingest)
    headers = client.staff_headers(Role.VIEWER)  # read-only staff may read money views
    response = await client.http.get(
        TRANSACTIONS, params={"user_id": str(made["bad_renter"])}, headers=headers
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [(item["kind"], item["amount_paisa"]) for item in data["items"]] == [
        ("REFUND", 3000),
        ("RENTAL_CHARGE", -3000),
        ("ADJUSTMENT", 10_000),
    ]
    assert data["total"] == 3 and data["totals"] == {
        "count": 3,
        "credits_paisa": 13_000,
        "debits_paisa": -3000,
    }
    assert data["items"][0]["user_email"].endswith("@test.example")

    charges = await client.http.get(
        TRANSACTIONS, params={"kind": "RENTAL_CHARGE", "rental_id": made["rental_id"]}, headers=headers
    )
    assert [item["amount_paisa"] for item in charges.json()["data"]["items"]] == [-5000]

    paged = await client.http.get(
        TRANSACTIONS, params={"user_id": str(made["good_renter"]), "page_size": 1, "page": 2}, headers=headers
    )
    assert paged.status_code == 200
    paged_data = paged.json()["data"]
    assert len(paged_data["items"]) == 1 and paged_data["total"] == 2

    payments = await client.http.get(
        TRANSACTIONS, params={"source": "payment", "status": "CAPTURED"}, headers=headers
    )
    assert payments.status_code == 200
    assert all(item["source"] == "payment" for item in payments.json()["data"]["items"])

    later = (utcnow() + timedelta(hours=1)).isoformat()
    nothing = await client.http.get(
        TRANSACTIONS, params={"user_id": str(made["bad_renter"]), "from": later}, headers=headers
    )
    assert nothing.json()["data"]["total"] == 0


async def test_money_views_refuse_bad_input_and_non_staff(
    client: RentalsClient, session: AsyncSession
) -> None:
    headers = client.staff_headers()
    for params in (
        {"from": "2026-01-01", "to": "2027-01-02"},  # 367 days
        {"from": "2026-02-01", "to": "2026-01-01"},
        {"from": "1999-12-31", "to": "2000-01-01"},
        {"from": "2026-01-01", "to": "2026-01-02", "group_by": "renter"},
        {"from": "2026-01-01", "to": "2026-01-02", "format": "xml"},
        {"from": "yesterday", "to": "2026-01-02"},
        {"to": "2026-01-02"},
    ):
        response = await client.http.get(REVENUE, params=params, headers=headers)
        assert response.status_code == 400, (params, response.text)
        assert response.json()["error"] == "VALIDATION_ERROR"
    ok = await client.http.get(REVENUE, params={"from": "2026-01-01", "to": "2026-12-31"}, headers=headers)
    assert ok.status_code == 200  # exactly 365 days
    for params in (
        {"page_size": 201},
        {"page": 10_001},
        {"kind": "BONUS"},
        {"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
    ):
        response = await client.http.get(TRANSACTIONS, params=params, headers=headers)
        assert response.status_code == 400, (params, response.text)
    renter = await add_renter(session)
    refused = await client.http.get(TRANSACTIONS, headers=client.renter_headers(renter))
    assert refused.status_code == 403
    anonymous = await client.http.get(REVENUE, params={"from": "2026-01-01", "to": "2026-01-02"})
    assert anonymous.status_code == 401
    assert uuid.UUID(str(renter))
