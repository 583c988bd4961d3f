"""Operations API over money and the fleet (staff; the viewer role reads, re-driving needs admin or staff)."""

from __future__ import annotations

import time
import uuid
from datetime import date, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from chargeghar_core.audit.service import record_staff_action
from chargeghar_core.auth.dependencies import StaffUser
from chargeghar_core.kit.db import DbSession
from chargeghar_core.kit.errors import ValidationFailed
from chargeghar_core.kit.openapi import ErrorSpec, errors
from chargeghar_core.kit.schemas import Envelope, Page, PageNumber
from chargeghar_core.payments.models import LedgerKind, PaymentStatus
from chargeghar_core.reports.repository import SyncLogFilter, TransactionFilter
from chargeghar_core.reports.schemas import (
    GroupBy,
    ParkedEvent,
    RedriveRequest,
    RedriveResult,
    RevenueReport,
    SyncLogEntry,
    TransactionPage,
    TransactionSource,
)
from chargeghar_core.reports.service import IngestOps, ReportsService, revenue_csv
from chargeghar_core.stations.models import SyncOutcome

router = APIRouter(prefix="/api/admin", tags=["admin: reports"])

PageSize = Annotated[int, Query(ge=1, le=200, description="At most 200")]
Since = Annotated[datetime | None, Query(alias="from", description="From this time (inclusive, ISO 8601)")]
Until = Annotated[datetime | None, Query(alias="to", description="Before this time (exclusive, ISO 8601)")]
EVENT_TYPE_PATTERN = "^(full|returned|status|command_result|slot_event|return_failed|command_audit|unknown)$"

CSV_EXAMPLE = (
    "key,label,rental_charges_paisa,late_fees_paisa,refunds_paisa,net_paisa,rentals\n"
    "2026-11-02,2026-11-02,15000,2000,5000,12000,3\n"
    "total,2026-11-01..2026-11-30,15000,2000,5000,12000,3\n"
)


def _currency(request: Request) -> str:
    runtime = getattr(request.app.state, "rentals", None)
    return str(runtime.payment_settings.currency) if runtime is not None else "NPR"


@router.get(
    "/transactions",
    response_model=Envelope[TransactionPage],
    summary="Money movements across renters: wallet ledger rows or provider payments",
    description=(
        "`source=ledger` (default): every wallet ledger row (signed: credits positive), filter by `kind`, "
        "`user_id`, `rental_id`, time. `source=payment`: top-ups through a provider, filter by `status`. "
        "`totals` sums every row the filters match (not only this page). Newest first."
    ),
    responses=errors(
        (400, "VALIDATION_ERROR", "Bad filter: unknown kind/status, `to` not after `from`, page")
    ),
)
async def list_transactions(
    _staff: StaffUser,
    session: DbSession,
    request: Request,
    source: TransactionSource = TransactionSource.LEDGER,
    kind: LedgerKind | None = None,
    status: PaymentStatus | None = None,
    user_id: uuid.UUID | None = None,
    rental_id: uuid.UUID | None = None,
    since: Since = None,
    until: Until = None,
    page: PageNumber = 1,
    page_size: PageSize = 50,
) -> Envelope[TransactionPage]:
    where = TransactionFilter(
        user_id=user_id,
        kind=kind.value if kind else None,
        status=status.value if status else None,
        rental_id=rental_id,
        since=since,
        until=until,
    )
    result = await ReportsService(session, currency=_currency(request)).transactions(
        source, where, page=page, page_size=page_size
    )
    return Envelope(message="Transactions", data=result)


