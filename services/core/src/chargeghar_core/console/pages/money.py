"""Money: transactions across renters (ledger rows or provider payments, with totals over every match) and
the revenue report with its chart and CSV.

Both call :class:`ReportsService` exactly as ``GET /api/admin/transactions`` and
``GET /api/admin/reports/revenue`` do; the CSV is :func:`revenue_csv` of the same report, so the file the
console downloads is byte for byte the API's.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from sqlalchemy import func, select

from chargeghar_core.auth.models import User
from chargeghar_core.console.context import ConsoleContext, ConsoleError, Page
from chargeghar_core.console.pages import inputs
from chargeghar_core.console.pagination import PageNumber, Pager
from chargeghar_core.kit.errors import ValidationFailed
from chargeghar_core.payments.models import LedgerKind, PaymentStatus
from chargeghar_core.reports.repository import TransactionFilter
from chargeghar_core.reports.schemas import GroupBy, RevenueReport, TransactionSource
from chargeghar_core.reports.service import ReportsService, revenue_csv

router = APIRouter(prefix="/console", include_in_schema=False)

Filter = Annotated[str | None, Query(max_length=100)]
Day = Annotated[str | None, Query(max_length=10)]
DEFAULT_REPORT_DAYS = 30
# A year of days fits; grouped by station the report can have a row per station: the page shows this many
# (the totals and the CSV cover them all).
MAX_REPORT_ROWS_SHOWN = 400
# A renter filter naming nobody must match nothing (not everything).
NOBODY = uuid.UUID(int=0)


def _currency(ctx: ConsoleContext) -> str:
    runtime = getattr(ctx.request.app.state, "rentals", None)
    return str(runtime.payment_settings.currency) if runtime is not None else "NPR"


async def _renter_id(ctx: ConsoleContext, renter: str | None) -> uuid.UUID | None:
    if renter is None:
        return None
    by_id = inputs.identifier(renter)
    if by_id is not None:
        return by_id
    found = await ctx.db.scalar(select(User.id).where(func.lower(User.email) == renter.lower()))
    return found if found is not None else NOBODY


def _report_days(from_day: str | None, to_day: str | None) -> tuple[date, date]:
    """The report's UTC days; by default the last 30 days up to today."""
    last = inputs.day(to_day, "to") or datetime.now(UTC).date()
    first = inputs.day(from_day, "from") or last - timedelta(days=DEFAULT_REPORT_DAYS - 1)
    return first, last


def chart_data(report: RevenueReport) -> dict[str, Any]:
    """What static/js/money.js draws: one label per row, amounts in rupees."""

    def rupees(values: list[int]) -> list[float]:
        return [value / 100 for value in values]

    rows = report.rows[:MAX_REPORT_ROWS_SHOWN]
    return {
        "labels": [row.label for row in rows],
        "currency": report.currency,
        "series": {
            "Rental charges": rupees([row.rental_charges_paisa for row in rows]),
            "Late fees": rupees([row.late_fees_paisa for row in rows]),
            "Refunds": rupees([row.refunds_paisa for row in rows]),
            "Net": rupees([row.net_paisa for row in rows]),
        },
    }


@router.get("/money")
async def money(
    ctx: Page,
    source: Filter = None,
    kind: Filter = None,
    status: Filter = None,
    renter: Filter = None,
    tx_from: Day = None,
    tx_to: Day = None,
    from_day: Annotated[str | None, Query(alias="from", max_length=10)] = None,
    to_day: Annotated[str | None, Query(alias="to", max_length=10)] = None,
    group_by: Filter = None,
    page: PageNumber = 1,
) -> Response:
    try:
        picked_source = TransactionSource(
            inputs.choice(source, [s.value for s in TransactionSource], "source") or TransactionSource.LEDGER
        )
        since, until = inputs.nepal_days(inputs.day(tx_from, "tx_from"), inputs.day(tx_to, "tx_to"))
        where = TransactionFilter(
            user_id=await _renter_id(ctx, inputs.text(renter)),
            kind=inputs.choice(kind, [k.value for k in LedgerKind], "kind"),
            status=inputs.choice(status, [s.value for s in PaymentStatus], "status"),
            since=since,
            until=until,
        )
        first, last = _report_days(from_day, to_day)
        grouping = GroupBy(inputs.choice(group_by, [g.value for g in GroupBy], "group_by") or GroupBy.DAY)
    except inputs.InputError as exc:
        raise ConsoleError(400, str(exc)) from exc
    service = ReportsService(ctx.db, currency=_currency(ctx))
    size = ctx.settings.page_size
    transactions = await service.transactions(picked_source, where, page=page, page_size=size)
    report: RevenueReport | None = None
    report_error = None
    try:
        report = await service.revenue(first, last, grouping)
    except ValidationFailed as exc:
        # A bad report window must not hide the transactions: say what is wrong in the report's place.
        report_error = "; ".join(f"{key}: {', '.join(v)}" for key, v in (exc.details or {}).items())
    return ctx.render(
        "pages/money.html",
        {
            "transactions": transactions,
            "pager": Pager(page=page, page_size=size, total=transactions.total, url=ctx.request.url),
            "tx": {
                "source": picked_source.value,
                "kind": where.kind or "",
                "status": where.status or "",
                "renter": inputs.text(renter) or "",
                "from": inputs.text(tx_from) or "",
                "to": inputs.text(tx_to) or "",
            },
            "source_options": [("ledger", "Wallet ledger"), ("payment", "Provider payments")],
            "kind_options": [("", "Any"), *((k.value, k.value) for k in LedgerKind)],
            "status_options": [("", "Any"), *((s.value, s.value) for s in PaymentStatus)],
            "group_options": [(g.value, g.value.capitalize()) for g in GroupBy],
            "report": report,
            "report_error": report_error,
            "chart": chart_data(report) if report is not None else None,
            "rev": {"from": first.isoformat(), "to": last.isoformat(), "group_by": grouping.value},
            "rows_shown": MAX_REPORT_ROWS_SHOWN,
        },
    )


@router.get("/money/revenue.csv")
async def revenue_download(
    ctx: Page,
    from_day: Annotated[str | None, Query(alias="from", max_length=10)] = None,
    to_day: Annotated[str | None, Query(alias="to", max_length=10)] = None,
    group_by: Filter = None,
) -> Response:
    """The API's CSV (``GET /api/admin/reports/revenue?format=csv``): same report, same writer, same name."""
    try:
        first, last = _report_days(from_day, to_day)
        grouping = GroupBy(inputs.choice(group_by, [g.value for g in GroupBy], "group_by") or GroupBy.DAY)
    except inputs.InputError as exc:
        raise ConsoleError(400, str(exc)) from exc
    report = await ReportsService(ctx.db, currency=_currency(ctx)).revenue(first, last, grouping)
    filename = f"revenue_{grouping.value}_{first}_{last}.csv"
    return Response(
        revenue_csv(report),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"},
    )
