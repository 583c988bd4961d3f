"""The operations views: transactions across renters, the revenue report (JSON or CSV), the fleet sync log,
and the ingest's parked events (its signed ops API, contract.md §3 signing)."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import httpx
from chargeghar_protocol.signing import signed_headers
from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.kit.errors import CoreError, ServiceUnavailable, ValidationFailed
from chargeghar_core.payments.models import LedgerKind
from chargeghar_core.reports.repository import ReportsRepository, SyncLogFilter, TransactionFilter
from chargeghar_core.reports.schemas import (
    GroupBy,
    RevenueReport,
    RevenueRow,
    RevenueTotals,
    SyncLogEntry,
    TransactionPage,
    TransactionSource,
    TransactionTotals,
    TransactionView,
)

MAX_REPORT_DAYS = 366
EARLIEST_DATE = date(2000, 1, 1)
LATEST_DATE = date(2100, 12, 31)
CSV_COLUMNS = (
    "key",
    "label",
    "rental_charges_paisa",
    "late_fees_paisa",
    "refunds_paisa",
    "net_paisa",
    "rentals",
)


def check_range(since: datetime | None, until: datetime | None, *, field: str = "to") -> None:
    if since is not None and until is not None and until <= since:
        raise ValidationFailed(details={field: ["must be after from"]})


def report_window(from_date: date, to_date: date) -> tuple[datetime, datetime]:
    """[from 00:00 UTC, the day after to 00:00 UTC): both days included."""
    details: dict[str, list[str]] = {}
    for name, value in (("from", from_date), ("to", to_date)):
        if not EARLIEST_DATE <= value <= LATEST_DATE:
            details[name] = [f"between {EARLIEST_DATE} and {LATEST_DATE}"]
    if not details and to_date < from_date:
        details["to"] = ["must not be before from"]
    elif not details and (to_date - from_date).days + 1 > MAX_REPORT_DAYS:
        details["to"] = [f"a report covers at most {MAX_REPORT_DAYS} days"]
    if details:
        raise ValidationFailed(details=details)
    since = datetime.combine(from_date, time.min, tzinfo=UTC)
    return since, datetime.combine(to_date + timedelta(days=1), time.min, tzinfo=UTC)


class ReportsService:
    def __init__(self, session: AsyncSession, *, currency: str = "NPR") -> None:
        self.repository = ReportsRepository(session)
        self.currency = currency

    async def transactions(
        self, source: TransactionSource, where: TransactionFilter, *, page: int, page_size: int
    ) -> TransactionPage:
        check_range(where.since, where.until)
        offset = (page - 1) * page_size
        items: list[TransactionView] = []
        if source is TransactionSource.LEDGER:
            rows, total, credits, debits = await self.repository.ledger_page(
                where, limit=page_size, offset=offset
            )
            for entry, email, provider in rows:
                items.append(
                    TransactionView(
                        source=source,
                        id=entry.id,
                        user_id=entry.user_id,
                        user_email=email,
                        kind=entry.kind,
                        status=None,
                        amount_paisa=entry.amount_paisa,
                        balance_after_paisa=entry.balance_after_paisa,
                        rental_id=entry.rental_id,
                        payment_id=entry.payment_id,
                        provider=provider,
                        note=entry.note,
                        created_at=entry.created_at,
                    )
                )
        else:
            payments, total, credits = await self.repository.payment_page(
                where, limit=page_size, offset=offset
            )
            debits = 0
            for payment, email in payments:
                items.append(
                    TransactionView(
                        source=source,
                        id=payment.id,
                        user_id=payment.user_id,
                        user_email=email,
                        kind="PAYMENT",
                        status=payment.status,
                        amount_paisa=payment.amount_paisa,
                        balance_after_paisa=None,
                        rental_id=None,
                        payment_id=payment.id,
                        provider=payment.provider,
                        note=payment.failure_reason or "",
                        created_at=payment.created_at,
                    )
                )
        return TransactionPage(
            items=items,
            total=total,
            page=page,
            page_size=page_size,
            totals=TransactionTotals(count=total, credits_paisa=credits, debits_paisa=debits),
        )

    async def revenue(self, from_date: date, to_date: date, group_by: GroupBy) -> RevenueReport:
        since, until = report_window(from_date, to_date)
        sums = await self.repository.revenue(since, until, group_by)
        rows = [
            RevenueRow(
                key=row.key,
                label=row.label,
                rental_charges_paisa=row.rental_charges_paisa,
                late_fees_paisa=row.late_fees_paisa,
                refunds_paisa=row.refunds_paisa,
                net_paisa=row.rental_charges_paisa + row.late_fees_paisa - row.refunds_paisa,
                rentals=row.rentals,
            )
            for row in sums
        ]
        kinds = await self.repository.kind_sums(since, until)
        charges = -kinds.get(LedgerKind.RENTAL_CHARGE.value, 0)
        fees = -kinds.get(LedgerKind.LATE_FEE.value, 0)
        refunds = kinds.get(LedgerKind.REFUND.value, 0)
        totals = RevenueTotals(
            rental_charges_paisa=charges,
            late_fees_paisa=fees,
            refunds_paisa=refunds,
            net_paisa=charges + fees - refunds,
            rentals=await self.repository.revenue_rentals(since, until),
            topups_paisa=kinds.get(LedgerKind.TOPUP.value, 0),
            provider_refunds_paisa=-kinds.get(LedgerKind.PROVIDER_REFUND.value, 0),
            adjustments_paisa=kinds.get(LedgerKind.ADJUSTMENT.value, 0),
        )
        return RevenueReport(
            from_date=from_date,
            to_date=to_date,
            group_by=group_by,
            currency=self.currency,
            rows=rows,
            totals=totals,
        )

    async def sync_logs(
        self, where: SyncLogFilter, *, page: int, page_size: int
    ) -> tuple[list[SyncLogEntry], int]:
        check_range(where.since, where.until)
        rows, total = await self.repository.sync_logs(where, limit=page_size, offset=(page - 1) * page_size)
        entries = [
            SyncLogEntry.model_validate(log).model_copy(update={"station_serial": serial})
            for log, serial in rows
        ]
        return entries, total


def revenue_csv(report: RevenueReport) -> str:
    """One line per group, then a `total` line; amounts in paisa, days in UTC."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in report.rows:
        writer.writerow([_csv_cell(getattr(row, column)) for column in CSV_COLUMNS])
    totals = report.totals
    writer.writerow(
        [
            "total",
            f"{report.from_date}..{report.to_date}",
            totals.rental_charges_paisa,
            totals.late_fees_paisa,
            totals.refunds_paisa,
            totals.net_paisa,
            totals.rentals,
        ]
    )
    return out.getvalue()


