"""Staff login and token refresh (contract.md §1)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from chargeghar_core.auth.dependencies import get_token_service
from chargeghar_core.auth.models import User
from chargeghar_core.auth.repository import UserRepository
from chargeghar_core.auth.schemas import LoginRequest, RefreshRequest, TokenData, TokenEnvelope, UserSummary
from chargeghar_core.auth.service import AuthService, RefreshTokenReused
from chargeghar_core.auth.throttling import throttled_login
from chargeghar_core.auth.tokens import TokenPair
from chargeghar_core.kit.db import DbSession
from chargeghar_core.kit.errors import BadRequest, ValidationFailed, error_response, validation_details
from chargeghar_core.kit.openapi import errors

router = APIRouter(tags=["auth"])

_LOGIN_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": LoginRequest.model_json_schema()},
            "application/x-www-form-urlencoded": {"schema": LoginRequest.model_json_schema()},
            "multipart/form-data": {"schema": LoginRequest.model_json_schema()},
        },
    }
}


def _envelope(message: str, user: User, pair: TokenPair) -> TokenEnvelope:
    return TokenEnvelope(
        message=message,
        data=TokenData(
            user_id=user.id,
            access_token=pair.access_token,
            refresh_token=pair.refresh_token,
            user=UserSummary(id=user.id, email=user.email, is_staff=user.role_enum.is_staff, role=user.role),
        ),
    )


async def _read_login(request: Request) -> LoginRequest:
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    raw: Any
    if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.form()
        raw = {key: value for key, value in form.items() if isinstance(value, str)}
    else:
        try:
            raw = await request.json()
        except ValueError as exc:
            raise BadRequest("Body must be JSON or form data", code="INVALID_JSON") from exc
    try:
        return LoginRequest.model_validate(raw)
    except ValidationError as exc:
        raise ValidationFailed(details=validation_details(exc.errors())) from exc


@router.post(
    "/api/admin/login",
    response_model=TokenEnvelope,
    summary="Log in a staff or service account",
    description=(
        "Only active staff accounts (admin, staff) and the ingest's `service` account may log in here; "
        "renters use `POST /api/renters/login`. The body is JSON, form-encoded or multipart (the legacy "
        "admin clients send forms). Returns an access token (bearer, 60 min) and a refresh token."
    ),
    openapi_extra=_LOGIN_BODY_DOC,
    responses=errors(
        (
            400,
            "VALIDATION_ERROR",
            "INVALID_JSON (neither JSON nor form data) or VALIDATION_ERROR (field paths)",
        ),
        (401, "UNAUTHORIZED", "Bad e-mail/password, inactive or non-staff account"),
        (
            429,
            "LOGIN_THROTTLED",
            "Too many failed logins for this account or from this address; retry after `Retry-After`",
        ),
    ),
)
async def login(request: Request, session: DbSession) -> TokenEnvelope:
    body = await _read_login(request)
    service = AuthService(UserRepository(session), get_token_service(request))
    user, pair = await throttled_login(
        request, "staff", body.email, lambda: service.login(body.email, body.password)
    )
    return _envelope("Admin login successful", user, pair)


@router.post(
    "/api/auth/refresh",
    response_model=TokenEnvelope,
    summary="Exchange a refresh token for a new pair (the old one is spent)",
    description=(
        "Refresh tokens rotate: each one works once. Presenting a used one again revokes the account's "
        "tokens (a stolen token was replayed) and answers 401."
    ),
    responses=errors((401, "UNAUTHORIZED", "Invalid, expired, revoked or already used refresh token")),
)
async def refresh(request: Request, body: RefreshRequest, session: DbSession) -> TokenEnvelope | JSONResponse:
    service = AuthService(UserRepository(session), get_token_service(request))
    try:
        user, pair = await service.refresh(body.refresh)
    except RefreshTokenReused as exc:
        # Returned, not raised: the revocation written by the service must be committed with this answer.
        return error_response(exc)
    return _envelope("Token refreshed", user, pair)
