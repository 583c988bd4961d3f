"""Rentals: the list with filters, one rental's timeline (reservation → eject → return) and the staff
corrections of a completed rental — override its end time or total, waive a due, refund to the wallet.

The corrections call :class:`RentalAdministration`, the same class the ``/api/admin/rentals/...`` endpoints
call, with the request models of those endpoints for validation: the money rules and the audit rows (a
``rental_audit`` row shown here and a ``staff_audit_log`` row, actor = the logged-in account) are theirs.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Response
from pydantic import ValidationError
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.auth.models import User
from chargeghar_core.console.context import Action, ConsoleContext, ConsoleError, Page
from chargeghar_core.console.pages import inputs
from chargeghar_core.console.pagination import PageNumber, Pager
from chargeghar_core.console.rendering import format_paisa
from chargeghar_core.kit.db import LIKE_ESCAPE, like_contains
from chargeghar_core.kit.errors import CoreError
from chargeghar_core.rentals.admin import RentalAdministration, owed_total
from chargeghar_core.rentals.endpoints import runtime_of
from chargeghar_core.rentals.errors import RentalNotFound
from chargeghar_core.rentals.models import Rental, RentalAuditEntry, RentalExtension, RentalStatus
from chargeghar_core.rentals.schemas import RentalOverrideRequest, WaiveDueRequest, WalletRefundRequest
from chargeghar_core.stations.models import Station, SyncLog

router = APIRouter(prefix="/console", include_in_schema=False)

STATUSES = [status.value for status in RentalStatus]
Filter = Annotated[str | None, Query(max_length=100)]
Reason = Annotated[str, Form(max_length=2000)]
Amount = Annotated[str, Form(max_length=32)]


# ------------------------------------------------------------------------------------------ queries


@dataclass(frozen=True, slots=True)
class RentalFilter:
    status: str | None = None
    station: str | None = None  # IMEI, serial number or part of the station's name
    renter: str | None = None  # part of the renter's e-mail, or the user id
    since: datetime | None = None
    until: datetime | None = None


def _filtered(where: RentalFilter) -> Select[Rental, str]:
    query = select(Rental, User.email).join(User, User.id == Rental.user_id)
    if where.status:
        query = query.where(Rental.status == where.status)
    if where.station:
        lowered = where.station.lower()
        stations = select(Station.id).where(
            (Station.imei == where.station)
            | (Station.serial_number == where.station)
            | func.lower(Station.name).like(like_contains(lowered), escape=LIKE_ESCAPE)
        )
        query = query.where(Rental.station_id.in_(stations))
    if where.renter:
        user_id = inputs.identifier(where.renter)
        if user_id is not None:
            query = query.where(Rental.user_id == user_id)
        else:
            query = query.where(
                func.lower(User.email).like(like_contains(where.renter.lower()), escape=LIKE_ESCAPE)
            )
    if where.since is not None:
        query = query.where(Rental.created_at >= where.since)
    if where.until is not None:
        query = query.where(Rental.created_at < where.until)
    return query


async def find_rentals(
    session: AsyncSession, where: RentalFilter, *, limit: int, offset: int
) -> tuple[list[tuple[Rental, str]], int]:
    """Rentals matching ``where``, newest first, with their renter's e-mail; and how many match."""
    query = _filtered(where)
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = await session.execute(
        query.order_by(Rental.created_at.desc(), Rental.id).limit(limit).offset(offset)
    )
    return [(rental, email) for rental, email in rows.all()], int(total or 0)


async def _emails(session: AsyncSession, user_ids: set[uuid.UUID]) -> dict[uuid.UUID, str]:
    if not user_ids:
        return {}
    rows = await session.execute(select(User.id, User.email).where(User.id.in_(user_ids)))
    return {user_id: email for user_id, email in rows.all()}


async def _stations(session: AsyncSession, station_ids: set[uuid.UUID]) -> dict[uuid.UUID, Station]:
    if not station_ids:
        return {}
    rows = await session.scalars(select(Station).where(Station.id.in_(station_ids)))
    return {station.id: station for station in rows}


async def _audit_rows(session: AsyncSession, rental_id: uuid.UUID) -> list[RentalAuditEntry]:
    rows = await session.scalars(
        select(RentalAuditEntry)
        .where(RentalAuditEntry.rental_id == rental_id)
        .order_by(RentalAuditEntry.created_at, RentalAuditEntry.id)
    )
    return list(rows)