def _csv_cell(value: Any) -> Any:
    # A label starting with =, +, - or @ would be a formula in a spreadsheet (CSV injection).
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return value


# ------------------------------------------------------------------------------ the ingest's parked events


class IngestUnavailable(CoreError):
    status_code = 502
    code = "INGEST_UNAVAILABLE"
    default_message = "The ingest's operations API did not answer"


class IngestOps:
    """Signed calls to the ingest's ops API (``/internal/ops/...``), signed like the command API."""

    def __init__(
        self, http: httpx.AsyncClient, *, base_url: str, hmac_secret: str, service_token: str | None
    ) -> None:
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._secret = hmac_secret
        self._service_token = service_token

    def _headers(self, body: bytes) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "X-Caller": "core-operations"}
        headers.update(signed_headers(self._secret, body))
        if self._service_token:
            headers["X-Service-Token"] = self._service_token
        return headers

    async def _call(
        self, method: str, path: str, *, body: bytes = b"", params: dict[str, Any] | None = None
    ) -> Any:
        try:
            response = await self._http.request(
                method,
                f"{self._base_url}{path}",
                content=body,
                params=params,
                headers=self._headers(body),
                timeout=httpx.Timeout(15.0, connect=3.0),
            )
        except httpx.HTTPError as exc:
            raise IngestUnavailable(details={"error": type(exc).__name__}) from exc
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.status_code == 503:
            raise ServiceUnavailable(
                "The ingest is busy or its store is unavailable; retry later", code="INGEST_BUSY"
            )
        if response.status_code != 200 or not isinstance(payload, dict):
            code = payload.get("error") if isinstance(payload, dict) else None
            raise IngestUnavailable(
                "The ingest refused the operations call",
                details={"status": response.status_code, "error": code},
            )
        return payload.get("data")

    async def parked_events(self, *, station: str | None, limit: int) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"reason": "parked", "limit": limit}
        if station:
            params["station"] = station
        data = await self._call("GET", "/internal/ops/dead-letters", params=params)
        items = data.get("items") if isinstance(data, dict) else None
        return [item for item in items or [] if isinstance(item, dict)]

    async def redrive(self, *, ids: list[int], station: str | None, all_parked: bool) -> dict[str, Any]:
        body = json.dumps({"ids": ids, "station": station, "all_parked": all_parked}).encode()
        data = await self._call("POST", "/internal/ops/redrive", body=body)
        return data if isinstance(data, dict) else {"count": 0, "redriven": []}