@router.get(
    "/reports/revenue",
    response_model=Envelope[RevenueReport],
    summary="Revenue from the ledger by day, station or package (JSON or CSV)",
    description=(
        "Sums of the wallet ledger rows created from `from` to `to` (dates, both included, UTC days, at "
        "most 366 days): RENTAL_CHARGE and LATE_FEE debits taken, REFUND credits given back, "
        "`net = charges + late fees - refunds`. The rows add up to `totals`, and `totals` equal the ledger "
        "(`GET /api/admin/transactions`) over the same window. Top-ups, provider refunds and staff "
        "adjustments are reported in `totals` but are not revenue. `format=csv` or `Accept: text/csv` "
        "answers a CSV file (amounts in paisa, a last `total` line)."
    ),
    responses={
        200: {
            "description": "The report (JSON envelope) or a CSV file",
            "content": {"text/csv": {"schema": {"type": "string"}, "example": CSV_EXAMPLE}},
        },
        **errors(
            (400, "VALIDATION_ERROR", "Bad dates: `to` before `from`, more than 366 days, out of range")
        ),
    },
)
async def revenue_report(
    _staff: StaffUser,
    session: DbSession,
    request: Request,
    from_date: Annotated[date, Query(alias="from", description="First day (YYYY-MM-DD, UTC), included")],
    to_date: Annotated[date, Query(alias="to", description="Last day (YYYY-MM-DD, UTC), included")],
    group_by: GroupBy = GroupBy.DAY,
    format: Annotated[
        Literal["json", "csv"] | None, Query(description="`csv` for a CSV file (or send Accept: text/csv)")
    ] = None,
) -> Response | Envelope[RevenueReport]:
    report = await ReportsService(session, currency=_currency(request)).revenue(from_date, to_date, group_by)
    wants_csv = format == "csv" or (format is None and "text/csv" in request.headers.get("accept", ""))
    if wants_csv:
        filename = f"revenue_{group_by.value}_{from_date}_{to_date}.csv"
        return Response(
            revenue_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
    return Envelope(message="Revenue", data=report)


@router.get(
    "/sync-logs",
    response_model=Envelope[Page[SyncLogEntry]],
    summary="Station events of the whole fleet, newest first (fleet-wide sync log)",
    description=(
        "Every station event core received, applied or not. Filter by `outcome` (SUCCESS, FAILED, DUPLICATE, "
        "STALE), `event_type`, `station_id` or `station_key` (IMEI as sent, also for events of unknown "
        "stations) and time (`from` inclusive, `to` exclusive)."
    ),
    responses=errors((400, "VALIDATION_ERROR", "Bad filter: unknown outcome or type, `to` not after `from`")),
)
async def fleet_sync_logs(
    _staff: StaffUser,
    session: DbSession,
    outcome: SyncOutcome | None = None,
    event_type: Annotated[str | None, Query(pattern=EVENT_TYPE_PATTERN, description="Event type")] = None,
    station_id: uuid.UUID | None = None,
    station_key: Annotated[str | None, Query(max_length=64, description="IMEI or serial as sent")] = None,
    since: Since = None,
    until: Until = None,
    page: PageNumber = 1,
    page_size: PageSize = 50,
) -> Envelope[Page[SyncLogEntry]]:
    where = SyncLogFilter(
        outcome=outcome.value if outcome else None,
        event_type=event_type,
        station_id=station_id,
        station_key=station_key,
        since=since,
        until=until,
    )
    items, total = await ReportsService(session).sync_logs(where, page=page, page_size=page_size)
    return Envelope(message="Sync log", data=Page(items=items, total=total, page=page, page_size=page_size))


def _ingest_ops(request: Request) -> IngestOps:
    runtime = request.app.state.rentals
    token = runtime.settings.ingest_service_token
    return IngestOps(
        request.app.state.http_client,
        base_url=runtime.settings.ingest_url,
        hmac_secret=request.app.state.settings.hmac.secret.get_secret_value(),
        service_token=token.get_secret_value() if token is not None else None,
    )


INGEST_ERRORS: tuple[ErrorSpec, ...] = (
    (502, "INGEST_UNAVAILABLE", "The ingest's ops API did not answer or refused the call"),
    (503, "INGEST_BUSY", "The ingest answered 503 (its store is busy or down); retry after `Retry-After`"),
)


@router.get(
    "/parked-events",
    response_model=Envelope[list[ParkedEvent]],
    summary="Events the ingest parked after core kept failing them (from the ingest)",
    description=(
        "Asks the ingest's signed ops API (`GET /internal/ops/dead-letters?reason=parked`). Fix the cause, "
        "then re-drive them with `POST /api/admin/parked-events/redrive`."
    ),
    responses=errors((400, "VALIDATION_ERROR", "Bad filter"), *INGEST_ERRORS),
)
async def list_parked_events(
    _staff: StaffUser,
    request: Request,
    station: Annotated[str | None, Query(max_length=64, description="Station IMEI")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Envelope[list[ParkedEvent]]:
    items = await _ingest_ops(request).parked_events(station=station, limit=limit)
    events = [ParkedEvent.model_validate(item) for item in items]
    return Envelope(message=f"{len(events)} parked events", data=events)


@router.post(
    "/parked-events/redrive",
    response_model=Envelope[RedriveResult],
    summary="Re-drive parked events into the ingest's spool (audited)",
    description=(
        "Name `ids`, a `station` or `all_parked`, and a `reason`. The ingest puts the events back at their "
        "original place with their attempts reset; the call is recorded in the staff audit log."
    ),
    responses=errors(
        (400, "VALIDATION_ERROR", "Bad body: name ids, a station or all_parked, and a reason"), *INGEST_ERRORS
    ),
)
async def redrive_parked_events(
    body: RedriveRequest, staff: StaffUser, request: Request, session: DbSession
) -> Envelope[RedriveResult]:
    if not body.ids and body.station is None and not body.all_parked:
        raise ValidationFailed(details={"ids": ["name ids, a station, or all_parked"]})
    started = time.perf_counter()
    data = await _ingest_ops(request).redrive(ids=body.ids, station=body.station, all_parked=body.all_parked)
    result = RedriveResult(count=int(data.get("count", 0)), redriven=list(data.get("redriven", [])))
    await record_staff_action(
        session,
        actor=staff,
        action="parked_events.redrive",
        target_type="ingest",
        target_id=body.station,
        details={
            "ids": body.ids,
            "all_parked": body.all_parked,
            "reason": body.reason,
            "count": result.count,
        },
        outcome="ok",
        elapsed_ms=(time.perf_counter() - started) * 1000,
    )
    return Envelope(message=f"{result.count} events re-driven", data=result)