async def _extensions(session: AsyncSession, rental_id: uuid.UUID) -> list[RentalExtension]:
    rows = await session.scalars(
        select(RentalExtension)
        .where(RentalExtension.rental_id == rental_id)
        .order_by(RentalExtension.created_at)
    )
    return list(rows)


async def _command_events(session: AsyncSession, rental: Rental) -> list[SyncLog]:
    """What the station reported about this rental's eject and check commands (command results and the
    ingest's command audit), from the station's sync log since the eject was asked for."""
    command_ids = [cid for cid in (rental.popup_command_id, rental.check_command_id) if cid]
    if not command_ids:
        return []
    rows = await session.scalars(
        select(SyncLog)
        .where(
            SyncLog.station_id == rental.station_id,
            SyncLog.created_at >= rental.popup_requested_at,
            SyncLog.event_type.in_(("command_result", "command_audit")),
            SyncLog.payload["command_id"].as_string().in_(command_ids),
        )
        .order_by(SyncLog.created_at)
        .limit(50)
    )
    return list(rows)


# ------------------------------------------------------------------------------------------ timeline


@dataclass(frozen=True, slots=True)
class TimelineItem:
    at: datetime | None
    kind: str  # reserve, eject, check, extend, due, claim, return, end, correction, device
    title: str
    detail: str = ""
    reason: str = ""
    actor: str = ""


def timeline(
    rental: Rental,
    *,
    extensions: list[RentalExtension],
    audits: list[RentalAuditEntry],
    commands: list[SyncLog],
    emails: dict[uuid.UUID, str],
    stations: dict[uuid.UUID, Station],
) -> list[TimelineItem]:
    """Reservation → eject (and the check that settled an unclear one) → extensions → return or end, with
    every correction by staff or by a job, in time order."""

    def station_name(station_id: uuid.UUID | None) -> str:
        station = stations.get(station_id) if station_id is not None else None
        return f"{station.name} ({station.imei})" if station is not None else "an unknown station"

    items = [
        TimelineItem(
            rental.popup_requested_at,
            "reserve",
            "Bank reserved, eject requested",
            f"Bank {rental.power_bank_serial} in slot {rental.slot_number} of "
            f"{station_name(rental.station_id)}; command {rental.popup_command_id}",
        )
    ]
    if rental.popup_outcome is not None or rental.started_at is not None:
        outcome = rental.popup_outcome or "ok"
        battery = f"; battery {rental.battery_at_start}%" if rental.battery_at_start is not None else ""
        items.append(
            TimelineItem(
                rental.started_at or rental.popup_requested_at,
                "eject",
                "Bank ejected, rental started" if rental.started_at else f"Eject answered: {outcome}",
                f"Eject outcome {outcome}{battery}",
            )
        )
    if rental.check_command_id is not None:
        waiting = " (waiting for its answer)" if rental.awaiting_check else ""
        items.append(
            TimelineItem(
                None if rental.awaiting_check else rental.started_at or rental.ended_at,
                "check",
                f"Station check to settle the eject{waiting}",
                f"command {rental.check_command_id}",
            )
        )
    for log in commands:
        payload = log.payload if isinstance(log.payload, dict) else {}
        items.append(
            TimelineItem(
                log.created_at,
                "device",
                f"Station reported {payload.get('cmd') or log.event_type}: "
                f"{payload.get('outcome') or log.outcome}",
                f"{log.event_type}, command {payload.get('command_id')}",
            )
        )
    for number, extension in enumerate(extensions, 1):
        items.append(
            TimelineItem(
                extension.created_at,
                "extend",
                f"Extension {number}: +{extension.minutes} min",
                f"due {extension.previous_due_at:%Y-%m-%d %H:%M} → {extension.new_due_at:%Y-%m-%d %H:%M} UTC",
            )
        )
    if rental.return_claimed_at is not None:
        items.append(
            TimelineItem(
                rental.return_claimed_at,
                "claim",
                "Return claimed over device HTTP (not yet corroborated)",
                f"at {station_name(rental.return_claim_station_id)}, slot {rental.return_claim_slot_number}",
            )
        )
    if rental.ended_at is not None:
        items.append(_end_item(rental, station_name(rental.return_station_id)))
    for entry in audits:
        items.append(
            TimelineItem(
                entry.created_at,
                "correction",
                entry.action.replace("_", " ").capitalize(),
                _details(entry.details),
                reason=entry.reason,
                actor=emails.get(entry.actor_user_id, str(entry.actor_user_id))
                if entry.actor_user_id is not None
                else "system",
            )
        )
    if rental.due_at is not None and rental.ended_at is None:
        items.append(TimelineItem(rental.due_at, "due", "Due back", ""))
    # Undated items (a check still waiting) go last; equal times keep the order above.
    return sorted(items, key=lambda item: (item.at is None, item.at or rental.popup_requested_at))


