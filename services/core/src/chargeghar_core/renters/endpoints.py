"""Renter sign-up, login, token refresh and profile; admin account status."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask

from chargeghar_core.auth.dependencies import StaffUser, get_token_service
from chargeghar_core.auth.service import RefreshTokenReused
from chargeghar_core.auth.throttling import request_address, throttled_login
from chargeghar_core.kit.db import DbSession
from chargeghar_core.kit.errors import error_response
from chargeghar_core.kit.openapi import errors
from chargeghar_core.kit.schemas import Envelope, Page, PageNumber
from chargeghar_core.notifications.runtime import otp_runtime
from chargeghar_core.renters.dependencies import CurrentRenter
from chargeghar_core.renters.otp import InvalidLoginCode, OtpLogin
from chargeghar_core.renters.repository import RenterRepository
from chargeghar_core.renters.schemas import (
    DeviceOut,
    OtpRequest,
    OtpRequested,
    OtpSession,
    OtpVerify,
    PreferencesOut,
    PreferencesUpdate,
    ProfileUpdate,
    PushTokenRequest,
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
    responses=errors(
        (401, "UNAUTHORIZED", "Wrong login or password, or the account is not active"),
        (429, "LOGIN_THROTTLED", "Too many failed logins for this account or from this address"),
    ),
)
async def login(body: RenterLoginRequest, request: Request, session: DbSession) -> Envelope[RenterSession]:
    service = _service(request, session)
    user, profile, pair = await throttled_login(
        request, "renter", body.login, lambda: service.login(login=body.login, password=body.password)
    )
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
    summary="Change a renter account's status (with a reason; audited)",
    responses=errors((404, "RENTER_NOT_FOUND", "No renter with this id")),
)
async def set_status(
    user_id: uuid.UUID, body: StatusUpdate, request: Request, session: DbSession, staff: StaffUser
) -> Envelope[RenterOut]:
    user, profile = await _service(request, session).set_status(
        user_id, body.status, body.reason, actor=staff
    )
    return Envelope(message="Status updated", data=RenterOut.of(user, profile))


# ================================================================== login by one-time code


def _otp(request: Request, session: DbSession) -> OtpLogin:
    runtime = otp_runtime(request.app)
    return OtpLogin(_service(request, session), runtime.settings, runtime.keys, runtime.limiter)


def _client(request: Request) -> str:
    return request_address(request) or "unknown"


@router.post(
    "/api/renters/otp/request",
    status_code=202,
    response_model=Envelope[OtpRequested],
    summary="Send a one-time login code by SMS or e-mail",
    description=(
        "Give a phone number (the code goes by SMS) or an e-mail address. The answer is the same whether "
        "an account exists or not; the first verified login creates the account. Codes live 5 minutes; "
        "asking again retires the previous code."
    ),
    responses=errors(
        (400, "VALIDATION_ERROR", "Not a phone number or e-mail address"),
        (429, "RATE_LIMITED", "Too many codes for this destination or from this client; see Retry-After"),
    ),
)
async def request_login_code(body: OtpRequest, request: Request, session: DbSession) -> JSONResponse:
    sent = await _otp(request, session).request_code(
        body.destination, language=body.language, client=_client(request)
    )
    data = OtpRequested(
        destination=sent.destination, channel=sent.channel.value, expires_in_s=sent.expires_in_s
    )
    envelope: Envelope[OtpRequested] = Envelope(
        message="If the destination can receive codes, a code is on its way", data=data
    )
    # The outbox row commits with this request; wake the worker once the answer has gone.
    return JSONResponse(
        envelope.model_dump(mode="json"),
        status_code=202,
        background=BackgroundTask(otp_runtime(request.app).wake),
    )


@router.post(
    "/api/renters/otp/verify",
    response_model=Envelope[OtpSession],
    summary="Log in (or sign up) with the one-time code",
    responses=errors(
        (400, "VALIDATION_ERROR", "Malformed destination or code"),
        (401, "INVALID_CODE", "Wrong, expired or already used code, or the account may not log in"),
        (429, "RATE_LIMITED", "Too many code checks from this client; see Retry-After"),
    ),
)
async def verify_login_code(
    body: OtpVerify, request: Request, session: DbSession
) -> Envelope[OtpSession] | JSONResponse:
    try:
        user, profile, pair, created = await _otp(request, session).verify(
            body.destination,
            body.code,
            client=_client(request),
            device_name=body.device_name,
            platform=body.platform,
        )
    except InvalidLoginCode as exc:
        # Returned, not raised: the counted attempt must be committed with this answer.
        return error_response(exc)
    base = RenterSession.of(user, profile, pair)
    return Envelope(
        message="Account created" if created else "Logged in",
        data=OtpSession(**base.model_dump(), new_account=created),
    )


# ================================================================== sessions and devices


@router.post(
    "/api/renters/logout",
    response_model=Envelope[None],
    summary="Log out this device (its refresh tokens stop working)",
    description="The access token stays valid until it expires (at most its lifetime); discard it.",
)
async def logout(request: Request, session: DbSession, renter: CurrentRenter) -> Envelope[None]:
    await _service(request, session).logout(renter)
    return Envelope(message="Logged out", data=None)


@router.get(
    "/api/renters/me/devices",
    response_model=Envelope[list[DeviceOut]],
    summary="Devices logged in to my account",
)
async def devices(request: Request, session: DbSession, renter: CurrentRenter) -> Envelope[list[DeviceOut]]:
    rows = await _service(request, session).devices(renter.user_id)
    return Envelope(data=[DeviceOut.of(row, renter.family) for row in rows])


@router.post(
    "/api/renters/me/devices",
    response_model=Envelope[DeviceOut],
    summary="Register this device's push token (FCM) for notifications",
    responses=errors(
        (401, "UNAUTHORIZED", "Missing or expired token, or this device was logged out"),
    ),
)
async def register_device(
    body: PushTokenRequest, request: Request, session: DbSession, renter: CurrentRenter
) -> Envelope[DeviceOut]:
    row = await _service(request, session).register_push_token(
        renter, push_token=body.push_token, device_name=body.device_name, platform=body.platform
    )
    return Envelope(message="Device registered", data=DeviceOut.of(row, renter.family))


@router.delete(
    "/api/renters/me/devices/{device_id}",
    response_model=Envelope[None],
    summary="Log out one of my devices",
    responses=errors((404, "DEVICE_NOT_FOUND", "No logged-in device with this id on this account")),
)
async def revoke_device(
    device_id: uuid.UUID, request: Request, session: DbSession, renter: CurrentRenter
) -> Envelope[None]:
    await _service(request, session).revoke_device(renter.user_id, device_id)
    return Envelope(message="Device logged out", data=None)


@router.get(
    "/api/renters/me/notifications",
    response_model=Envelope[PreferencesOut],
    summary="My notification language and channels",
    responses=errors((404, "RENTER_NOT_FOUND", "The token's account no longer exists")),
)
async def notification_preferences(
    request: Request, session: DbSession, renter: CurrentRenter
) -> Envelope[PreferencesOut]:
    prefs = await _service(request, session).preferences(renter.user_id)
    return Envelope(data=PreferencesOut.of(prefs))


@router.put(
    "/api/renters/me/notifications",
    response_model=Envelope[PreferencesOut],
    summary="Choose my notification language and channels",
    description="Security notices (login codes, account changes) are sent whatever the channels say.",
    responses=errors((404, "RENTER_NOT_FOUND", "The token's account no longer exists")),
)
async def update_notification_preferences(
    body: PreferencesUpdate, request: Request, session: DbSession, renter: CurrentRenter
) -> Envelope[PreferencesOut]:
    prefs = await _service(request, session).update_preferences(
        renter.user_id, language=body.language, push=body.push, sms=body.sms, email=body.email
    )
    return Envelope(message="Preferences saved", data=PreferencesOut.of(prefs))


@router.delete(
    "/api/renters/me",
    response_model=Envelope[None],
    summary="Delete my account",
    description=(
        "Personal data (e-mail, phone, name, devices) is erased; rentals, payments and the wallet ledger "
        "are kept as the law requires, under an id that no longer names anybody. A positive wallet balance "
        "is not paid out by this call."
    ),
    responses=errors(
        (404, "RENTER_NOT_FOUND", "The token's account no longer exists"),
        (409, "RENTAL_OPEN", "RENTAL_OPEN (a rental is still open) or DUES_OUTSTANDING (money is owed)"),
    ),
)
async def delete_me(request: Request, session: DbSession, renter: CurrentRenter) -> Envelope[None]:
    service = _service(request, session)
    user, profile = await service.profile(renter.user_id)
    keys = otp_runtime(request.app).keys
    hashes = [keys.destination_hash(user.email)] + (
        [keys.destination_hash(profile.phone)] if profile.phone else []
    )
    await service.delete_account(renter.user_id, destination_hashes=hashes)
    return Envelope(message="Account deleted", data=None)
