"""Stations: search, status filter and a map; one station's slots, banks, history and sync log; device
actions (check, eject a slot or a bank after a confirmation, reboot) through ``run_staff_command`` — the
path of ``POST /api/admin/stations/{id}/commands``: the same checks (never eject a bank on a rental,
never re-send a popup) and the same ``device.command`` audit row."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import structlog
from fastapi import APIRouter, Form, Query, Response
from sqlalchemy import select

from chargeghar_core.console.context import Action, ConsoleContext, ConsoleError, Page
from chargeghar_core.console.pagination import PageNumber, Pager
from chargeghar_core.kit.errors import CoreError, NotFound
from chargeghar_core.operations.commands import run_staff_command, staff_client
from chargeghar_core.operations.schemas import StaffCommand, StaffCommandResult
from chargeghar_core.rentals.runtime import RentalRuntime
from chargeghar_core.settings import Settings
from chargeghar_core.stations.models import Station
from chargeghar_core.stations.repository import StationRepository
from chargeghar_core.stations.service import StationQuery, StationService

logger = structlog.get_logger(__name__)

router = APIRouter(prefix="/console", include_in_schema=False)

STATION_STATUSES = ("ONLINE", "OFFLINE", "MAINTENANCE")
HISTORY_ROWS = 20
SYNC_ROWS = 20


def _has_location(station: Station) -> bool:
    return not (station.latitude == 0.0 and station.longitude == 0.0)


@router.get("/stations")
async def stations(
    ctx: Page,
    q: Annotated[str | None, Query(max_length=100)] = None,
    status: Annotated[str | None, Query(max_length=16)] = None,
    page: PageNumber = 1,
) -> Response:
    status_filter = status if status in STATION_STATUSES else None
    search = (q or "").strip() or None
    size = ctx.settings.page_size
    hits, total = await StationService(StationRepository(ctx.db)).search(
        StationQuery(status=status_filter, search=search), public=False, page=page, page_size=size
    )
    markers = [
        {
            "imei": hit.station.imei,
            "name": hit.station.name,
            "lat": hit.station.latitude,
            "lng": hit.station.longitude,
            "status": hit.station.status,
            "url": f"/console/stations/{hit.station.imei}",
        }
        for hit in hits
        if _has_location(hit.station)
    ]
    return ctx.render(
        "pages/stations.html",
        {
            "hits": hits,
            "pager": Pager(page=page, page_size=size, total=total, url=ctx.request.url),
            "q": search or "",
            "status": status_filter or "",
            "statuses": STATION_STATUSES,
            "markers": markers,
        },
    )


async def _station(ctx: ConsoleContext, imei: str) -> Station:
    station = await ctx.db.scalar(select(Station).where(Station.imei == imei))
    if station is None:
        raise NotFound(f"No station with IMEI {imei}")
    return station


@router.get("/stations/{imei}")
async def station_detail(ctx: Page, imei: str) -> Response:
    found = await _station(ctx, imei)
    station, rentable = await StationService(StationRepository(ctx.db)).admin_detail(found.id)
    repository = StationRepository(ctx.db)
    history = await repository.history(station.id, limit=HISTORY_ROWS, offset=0)
    sync_logs = await repository.sync_logs(station.id, outcome=None, limit=SYNC_ROWS, offset=0)
    banks = [slot for slot in station.slots if slot.power_bank is not None]
    return ctx.render(
        "pages/station_detail.html",
        {
            "station": station,
            "rentable": rentable,
            "slots": station.slots,
            "banks": banks,
            "history": history,
            "sync_logs": sync_logs,
            "has_location": _has_location(station),
        },
    )


@router.get("/stations/{imei}/eject")
async def eject_confirm(
    ctx: Page,
    imei: str,
    slot: Annotated[int | None, Query(ge=1, le=255)] = None,
    serial: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """The confirmation step of an eject (no JavaScript needed): what will come out, and where."""
    if not ctx.can_act:
        raise ConsoleError(403, "The viewer role is read-only")
    station, _ = await StationService(StationRepository(ctx.db)).admin_detail((await _station(ctx, imei)).id)
    if slot is None and not serial:
        return ctx.redirect(f"/console/stations/{imei}", error="Choose a slot or a bank to eject")
    target_slot = next((s for s in station.slots if slot is not None and s.slot_number == slot), None)
    if serial:
        target_slot = next(
            (s for s in station.slots if s.power_bank is not None and s.power_bank.serial_number == serial),
            None,
        )
    return ctx.render(
        "pages/station_eject.html",
        {"station": station, "slot": slot, "serial": serial or "", "target": target_slot},
    )


def _client(ctx: ConsoleContext) -> Any:
    runtime: RentalRuntime = ctx.request.app.state.rentals
    settings: Settings = ctx.request.app.state.settings
    http: httpx.AsyncClient = ctx.request.app.state.http_client
    token = runtime.settings.ingest_service_token
    return staff_client(
        http,
        base_url=runtime.settings.ingest_url,
        secret=settings.hmac.secret.get_secret_value(),
        token=token.get_secret_value() if token is not None else None,
    )


async def _send(ctx: ConsoleContext, imei: str, command: StaffCommand, what: str) -> Response:
    """Run the command as the API does and answer a flash with its outcome (refusals included)."""
    station = await _station(ctx, imei)
    back = f"/console/stations/{imei}"
    try:
        result: StaffCommandResult = await run_staff_command(
            ctx.db, _client(ctx), station.id, command, ctx.staff.claims
        )
    except CoreError as exc:
        return ctx.redirect(back, error=f"{what}: refused — {exc.message}")
    if result.outcome == "ok":
        return ctx.redirect(back, ok=f"{what}: done ({result.elapsed_ms} ms)")
    if result.outcome == "timeout":
        return ctx.redirect(
            back, error=f"{what}: no answer from the station in time; run check before retrying"
        )
    return ctx.redirect(back, error=f"{what}: the station reported a failure")


@router.post("/stations/{imei}/check")
async def check(ctx: Action, imei: str) -> Response:
    return await _send(ctx, imei, StaffCommand(cmd="check"), "Check")


@router.post("/stations/{imei}/reboot")
async def reboot(ctx: Action, imei: str) -> Response:
    return await _send(ctx, imei, StaffCommand(cmd="reboot"), "Reboot")


@router.post("/stations/{imei}/eject")
async def eject(
    ctx: Action,
    imei: str,
    slot: Annotated[str, Form(max_length=3)] = "",
    serial: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    if serial:
        if not serial.isdigit():
            return ctx.redirect(f"/console/stations/{imei}", error="A bank serial is a decimal number")
        return await _send(ctx, imei, StaffCommand(cmd="popup_sn", data=serial), f"Eject of bank {serial}")
    if not slot.isdigit() or not 1 <= int(slot) <= 255:
        return ctx.redirect(f"/console/stations/{imei}", error="Choose a slot (1-255) or a bank to eject")
    return await _send(ctx, imei, StaffCommand(cmd="popup", data=slot), f"Eject of slot {slot}")
