"""Console money: transactions with their totals, the revenue report with its chart data, and the CSV —
the same figures and the same file as the operations API."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import httpx
from chargeghar_core.auth.models import Role
from console_support import ConsoleUser
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession
from test_console_rentals import LATE_FEE, PRICE, add_renter, completed_rental

Login = Callable[..., Awaitable[ConsoleUser]]


def api_headers(app: FastAPI, user: ConsoleUser) -> dict[str, str]:
    pair = app.state.tokens.issue_pair(
        user_id=user.user.id, role=Role.ADMIN, email=user.user.email, generation=0
    )
    return {"Authorization": f"Bearer {pair.access_token}"}


def shown_text(html: str, testid: str) -> str:
    match = re.search(rf'data-testid="{testid}">([^<]*)<', html)
    assert match is not None, testid
    return match.group(1)


def rupees(paisa: int) -> str:
    sign = "-" if paisa < 0 else ""
    whole, cents = divmod(abs(paisa), 100)
    return f"{sign}Rs {whole:,}.{cents:02d}"


async def test_transactions_and_their_totals_match_the_api(
    console_login: Login, session: AsyncSession, console_app: FastAPI, api: httpx.AsyncClient
) -> None:
    viewer = await console_login(Role.VIEWER)
    renter = await add_renter(session, balance_paisa=30_000)
    await completed_rental(session, renter=renter)
    page = await viewer.get("/console/money", params={"renter": renter.email})
    assert page.status_code == 200, page.text
    assert 'data-testid="transactions-table"' in page.text and 'data-testid="pager"' in page.text
    kinds = re.findall(r'data-testid="transaction-row" data-kind="([A-Z_]+)"', page.text)
    assert kinds == ["LATE_FEE", "RENTAL_CHARGE", "TOPUP"]
    assert shown_text(page.text, "transactions-count") == "3"
    assert shown_text(page.text, "transactions-credits") == rupees(30_000)
    assert shown_text(page.text, "transactions-debits") == rupees(-(PRICE + LATE_FEE))

    answer = await api.get(
        "/api/admin/transactions",
        params={"user_id": str(renter.id)},
        headers=api_headers(console_app, viewer),
    )
    totals = answer.json()["data"]["totals"]
    assert (totals["count"], totals["credits_paisa"], totals["debits_paisa"]) == (
        3,
        30_000,
        -(PRICE + LATE_FEE),
    )

    charges = await viewer.get("/console/money", params={"renter": str(renter.id), "kind": "RENTAL_CHARGE"})
    assert re.findall(r'data-testid="transaction-row" data-kind="([A-Z_]+)"', charges.text) == [
        "RENTAL_CHARGE"
    ]
    payments = await viewer.get(
        "/console/money", params={"renter": renter.email, "source": "payment", "kind": ""}
    )
    assert shown_text(payments.text, "transactions-count") == "0"
    nobody = await viewer.get("/console/money", params={"renter": "nobody@nowhere.test"})
    assert shown_text(nobody.text, "transactions-count") == "0"
    assert (await viewer.get("/console/money", params={"kind": "BRIBE"})).status_code == 400
    assert "data-action" not in page.text


async def test_revenue_report_chart_data_and_csv_are_the_apis(
    console_login: Login, session: AsyncSession, console_app: FastAPI, api: httpx.AsyncClient
) -> None:
    staff = await console_login(Role.STAFF)
    await completed_rental(session)
    await completed_rental(session)
    today = datetime.now(UTC).date()
    window = {"from": (today - timedelta(days=6)).isoformat(), "to": today.isoformat(), "group_by": "day"}

    page = await staff.get("/console/money", params=window)
    assert page.status_code == 200, page.text
    assert 'data-testid="revenue-chart"' in page.text and "uPlot.iife.min.js" in page.text
    data_block = re.search(
        r'<script type="application/json" id="revenue-data">(.*?)</script>', page.text, re.S
    )
    assert data_block is not None
    chart = json.loads(data_block.group(1))
    report = (
        await api.get("/api/admin/reports/revenue", params=window, headers=api_headers(console_app, staff))
    ).json()["data"]
    assert chart["labels"] == [row["label"] for row in report["rows"]]
    assert chart["series"]["Net"] == [row["net_paisa"] / 100 for row in report["rows"]]
    assert report["totals"]["rental_charges_paisa"] >= 2 * PRICE  # both rentals are in the window
    assert shown_text(page.text, "revenue-net") == rupees(report["totals"]["net_paisa"])
    link = re.search(
        r'<a class="button secondary" data-testid="revenue-csv" download href="([^"]+)"', page.text
    )
    assert link is not None

    csv = await staff.get(link.group(1).replace("&amp;", "&"))
    assert csv.status_code == 200
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.headers["content-disposition"].startswith("attachment;")
    from_api = await api.get(
        "/api/admin/reports/revenue",
        params={**window, "format": "csv"},
        headers=api_headers(console_app, staff),
    )
    assert csv.content == from_api.content
    assert csv.headers["content-disposition"] == from_api.headers["content-disposition"]
    total_line = csv.text.strip().splitlines()[-1].split(",")
    assert total_line[0] == "total" and int(total_line[5]) == report["totals"]["net_paisa"]

    by_station = await staff.get("/console/money/revenue.csv", params={**window, "group_by": "station"})
    api_station = await api.get(
        "/api/admin/reports/revenue",
        params={**window, "group_by": "station", "format": "csv"},
        headers=api_headers(console_app, staff),
    )
    assert by_station.content == api_station.content


async def test_a_bad_report_window_is_explained_and_the_csv_refused(console_login: Login) -> None:
    staff = await console_login(Role.STAFF)
    page = await staff.get("/console/money", params={"from": "2024-01-01", "to": "2026-01-01"})
    assert page.status_code == 200 and 'data-testid="revenue-error"' in page.text and "366" in page.text
    assert 'data-testid="transactions-table"' in page.text
    refused = await staff.get("/console/money/revenue.csv", params={"from": "2026-02-01", "to": "2026-01-01"})
    assert refused.status_code == 400 and refused.headers["content-type"].startswith("text/html")
    async with httpx.AsyncClient(transport=staff.http._transport, base_url="http://core.test") as anonymous:
        logged_out = await anonymous.get("/console/money/revenue.csv")
    assert logged_out.status_code == 303
