"""The fleet sync log (every station event core received, applied or not) and the events the ingest parked,
with their re-drive.

The sync log is ``ReportsService.sync_logs``, as ``GET /api/admin/sync-logs``. Parked events are listed and
re-driven by calling the operations API's own endpoint functions (``list_parked_events``,
``redrive_parked_events``): the signed call to the ingest, the refusal of a re-drive that names nothing and
the staff audit row (``parked_events.redrive``, actor = the logged-in account) are the API's, not a copy.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Response
from pydantic import ValidationError

from chargeghar_core.console.context import Action, ConsoleError, Page
from chargeghar_core.console.pages import inputs
from chargeghar_core.console.pagination import PageNumber, Pager
from chargeghar_core.kit.errors import CoreError
from chargeghar_core.reports.endpoints import list_parked_events, redrive_parked_events
from chargeghar_core.reports.repository import SyncLogFilter
from chargeghar_core.reports.schemas import RedriveRequest
from chargeghar_core.reports.service import ReportsService
from chargeghar_core.stations.models import SyncOutcome

router = APIRouter(prefix="/console", include_in_schema=False)

EVENT_TYPES = [
    "full",
    "returned",
    "status",
    "command_result",
    "slot_event",
    "return_failed",
    "command_audit",
    "unknown",
]
# The ingest lists at most this many parked events per call; the console pages through them.
PARKED_LIMIT = 1000
Filter = Annotated[str | None, Query(max_length=64)]


@router.get("/sync-log")
async def sync_log(
    ctx: Page,
    outcome: Filter = None,
    event_type: Filter = None,
    station: Filter = None,
    from_day: Annotated[str | None, Query(alias="from", max_length=10)] = None,
    to_day: Annotated[str | None, Query(alias="to", max_length=10)] = None,
    page: PageNumber = 1,
) -> Response:
    try:
        since, until = inputs.nepal_days(inputs.day(from_day, "from"), inputs.day(to_day, "to"))
        where = SyncLogFilter(
            outcome=inputs.choice(outcome, [o.value for o in SyncOutcome], "outcome"),
            event_type=inputs.choice(event_type, EVENT_TYPES, "event_type"),
            station_key=inputs.text(station),
            since=since,
            until=until,
        )
    except inputs.InputError as exc:
        raise ConsoleError(400, str(exc)) from exc
    size = ctx.settings.page_size
    items, total = await ReportsService(ctx.db).sync_logs(where, page=page, page_size=size)
    return ctx.render(
        "pages/synclog_list.html",
        {
            "items": items,
            "pager": Pager(page=page, page_size=size, total=total, url=ctx.request.url),
            "filters": {
                "outcome": where.outcome or "",
                "event_type": where.event_type or "",
                "station": where.station_key or "",
                "from": inputs.text(from_day) or "",
                "to": inputs.text(to_day) or "",
            },
            "outcome_options": [("", "Any"), *((o.value, o.value) for o in SyncOutcome)],
            "type_options": [("", "Any"), *((t, t) for t in EVENT_TYPES)],
        },
    )


@router.get("/parked")
async def parked(ctx: Page, station: Filter = None, page: PageNumber = 1) -> Response:
    station_key = inputs.text(station)
    events: list[Any] = []
    ingest_error = None
    try:
        answer = await list_parked_events(
            ctx.staff.claims, ctx.request, station=station_key, limit=PARKED_LIMIT
        )
        events = answer.data
    except CoreError as exc:
        # The ingest is another service: when it does not answer, say so on the page instead of failing it.
        ingest_error = exc.message
    size = ctx.settings.page_size
    pager = Pager(page=page, page_size=size, total=len(events), url=ctx.request.url)
    return ctx.render(
        "pages/synclog_parked.html",
        {
            "events": events[pager.offset : pager.offset + size],
            "pager": pager,
            "station": station_key or "",
            "ingest_error": ingest_error,
            "truncated": len(events) >= PARKED_LIMIT,
        },
    )


@router.post("/parked/redrive")
async def redrive(
    ctx: Action,
    reason: Annotated[str, Form(max_length=500)] = "",
    scope: Annotated[str, Form(max_length=16)] = "selected",
    station: Annotated[str, Form(max_length=64)] = "",
    ids: Annotated[list[int] | None, Form()] = None,
) -> Response:
    station_key = inputs.text(station)
    back = "/console/parked" + (f"?{urlencode({'station': station_key})}" if station_key else "")
    if scope not in ("selected", "station", "all"):
        return ctx.redirect(back, error="Choose what to re-drive")
    try:
        body = RedriveRequest(
            ids=list(ids or []) if scope == "selected" else [],
            station=station_key if scope == "station" else None,
            all_parked=scope == "all",
            reason=reason.strip(),
        )
    except ValidationError as exc:
        return ctx.redirect(back, error=inputs.first_error(exc))
    if scope == "selected" and not body.ids:
        return ctx.redirect(back, error="Tick the events to re-drive")
    if scope == "station" and body.station is None:
        return ctx.redirect(back, error="Filter by a station first")
    try:
        answer = await redrive_parked_events(body, ctx.staff.claims, ctx.request, ctx.db)
    except CoreError as exc:
        return ctx.redirect(back, error=f"Not re-driven: {exc.message}")
    return ctx.redirect(back, ok=f"{answer.data.count} events re-driven into the ingest's spool")
