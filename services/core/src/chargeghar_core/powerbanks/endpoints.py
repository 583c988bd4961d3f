"""Power-bank administration (staff): inventory, one bank's detail and status, the serial-prefix table."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request

from chargeghar_core.auth.dependencies import StaffUser
from chargeghar_core.kit.db import DbSession
from chargeghar_core.kit.openapi import errors
from chargeghar_core.kit.schemas import Envelope, Page, PageNumber
from chargeghar_core.powerbanks.admin import bank_detail, create_model, set_operator_status
from chargeghar_core.powerbanks.repository import PowerBankRepository
from chargeghar_core.powerbanks.schemas import (
    BankStatusFilter,
    PowerBankDetail,
    PowerBankModelCreate,
    PowerBankModelView,
    PowerBankStatusUpdate,
    PowerBankView,
)

router = APIRouter(prefix="/api/admin", tags=["admin: power banks"])


@router.get(
    "/powerbanks",
    response_model=Envelope[Page[PowerBankView]],
    summary="Power-bank inventory",
    description="Filter by status, by the station a bank sits in, or by serial (`search`).",
)
async def list_power_banks(
    _staff: StaffUser,
    session: DbSession,
    status: BankStatusFilter | None = None,
    station_id: uuid.UUID | None = None,
    search: Annotated[str | None, Query(max_length=64)] = None,
    page: PageNumber = 1,
    page_size: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Envelope[Page[PowerBankView]]:
    banks, total = await PowerBankRepository(session).search_banks(
        status=status.value if status else None,
        station_id=station_id,
        search=search,
        limit=page_size,
        offset=(page - 1) * page_size,
    )
    items = [PowerBankView.model_validate(bank) for bank in banks]
    return Envelope(
        message="Power banks", data=Page(items=items, total=total, page=page, page_size=page_size)
    )


@router.get(
    "/powerbanks/{bank_id}",
    response_model=Envelope[PowerBankDetail],
    summary="One power bank: model, device condition, operator status, where it is, history, rentals",
    description=(
        "`condition`/`condition_code` are what the cabinet reports (FAULT with the device's code, healing "
        "when the device says so); `status` is the operator's decision. `location.where` is `in_slot`, "
        "`on_rental` or `unknown`. Histories are newest first (conditions: 50, rentals: 20, "
        "operator actions: 20); battery readings come from the last report and from rental starts and "
        "returns."
    ),
    responses=errors((404, "NOT_FOUND", "No such power bank")),
)
async def power_bank_detail(
    bank_id: uuid.UUID, _staff: StaffUser, session: DbSession
) -> Envelope[PowerBankDetail]:
    return Envelope(message="Power bank", data=await bank_detail(session, bank_id))


@router.patch(
    "/powerbanks/{bank_id}",
    response_model=Envelope[PowerBankDetail],
    summary="Set a power bank's operator status (available, maintenance, retired, lost, found) with a reason",
    description=(
        "Audited in the same transaction (`GET /api/admin/audit-log?action=power_bank.status`). "
        "A bank out on an open rental is refused (end the rental first); `found` is only for a LOST bank "
        "and makes it AVAILABLE. RETIRED and MAINTENANCE survive device reports; a LOST bank that a cabinet "
        "reports in a slot becomes AVAILABLE. Setting the status it already has answers 200 and is audited "
        "as `unchanged`."
    ),
    responses=errors(
        (404, "NOT_FOUND", "No such power bank"),
        (
            409,
            "BANK_ON_RENTAL",
            "BANK_ON_RENTAL: the bank is out on an open rental; BANK_NOT_LOST: `found` "
            "for a bank that is not LOST",
        ),
    ),
)
async def update_power_bank_status(
    bank_id: uuid.UUID, body: PowerBankStatusUpdate, staff: StaffUser, session: DbSession
) -> Envelope[PowerBankDetail]:
    await set_operator_status(session, bank_id, body, staff)
    return Envelope(message="Power bank status updated", data=await bank_detail(session, bank_id))


@router.get(
    "/powerbank-models",
    response_model=Envelope[list[PowerBankModelView]],
    summary="Serial-prefix table: which model and capacity a new bank's serial implies",
)
async def list_power_bank_models(_staff: StaffUser, session: DbSession) -> Envelope[list[PowerBankModelView]]:
    rows = await PowerBankRepository(session).list_models()
    return Envelope(
        message="Power bank models", data=[PowerBankModelView.model_validate(row) for row in rows]
    )


@router.post(
    "/powerbank-models",
    response_model=Envelope[PowerBankModelView],
    status_code=201,
    summary="Map a serial prefix to a model and capacity (used for banks seen for the first time; audited)",
    responses=errors((409, "PREFIX_TAKEN", "The prefix is mapped already")),
)
async def create_power_bank_model(
    body: PowerBankModelCreate, staff: StaffUser, session: DbSession, request: Request
) -> Envelope[PowerBankModelView]:
    row = await create_model(session, request.app.state.model_catalog, body, staff)
    return Envelope(message="Power bank model created", data=PowerBankModelView.model_validate(row))