# Amount keys of rental_audit details that carry no "_paisa" suffix.
_AMOUNT_KEYS = frozenset({"total_before", "total_after", "due_before"})


def _details(details: dict[str, Any]) -> str:
    """A correction's details in one line, amounts in rupees (the audit keeps paisa)."""
    parts = []
    for key, value in sorted(details.items()):
        is_amount = key.endswith("_paisa") or key in _AMOUNT_KEYS
        shown = format_paisa(value) if is_amount and isinstance(value, int) else value
        parts.append(f"{key.removesuffix('_paisa').replace('_', ' ')}: {shown}")
    return ", ".join(parts)


def _end_item(rental: Rental, return_station: str) -> TimelineItem:
    if rental.status == RentalStatus.COMPLETED.value and rental.return_station_id is not None:
        on_time = {True: "on time", False: "late", None: ""}[rental.returned_on_time]
        battery = f", battery {rental.battery_at_return}%" if rental.battery_at_return is not None else ""
        return TimelineItem(
            rental.ended_at,
            "return",
            f"Returned {on_time}".strip(),
            f"to {return_station}, slot {rental.return_slot_number}{battery}",
        )
    title = {
        RentalStatus.CANCELLED.value: "Cancelled",
        RentalStatus.LOST.value: "Closed as lost",
    }.get(rental.status, "Ended")
    return TimelineItem(rental.ended_at, "end", title, rental.end_reason or "")


# ------------------------------------------------------------------------------------------ pages


@router.get("/rentals")
async def rentals(
    ctx: Page,
    status: Filter = None,
    station: Filter = None,
    renter: Filter = None,
    from_day: Annotated[str | None, Query(alias="from", max_length=10)] = None,
    to_day: Annotated[str | None, Query(alias="to", max_length=10)] = None,
    page: PageNumber = 1,
) -> Response:
    try:
        since, until = inputs.nepal_days(inputs.day(from_day, "from"), inputs.day(to_day, "to"))
        where = RentalFilter(
            status=inputs.choice(status, STATUSES, "status"),
            station=inputs.text(station),
            renter=inputs.text(renter),
            since=since,
            until=until,
        )
    except inputs.InputError as exc:
        raise ConsoleError(400, str(exc)) from exc
    size = ctx.settings.page_size
    rows, total = await find_rentals(ctx.db, where, limit=size, offset=(page - 1) * size)
    return ctx.render(
        "pages/rentals_list.html",
        {
            "rows": rows,
            "pager": Pager(page=page, page_size=size, total=total, url=ctx.request.url),
            "status_options": [("", "Any"), *((s, s.replace("_", " ").capitalize()) for s in STATUSES)],
            "filters": {
                "status": where.status or "",
                "station": where.station or "",
                "renter": where.renter or "",
                "from": inputs.text(from_day) or "",
                "to": inputs.text(to_day) or "",
            },
        },
    )


@router.get("/rentals/{rental_id}")
async def rental_detail(ctx: Page, rental_id: uuid.UUID) -> Response:
    rental = await ctx.db.get(Rental, rental_id, populate_existing=True)
    if rental is None:
        raise RentalNotFound()
    audits = await _audit_rows(ctx.db, rental.id)
    extensions = await _extensions(ctx.db, rental.id)
    commands = await _command_events(ctx.db, rental)
    emails = await _emails(
        ctx.db, {rental.user_id} | {a.actor_user_id for a in audits if a.actor_user_id is not None}
    )
    station_ids = {
        sid
        for sid in (rental.station_id, rental.return_station_id, rental.return_claim_station_id)
        if sid is not None
    }
    stations = await _stations(ctx.db, station_ids)
    completed = rental.status == RentalStatus.COMPLETED.value
    refundable = rental.charged_paisa - rental.refunded_paisa
    return ctx.render(
        "pages/rentals_detail.html",
        {
            "rental": rental,
            "renter_email": emails.get(rental.user_id, ""),
            "station": stations.get(rental.station_id),
            "return_station": stations.get(rental.return_station_id) if rental.return_station_id else None,
            "timeline": timeline(
                rental,
                extensions=extensions,
                audits=audits,
                commands=commands,
                emails=emails,
                stations=stations,
            ),
            "owed_paisa": owed_total(rental),
            "refundable_paisa": refundable,
            "can_correct": completed,
            "can_waive": completed and rental.amount_due_paisa > 0,
            "can_refund": completed and refundable > 0,
        },
    )


