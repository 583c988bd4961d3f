"""Renter and admin routes of the rentals domain (thin: the rules live in service.py / popup.py)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from chargeghar_core.auth.dependencies import StaffUser
from chargeghar_core.kit.db import DbSession
from chargeghar_core.kit.openapi import errors
from chargeghar_core.kit.schemas import Envelope, Page, PageNumber
from chargeghar_core.rentals.admin import RentalAdministration
from chargeghar_core.rentals.errors import PopupFailed, RentalNotFound, StationUnavailable
from chargeghar_core.rentals.models import Rental, RentalStatus
from chargeghar_core.rentals.popup import RentalStarter
from chargeghar_core.rentals.repository import RentalRepository
from chargeghar_core.rentals.runtime import RentalRuntime
from chargeghar_core.rentals.schemas import (
    RENTAL_EXAMPLE,
    AvailableBank,
    DuesPaid,
    ForceCompleteRequest,
    ReceiptLine,
    ReceiptOut,
    RentalOut,
    RentalOverrideRequest,
    StartRentalRequest,
    StationAvailability,
    WaiveDueRequest,
    WalletRefundRequest,
)
from chargeghar_core.rentals.service import RentalService, StartRequest
from chargeghar_core.renters.dependencies import CurrentRenter

router = APIRouter(tags=["rentals"])
admin_router = APIRouter(tags=["rentals admin"])

PageSize = Annotated[int, Query(ge=1, le=100)]


def runtime_of(request: Request) -> RentalRuntime:
    runtime: RentalRuntime = request.app.state.rentals
    return runtime


def _service(request: Request, session: DbSession) -> RentalService:
    runtime = runtime_of(request)
    return RentalService(session, runtime.settings, currency=runtime.payment_settings.currency)


async def _own_rental(session: DbSession, user_id: uuid.UUID, rental_id: uuid.UUID) -> Rental:
    rental = await RentalRepository(session).get(rental_id)
    if rental is None or rental.user_id != user_id:
        raise RentalNotFound()
    return rental


@router.post(
    "/api/rentals",
    status_code=201,
    response_model=Envelope[RentalOut],
    summary="Start a rental: reserve a bank and eject it",
    description=(
        "Reserves the best charged bank (or `power_bank_serial`), charges the package (prepaid) and asks the "
        "station to eject it. 201: the bank is out, the rental is ACTIVE. 202: the station has not answered "
        "yet (PENDING_POPUP); poll `GET /api/rentals/{rental_id}`. If the eject fails the rental is "
        "cancelled, the charge refunded, and the answer is 409 POPUP_FAILED with the rental in `details`."
    ),
    responses={
        201: {
            "description": "The bank was ejected; the rental is ACTIVE",
            "content": {
                "application/json": {
                    "example": {"success": True, "message": "Rental started", "data": RENTAL_EXAMPLE}
                }
            },
        },
        202: {
            "model": Envelope[RentalOut],
            "description": "Eject requested, the station has not answered yet; poll GET /api/rentals/{id}",
        },
        **errors(
            (
                402,
                "INSUFFICIENT_FUNDS",
                "INSUFFICIENT_FUNDS (balance below the package price) or UNPAID_DUES",
            ),
            (403, "ACCOUNT_NOT_ACTIVE", "Not a renter token (FORBIDDEN) or the account is suspended"),
            (404, "STATION_NOT_FOUND", "No deployed station with this id or serial"),
            (
                409,
                "NO_POWER_BANK_AVAILABLE",
                "RENTAL_ALREADY_OPEN, STATION_UNAVAILABLE, PACKAGE_UNAVAILABLE, NO_POWER_BANK_AVAILABLE, "
                "POWER_BANK_UNAVAILABLE, or POPUP_FAILED (the eject failed; refunded)",
            ),
            # No request-scoped session here (the starter commits in steps), so declared by hand.
            (503, "DATABASE_UNAVAILABLE", "The database is unreachable; retry after `Retry-After`"),
        ),
    },
)
async def start_rental(request: Request, body: StartRentalRequest, renter: CurrentRenter) -> JSONResponse:
    starter = RentalStarter(runtime_of(request))
    rental = await starter.start(
        renter.user_id,
        StartRequest(body.station_id, body.station_serial, body.package_id, body.power_bank_serial),
    )
    data = RentalOut.of(rental)
    if rental.status == RentalStatus.CANCELLED.value:
        raise PopupFailed(details={"rental": data.model_dump(mode="json")})
    if rental.status == RentalStatus.PENDING_POPUP.value:
        envelope: Envelope[RentalOut] = Envelope(
            message="Eject requested; waiting for the station", data=data
        )
        return JSONResponse(envelope.model_dump(mode="json"), status_code=202)
    return JSONResponse(
        Envelope(message="Rental started", data=data).model_dump(mode="json"), status_code=201
    )


@router.get(
    "/api/rentals/availability/{station_serial}",
    response_model=Envelope[StationAvailability],
    summary="Banks a renter could take at this station right now (live, same rules as a start)",
    responses=errors((404, "STATION_NOT_FOUND", "No deployed station with this serial")),
)
async def availability(
    station_serial: str, request: Request, session: DbSession
) -> Envelope[StationAvailability]:
    repository = RentalRepository(session)
    station = await repository.station_by_serial(station_serial)
    if station is None or not station.is_deployed:
        raise StationUnavailable("Station not found", status_code=404, code="STATION_NOT_FOUND")
    banks = await repository.rentable_banks(
        station.id,
        min_battery=runtime_of(request).settings.min_battery_level,
        serial=None,
        limit=station.total_slots or 64,
        lock=False,
    )
    open_for_rent = station.status == "ONLINE" and not station.is_maintenance
    return Envelope(
        data=StationAvailability(
            station_id=station.id,
            station_serial=station.serial_number,
            station_status=station.status,
            rentable_now=open_for_rent and bool(banks),
            rentable_banks=len(banks) if open_for_rent else 0,
            banks=[
                AvailableBank(
                    power_bank_serial=b.serial_number,
                    slot_number=b.slot_number,
                    battery_level=b.battery_level,
                )
                for b in banks
            ]
            if open_for_rent
            else [],
        )
    )


@router.get(
    "/api/rentals/active",
    response_model=Envelope[RentalOut | None],
    summary="My open rental, if any (`data` is null otherwise)",
)
async def active_rental(session: DbSession, renter: CurrentRenter) -> Envelope[RentalOut | None]:
    rental = await RentalRepository(session).open_for_user(renter.user_id)
    return Envelope(data=RentalOut.of(rental) if rental else None)


@router.get("/api/rentals", response_model=Envelope[Page[RentalOut]], summary="My rentals, newest first")
async def my_rentals(
    session: DbSession, renter: CurrentRenter, page: PageNumber = 1, page_size: PageSize = 20
) -> Envelope[Page[RentalOut]]:
    rows, total = await RentalRepository(session).history(
        renter.user_id, status=None, limit=page_size, offset=(page - 1) * page_size
    )
    return Envelope(
        data=Page(items=[RentalOut.of(r) for r in rows], total=total, page=page, page_size=page_size)
    )


@router.post(
    "/api/rentals/dues/pay",
    response_model=Envelope[DuesPaid],
    summary="Pay what I owe on earlier rentals from my wallet (as much as the balance covers)",
)
async def pay_dues(request: Request, session: DbSession, renter: CurrentRenter) -> Envelope[DuesPaid]:
    paid, remaining = await _service(request, session).pay_dues(renter.user_id)
    return Envelope(data=DuesPaid(paid_paisa=paid, still_due_paisa=remaining))


@router.get(
    "/api/rentals/{rental_id}",
    response_model=Envelope[RentalOut],
    summary="One of my rentals",
    responses=errors((404, "RENTAL_NOT_FOUND", "No rental with this id among mine")),
)
async def my_rental(rental_id: uuid.UUID, session: DbSession, renter: CurrentRenter) -> Envelope[RentalOut]:
    return Envelope(data=RentalOut.of(await _own_rental(session, renter.user_id, rental_id)))


@router.get(
    "/api/rentals/{rental_id}/receipt",
    response_model=Envelope[ReceiptOut],
    summary="Receipt of one of my rentals: package, extensions, late fee, paid, refunded, due",
    responses=errors((404, "RENTAL_NOT_FOUND", "No rental with this id among mine")),
)
async def receipt(rental_id: uuid.UUID, session: DbSession, renter: CurrentRenter) -> Envelope[ReceiptOut]:
    rental = await _own_rental(session, renter.user_id, rental_id)
    extensions = await RentalRepository(session).extensions(rental.id)
    extension_total = sum(extension.price_paisa for extension in extensions)
    lines = [ReceiptLine(label="Rental", amount_paisa=rental.usage_fee_paisa - extension_total)]
    lines += [
        ReceiptLine(label=f"Extension {n}", amount_paisa=e.price_paisa) for n, e in enumerate(extensions, 1)
    ]
    if rental.late_fee_paisa:
        lines.append(ReceiptLine(label="Late fee", amount_paisa=rental.late_fee_paisa))
    total = sum(line.amount_paisa for line in lines)
    return Envelope(
        data=ReceiptOut(
            rental=RentalOut.of(rental),
            lines=lines,
            total_paisa=total,
            paid_paisa=rental.charged_paisa,
            refunded_paisa=rental.refunded_paisa,
            amount_due_paisa=rental.amount_due_paisa,
        )
    )


@router.post(
    "/api/rentals/{rental_id}/extend",
    response_model=Envelope[RentalOut],
    summary="Extend my active rental by one more package period (charged now)",
    responses=errors(
        (402, "INSUFFICIENT_FUNDS", "The wallet does not cover the extension"),
        (404, "RENTAL_NOT_FOUND", "No rental with this id among mine"),
        (409, "RENTAL_STATE_CONFLICT", "Not active, already due, or EXTENSION_LIMIT_REACHED"),
    ),
)
async def extend(
    rental_id: uuid.UUID, request: Request, session: DbSession, renter: CurrentRenter
) -> Envelope[RentalOut]:
    rental = await _service(request, session).extend(renter.user_id, rental_id)
    return Envelope(message="Rental extended", data=RentalOut.of(rental))


@router.post(
    "/api/rentals/{rental_id}/cancel",
    response_model=Envelope[RentalOut],
    summary="Cancel my rental for free within the cancellation window (the bank must be back)",
    responses=errors(
        (404, "RENTAL_NOT_FOUND", "No rental with this id among mine"),
        (409, "CANCEL_WINDOW_PASSED", "CANCEL_WINDOW_PASSED, RENTAL_PENDING or not active"),
    ),
)
async def cancel(
    rental_id: uuid.UUID, request: Request, session: DbSession, renter: CurrentRenter
) -> Envelope[RentalOut]:
    rental = await _service(request, session).cancel(renter.user_id, rental_id)
    return Envelope(message="Rental cancelled", data=RentalOut.of(rental))


@admin_router.get(
    "/api/admin/rentals",
    response_model=Envelope[Page[RentalOut]],
    summary="All rentals, newest first; filter by status or renter",
)
async def admin_rentals(
    session: DbSession,
    _staff: StaffUser,
    status: Annotated[str | None, Query(max_length=16)] = None,
    user_id: uuid.UUID | None = None,
    page: PageNumber = 1,
    page_size: PageSize = 50,
) -> Envelope[Page[RentalOut]]:
    rows, total = await RentalRepository(session).history(
        user_id, status=status, limit=page_size, offset=(page - 1) * page_size
    )
    return Envelope(
        data=Page(items=[RentalOut.of(r) for r in rows], total=total, page=page, page_size=page_size)
    )


@admin_router.post(
    "/api/admin/rentals/{rental_id}/force-complete",
    response_model=Envelope[RentalOut],
    summary="End an open rental now (audited)",
    description="For a bank lost or returned unseen; the operator and the reason are kept with the rental.",
    responses=errors(
        (404, "RENTAL_NOT_FOUND", "No such rental"),
        (409, "RENTAL_STATE_CONFLICT", "The rental is closed already"),
    ),
)
async def force_complete(
    rental_id: uuid.UUID, body: ForceCompleteRequest, request: Request, session: DbSession, staff: StaffUser
) -> Envelope[RentalOut]:
    rental = await _service(request, session).force_complete(
        rental_id, actor_id=staff.user_id, reason=body.reason
    )
    return Envelope(message="Rental ended by an operator", data=RentalOut.of(rental))


def _administration(request: Request, session: DbSession) -> RentalAdministration:
    return RentalAdministration(session, currency=runtime_of(request).payment_settings.currency)


_CORRECTION_ERRORS = (
    (404, "RENTAL_NOT_FOUND", "No such rental"),
    (409, "RENTAL_STATE_CONFLICT", "Only a completed rental can be corrected"),
)


@admin_router.post(
    "/api/admin/rentals/{rental_id}/override",
    response_model=Envelope[RentalOut],
    summary="Correct a completed rental's end time or total, with a reason (audited)",
    description="A lower total first cancels dues, then refunds the rest to the wallet (REFUND ledger row); "
    "a higher one adds to the dues. The renter sees the new amounts with the rental and in the ledger.",
    responses=errors(
        (400, "AMOUNT_OUT_OF_RANGE", "An end time before the start or in the future"),
        *_CORRECTION_ERRORS,
    ),
)
async def override_rental(
    rental_id: uuid.UUID, body: RentalOverrideRequest, request: Request, session: DbSession, staff: StaffUser
) -> Envelope[RentalOut]:
    administration = _administration(request, session)
    if body.ended_at is not None:
        rental = await administration.override_end(
            rental_id, ended_at=body.ended_at, reason=body.reason, actor=staff
        )
    else:
        assert body.total_paisa is not None
        rental = await administration.override_total(
            rental_id, total_paisa=body.total_paisa, reason=body.reason, actor=staff
        )
    return Envelope(message="Rental corrected", data=RentalOut.of(rental))


@admin_router.post(
    "/api/admin/rentals/{rental_id}/waive-due",
    response_model=Envelope[RentalOut],
    summary="Waive what a completed rental still owes, whole or part (audited)",
    responses=errors(
        (400, "AMOUNT_OUT_OF_RANGE", "More than is due"),
        (404, "RENTAL_NOT_FOUND", "No such rental"),
        (409, "NO_DUES", "NO_DUES, or RENTAL_STATE_CONFLICT: not a completed rental"),
    ),
)
async def waive_due(
    rental_id: uuid.UUID, body: WaiveDueRequest, request: Request, session: DbSession, staff: StaffUser
) -> Envelope[RentalOut]:
    rental = await _administration(request, session).waive_due(
        rental_id, amount_paisa=body.amount_paisa, reason=body.reason, actor=staff
    )
    return Envelope(message="Due waived", data=RentalOut.of(rental))


@admin_router.post(
    "/api/admin/rentals/{rental_id}/refund",
    response_model=Envelope[RentalOut],
    summary="Refund a completed rental to the renter's wallet, whole or part, once (audited)",
    responses=errors(
        (400, "AMOUNT_OUT_OF_RANGE", "More than was collected and not yet refunded"),
        (404, "RENTAL_NOT_FOUND", "No such rental"),
        (409, "RENTAL_ALREADY_REFUNDED", "RENTAL_ALREADY_REFUNDED, or RENTAL_STATE_CONFLICT"),
    ),
)
async def refund_rental(
    rental_id: uuid.UUID, body: WalletRefundRequest, request: Request, session: DbSession, staff: StaffUser
) -> Envelope[RentalOut]:
    rental = await _administration(request, session).refund_to_wallet(
        rental_id, amount_paisa=body.amount_paisa, reason=body.reason, actor=staff
    )
    return Envelope(message="Refunded to the wallet", data=RentalOut.of(rental))
