"""Renter sign-up, login, token refresh and profile; admin account status."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from chargeghar_core.auth.dependencies import StaffUser, get_token_service
from chargeghar_core.auth.service import RefreshTokenReused
from chargeghar_core.kit.db import DbSession
from chargeghar_core.kit.errors import error_response
from chargeghar_core.kit.openapi import errors
from chargeghar_core.kit.schemas import Envelope, Page, PageNumber
from chargeghar_core.renters.dependencies import CurrentRenter
from chargeghar_core.renters.repository import RenterRepository
from chargeghar_core.renters.schemas import (
    ProfileUpdate,
    RegisterRequest,
    RenterLoginRequest,
    RenterOut,
    RenterRefreshRequest,
    RenterSession,
    StatusUpdate,
)
from chargeghar_core.renters.service import RenterService

router = APIRouter(tags=["renters"])
admin_router = APIRouter(tags=["renters admin"])


def _service(request: Request, session: DbSession) -> RenterService:
    return RenterService(RenterRepository(session), get_token_service(request))


@router.post(
    "/api/renters/register",
    status_code=201,
    response_model=Envelope[RenterSession],
    summary="Create a renter account and log it in",
    description="Give an e-mail address, a phone number or both; the answer carries the first token pair.",
    responses=errors(
        (400, "VALIDATION_ERROR", "Neither e-mail nor phone, an invalid one, or a password too short"),
        (409, "EMAIL_TAKEN", "EMAIL_TAKEN or PHONE_TAKEN: an account with this e-mail or phone exists"),
    ),
)
async def register(body: RegisterRequest, request: Request, session: DbSession) -> Envelope[RenterSession]:
    user, profile, pair = await _service(request, session).register(
        email=body.email, phone=body.phone, password=body.password, display_name=body.display_name
    )
    return Envelope(message="Account created", data=RenterSession.of(user, profile, pair))


@router.post(
    "/api/renters/login",
    response_model=Envelope[RenterSession],
    summary="Log a renter in with e-mail or phone and password",
    responses=errors((401, "UNAUTHORIZED", "Wrong login or password, or the account is not active")),
)
async def login(body: RenterLoginRequest, request: Request, session: DbSession) -> Envelope[RenterSession]:
    user, profile, pair = await _service(request, session).login(login=body.login, password=body.password)
    return Envelope(message="Logged in", data=RenterSession.of(user, profile, pair))


@router.post(
    "/api/renters/refresh",
    response_model=Envelope[RenterSession],
    summary="Exchange a renter's refresh token for a new pair (the old one is spent)",
    responses=errors((401, "UNAUTHORIZED", "Invalid, expired, revoked or already used refresh token")),
)
async def refresh(
    body: RenterRefreshRequest, request: Request, session: DbSession
) -> Envelope[RenterSession] | JSONResponse:
    try:
        user, profile, pair = await _service(request, session).refresh(body.refresh)
    except RefreshTokenReused as exc:
        # Returned, not raised: the revocation must be committed with this answer.
        return error_response(exc)
    return Envelope(message="Token refreshed", data=RenterSession.of(user, profile, pair))


@router.get(
    "/api/renters/me",
    response_model=Envelope[RenterOut],
    summary="My renter profile",
    responses=errors((404, "RENTER_NOT_FOUND", "The token's account no longer exists")),
)
async def me(request: Request, session: DbSession, renter: CurrentRenter) -> Envelope[RenterOut]:
    user, profile = await _service(request, session).profile(renter.user_id)
    return Envelope(data=RenterOut.of(user, profile))


@router.patch(
    "/api/renters/me",
    response_model=Envelope[RenterOut],
    summary="Change my display name or phone number",
    responses=errors(
        (404, "RENTER_NOT_FOUND", "The token's account no longer exists"),
        (409, "PHONE_TAKEN", "Another account has this phone number"),
    ),
)
async def update_me(
    body: ProfileUpdate, request: Request, session: DbSession, renter: CurrentRenter
) -> Envelope[RenterOut]:
    user, profile = await _service(request, session).update_profile(
        renter.user_id, display_name=body.display_name, phone=body.phone
    )
    return Envelope(message="Profile updated", data=RenterOut.of(user, profile))


@admin_router.get(
    "/api/admin/renters",
    response_model=Envelope[Page[RenterOut]],
    summary="Renter accounts, searchable by e-mail, phone or name",
)
async def renters(
    session: DbSession,
    _staff: StaffUser,
    search: Annotated[str | None, Query(max_length=100)] = None,
    page: PageNumber = 1,
    page_size: Annotated[int, Query(ge=1, le=100)] = 50,
) -> Envelope[Page[RenterOut]]:
    rows, total = await RenterRepository(session).search(
        search=search, limit=page_size, offset=(page - 1) * page_size
    )
    return Envelope(
        data=Page(items=[RenterOut.of(u, p) for u, p in rows], total=total, page=page, page_size=page_size)
    )


@admin_router.put(
    "/api/admin/renters/{user_id}/status",
    response_model=Envelope[RenterOut],
    summary="Change a renter account's status (with a reason)",
    responses=errors((404, "RENTER_NOT_FOUND", "No renter with this id")),
)
async def set_status(
    user_id: uuid.UUID, body: StatusUpdate, request: Request, session: DbSession, _staff: StaffUser
) -> Envelope[RenterOut]:
    user, profile = await _service(request, session).set_status(user_id, body.status, body.reason)
    return Envelope(message="Status updated", data=RenterOut.of(user, profile))