Correction = Callable[[RentalAdministration], Awaitable[Rental]]


async def _correct(
    ctx: ConsoleContext, rental_id: uuid.UUID, correction: Correction, done: Callable[[Rental], str]
) -> Response:
    """Run one correction through the API's administration class; a refused one becomes a flash."""
    here = f"/console/rentals/{rental_id}"
    administration = RentalAdministration(ctx.db, currency=runtime_of(ctx.request).payment_settings.currency)
    try:
        corrected = await correction(administration)
    except CoreError as exc:
        # Nothing of a refused correction may stay (the session is committed after the redirect).
        await ctx.db.rollback()
        return ctx.redirect(here, error=f"Not done: {exc.message}")
    return ctx.redirect(here, ok=done(corrected))


@router.post("/rentals/{rental_id}/override")
async def override(
    ctx: Action,
    rental_id: uuid.UUID,
    reason: Reason = "",
    ended_at: Annotated[str, Form(max_length=40)] = "",
    total: Amount = "",
) -> Response:
    here = f"/console/rentals/{rental_id}"
    try:
        body = RentalOverrideRequest(
            ended_at=inputs.local_time(ended_at, "End time"),
            total_paisa=inputs.rupees(total, "Total"),
            reason=reason.strip(),
        )
    except inputs.InputError as exc:
        return ctx.redirect(here, error=str(exc))
    except ValidationError as exc:
        return ctx.redirect(here, error=inputs.first_error(exc))
    staff = ctx.staff.claims
    if body.ended_at is not None:
        ended = body.ended_at

        async def correction(admin: RentalAdministration) -> Rental:
            return await admin.override_end(rental_id, ended_at=ended, reason=body.reason, actor=staff)

        def done(rental: Rental) -> str:
            return f"End time corrected; the rental now costs {format_paisa(owed_total(rental))}"
    else:
        total_paisa = body.total_paisa or 0

        async def correction(admin: RentalAdministration) -> Rental:
            return await admin.override_total(
                rental_id, total_paisa=total_paisa, reason=body.reason, actor=staff
            )

        def done(rental: Rental) -> str:
            return f"Total corrected to {format_paisa(owed_total(rental))}"

    return await _correct(ctx, rental_id, correction, done)


@router.post("/rentals/{rental_id}/waive")
async def waive(ctx: Action, rental_id: uuid.UUID, reason: Reason = "", amount: Amount = "") -> Response:
    here = f"/console/rentals/{rental_id}"
    try:
        body = WaiveDueRequest(amount_paisa=inputs.rupees(amount, "Amount"), reason=reason.strip())
    except inputs.InputError as exc:
        return ctx.redirect(here, error=str(exc))
    except ValidationError as exc:
        return ctx.redirect(here, error=inputs.first_error(exc))
    staff = ctx.staff.claims

    async def correction(admin: RentalAdministration) -> Rental:
        return await admin.waive_due(
            rental_id, amount_paisa=body.amount_paisa, reason=body.reason, actor=staff
        )

    def done(rental: Rental) -> str:
        return f"Due waived; still due {format_paisa(rental.amount_due_paisa)}"

    return await _correct(ctx, rental_id, correction, done)


@router.post("/rentals/{rental_id}/refund")
async def refund(ctx: Action, rental_id: uuid.UUID, reason: Reason = "", amount: Amount = "") -> Response:
    here = f"/console/rentals/{rental_id}"
    try:
        body = WalletRefundRequest(amount_paisa=inputs.rupees(amount, "Amount"), reason=reason.strip())
    except inputs.InputError as exc:
        return ctx.redirect(here, error=str(exc))
    except ValidationError as exc:
        return ctx.redirect(here, error=inputs.first_error(exc))
    staff = ctx.staff.claims

    async def correction(admin: RentalAdministration) -> Rental:
        return await admin.refund_to_wallet(
            rental_id, amount_paisa=body.amount_paisa, reason=body.reason, actor=staff
        )

    def done(rental: Rental) -> str:
        return f"Refunded to the wallet; refunded in all {format_paisa(rental.refunded_paisa)}"

    return await _correct(ctx, rental_id, correction, done)
