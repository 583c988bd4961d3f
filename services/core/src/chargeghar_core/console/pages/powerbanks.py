"""Power banks: search with condition and operator-status filters; one bank's story (``bank_detail``, as
``GET /api/admin/powerbanks/{id}``); its operator status set with a reason (``set_operator_status``, as
``PATCH /api/admin/powerbanks/{id}``: refused for a bank on an open rental, audited)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Form, Query, Response
from pydantic import ValidationError
from sqlalchemy import func, select

from chargeghar_core.console.context import Action, Page
from chargeghar_core.console.pagination import PageNumber, Pager
from chargeghar_core.kit.errors import CoreError
from chargeghar_core.powerbanks.admin import bank_detail, set_operator_status
from chargeghar_core.powerbanks.models import BankCondition, PowerBank
from chargeghar_core.powerbanks.repository import bank_inventory
from chargeghar_core.powerbanks.schemas import BankStatusFilter, OperatorStatusChange, PowerBankStatusUpdate
from chargeghar_core.stations.models import Station

router = APIRouter(prefix="/console", include_in_schema=False)

CONDITIONS = (BankCondition.HEALTHY, BankCondition.FAULT)
STATUS_CHOICES = tuple(status.value for status in BankStatusFilter)
OPERATOR_CHANGES = tuple(change.value for change in OperatorStatusChange)


@router.get("/powerbanks")
async def powerbanks(
    ctx: Page,
    q: Annotated[str | None, Query(max_length=64)] = None,
    status: Annotated[str | None, Query(max_length=16)] = None,
    condition: Annotated[str | None, Query(max_length=16)] = None,
    page: PageNumber = 1,
) -> Response:
    status_filter = status if status in STATUS_CHOICES else None
    condition_filter = condition if condition in CONDITIONS else None
    search = (q or "").strip() or None
    size = ctx.settings.page_size
    query = bank_inventory(status=status_filter, condition=condition_filter, search=search)
    total = int(await ctx.db.scalar(select(func.count()).select_from(query.subquery())) or 0)
    rows = (
        await ctx.db.execute(
            query.add_columns(Station.name, Station.imei)
            .outerjoin(Station, Station.id == PowerBank.current_station_id)
            .order_by(PowerBank.serial_number)
            .limit(size)
            .offset((page - 1) * size)
        )
    ).all()
    return ctx.render(
        "pages/powerbanks.html",
        {
            "rows": rows,
            "pager": Pager(page=page, page_size=size, total=total, url=ctx.request.url),
            "q": search or "",
            "status": status_filter or "",
            "condition": condition_filter or "",
            "statuses": STATUS_CHOICES,
            "conditions": CONDITIONS,
        },
    )


@router.get("/powerbanks/{bank_id}")
async def powerbank_detail(ctx: Page, bank_id: uuid.UUID) -> Response:
    detail = await bank_detail(ctx.db, bank_id)
    station_imei = None
    if detail.location.station_id is not None:
        station_imei = await ctx.db.scalar(
            select(Station.imei).where(Station.id == detail.location.station_id)
        )
    return ctx.render(
        "pages/powerbank_detail.html",
        {"bank": detail, "station_imei": station_imei, "changes": OPERATOR_CHANGES},
    )


@router.post("/powerbanks/{bank_id}/status")
async def powerbank_set_status(
    ctx: Action,
    bank_id: uuid.UUID,
    status: Annotated[str, Form(max_length=16)] = "",
    reason: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    back = f"/console/powerbanks/{bank_id}"
    try:
        update = PowerBankStatusUpdate(status=OperatorStatusChange(status), reason=reason.strip())
    except (ValueError, ValidationError):
        return ctx.redirect(back, error="Choose a status and give a reason (3 to 500 characters)")
    try:
        bank = await set_operator_status(ctx.db, bank_id, update, ctx.staff.claims)
    except CoreError as exc:
        return ctx.redirect(back, error=f"Not changed: {exc.message}")
    return ctx.redirect(back, ok=f"Bank {bank.serial_number}: status {bank.status} ({update.status.value})")
