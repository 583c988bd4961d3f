"""Renters: search, one renter's wallet (balance, dues, ledger) and rentals, and the account status.

The search is the query of ``GET /api/admin/renters``; the ledger is the one of
``GET /api/admin/transactions?user_id=`` (with its totals); a status change is ``RenterService.set_status``,
as ``PUT /api/admin/renters/{id}/status`` does (suspension ends the renter's sessions; the service records
the staff-audit row with the logged-in account).
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Form, Query, Response
from pydantic import ValidationError

from chargeghar_core.auth.dependencies import get_token_service
from chargeghar_core.console.context import Action, Page
from chargeghar_core.console.pages import inputs
from chargeghar_core.console.pagination import PageNumber, Pager
from chargeghar_core.payments.wallet import WalletService
from chargeghar_core.rentals.repository import RentalRepository
from chargeghar_core.renters.models import AccountStatus
from chargeghar_core.renters.repository import RenterRepository
from chargeghar_core.renters.schemas import RenterOut, StatusUpdate
from chargeghar_core.renters.service import RenterService
from chargeghar_core.reports.repository import TransactionFilter
from chargeghar_core.reports.schemas import TransactionSource
from chargeghar_core.reports.service import ReportsService

router = APIRouter(prefix="/console", include_in_schema=False)

RECENT_RENTALS = 10


@router.get("/renters")
async def renters(
    ctx: Page, q: Annotated[str | None, Query(max_length=100)] = None, page: PageNumber = 1
) -> Response:
    size = ctx.settings.page_size
    search = inputs.text(q)
    rows, total = await RenterRepository(ctx.db).search(search=search, limit=size, offset=(page - 1) * size)
    return ctx.render(
        "pages/renters_list.html",
        {
            "rows": [RenterOut.of(user, profile) for user, profile in rows],
            "pager": Pager(page=page, page_size=size, total=total, url=ctx.request.url),
            "q": search or "",
        },
    )


@router.get("/renters/{user_id}")
async def renter_detail(ctx: Page, user_id: uuid.UUID, page: PageNumber = 1) -> Response:
    service = RenterService(RenterRepository(ctx.db), get_token_service(ctx.request))
    user, profile = await service.profile(user_id)  # 404 RENTER_NOT_FOUND for staff or unknown ids
    size = ctx.settings.page_size
    ledger = await ReportsService(ctx.db).transactions(
        TransactionSource.LEDGER, TransactionFilter(user_id=user_id), page=page, page_size=size
    )
    recent, rental_count = await RentalRepository(ctx.db).history(
        user_id, status=None, limit=RECENT_RENTALS, offset=0
    )
    return ctx.render(
        "pages/renters_detail.html",
        {
            "renter": RenterOut.of(user, profile),
            "profile": profile,
            "joined_at": user.created_at,
            "balance_paisa": await WalletService(ctx.db).balance(user_id),
            "dues_paisa": await RentalRepository(ctx.db).dues_of(user_id),
            "ledger": ledger,
            "pager": Pager(page=page, page_size=size, total=ledger.total, url=ctx.request.url),
            "recent": recent,
            "rental_count": rental_count,
            "status_options": [(status.value, status.value.capitalize()) for status in AccountStatus],
        },
    )


@router.post("/renters/{user_id}/status")
async def set_status(
    ctx: Action,
    user_id: uuid.UUID,
    status: Annotated[str, Form(max_length=16)] = "",
    reason: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    here = f"/console/renters/{user_id}"
    try:
        body = StatusUpdate.model_validate({"status": status, "reason": inputs.text(reason)})
    except ValidationError as exc:
        return ctx.redirect(here, error=inputs.first_error(exc))
    if body.reason is None or len(body.reason) < 3:
        # The API lets the reason out; the console asks for one, so the audit log says why.
        return ctx.redirect(here, error="reason: give a reason (at least 3 characters)")
    service = RenterService(RenterRepository(ctx.db), get_token_service(ctx.request))
    _, before = await service.profile(user_id)
    previous = before.status
    _, profile = await service.set_status(user_id, body.status, body.reason, actor=ctx.staff.claims)
    return ctx.redirect(here, ok=f"Account {profile.status.lower()} (was {previous.lower()})")
