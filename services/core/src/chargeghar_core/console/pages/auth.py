"""Login and logout: the same account rules and throttle as ``POST /api/admin/login``; the console adds a
server-side session (cookie ``cg_console``) for admin, staff and viewer accounts only."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from chargeghar_core.auth.dependencies import get_token_service
from chargeghar_core.auth.models import User
from chargeghar_core.auth.repository import UserRepository
from chargeghar_core.auth.service import AuthService
from chargeghar_core.auth.throttling import throttled_login
from chargeghar_core.console.context import CSRF_REFUSED, ConsoleError, safe_next
from chargeghar_core.console.rendering import page_headers, render_template
from chargeghar_core.console.security import (
    CSRF_FIELD,
    LOGIN_COOKIE,
    login_csrf_token,
    login_csrf_valid,
    set_flash,
    submitted_token,
    tokens_match,
)
from chargeghar_core.console.sessions import (
    CONSOLE_ROLES,
    COOKIE_NAME,
    clear_cookie,
    console_settings,
    load_session,
    open_session,
    revoke_session,
    set_cookie,
    token_digest,
)
from chargeghar_core.kit.db import DbSession
from chargeghar_core.kit.errors import RateLimited, Unauthorized

logger = structlog.get_logger(__name__)

router = APIRouter(prefix="/console", include_in_schema=False)

BAD_LOGIN = "Invalid e-mail or password"


def _login_page(
    request: Request, *, next_path: str, email: str = "", error: str | None = None, status_code: int = 200
) -> Response:
    settings = console_settings(request)
    response = HTMLResponse(status_code=status_code, headers=page_headers(settings.map_tile_url))
    context: dict[str, Any] = {
        "request": request,
        "staff": None,
        "console": settings,
        "csrf_field": CSRF_FIELD,
        "csrf_token": login_csrf_token(request, response),
        "next_path": safe_next(next_path),
        "email": email,
        "error": error,
    }
    response.body = response.render(render_template("login.html", context))
    response.headers["content-length"] = str(len(response.body))
    return response


@router.get("")
async def console_root() -> Response:
    return RedirectResponse("/console/", status_code=307)


@router.get("/login")
async def login_form(request: Request, next: str = "/console/") -> Response:
    return _login_page(request, next_path=next)


@router.post("/login")
async def login(request: Request, db: DbSession) -> Response:
    form = await request.form()
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    next_path = safe_next(fields.get("next"))
    if not login_csrf_valid(request, fields.get(CSRF_FIELD)):
        logger.warning("console_csrf_refused", path=request.url.path)
        raise ConsoleError(403, CSRF_REFUSED)
    email = fields.get("email", "").strip()[:254]
    password = fields.get("password", "")[:1024]
    if not email or not password:
        return _login_page(
            request, next_path=next_path, email=email, error="Enter e-mail and password", status_code=400
        )
    service = AuthService(UserRepository(db), get_token_service(request))

    async def attempt() -> User:
        user, _pair = await service.login(email, password)
        if user.role_enum not in CONSOLE_ROLES:
            # Service accounts log in to the API only; same answer as a bad password.
            raise Unauthorized(BAD_LOGIN)
        return user

    try:
        user = await throttled_login(request, "staff", email, attempt)
    except Unauthorized:
        return _login_page(request, next_path=next_path, email=email, error=BAD_LOGIN, status_code=401)
    except RateLimited as exc:
        page = _login_page(request, next_path=next_path, email=email, error=exc.message, status_code=429)
        page.headers.update(exc.headers or {})
        return page
    token = await open_session(
        db, user, console_settings(request), user_agent=request.headers.get("user-agent", "")
    )
    logger.info("console_login", user_id=str(user.id), role=user.role)
    response = RedirectResponse(next_path, status_code=303)
    set_cookie(request, response, COOKIE_NAME, token, None)
    clear_cookie(request, response, LOGIN_COOKIE)
    return response


@router.post("/logout")
async def logout(request: Request, db: DbSession) -> Response:
    """Ends the session server-side. Needs the session's CSRF token (a forged logout is refused too)."""
    token = request.cookies.get(COOKIE_NAME)
    staff = await load_session(db, token, console_settings(request))
    response = RedirectResponse("/console/login", status_code=303)
    if staff is None or token is None:
        clear_cookie(request, response, COOKIE_NAME)
        return response
    if not tokens_match(staff.csrf_token, await submitted_token(request)):
        logger.warning("console_csrf_refused", path=request.url.path, user_id=str(staff.user_id))
        raise ConsoleError(403, CSRF_REFUSED)
    await revoke_session(db, token_digest(token))
    logger.info("console_logout", user_id=str(staff.user_id))
    clear_cookie(request, response, COOKIE_NAME)
    set_flash(request, response, "ok", "Logged out")
    return response
