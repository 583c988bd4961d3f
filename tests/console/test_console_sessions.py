"""Console login, sessions, CSRF and roles, through the real app (httpx against ASGI)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import httpx
from chargeghar_core.auth.models import Role, User
from chargeghar_core.console.models import ConsoleSession
from chargeghar_core.console.sessions import token_digest
from console_support import ConsoleUser, add_staff, browser, csrf_of, log_in
from fastapi import FastAPI
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

Login = Callable[..., Awaitable[ConsoleUser]]

NAV = (
    "dashboard",
    "stations",
    "powerbanks",
    "rentals",
    "renters",
    "money",
    "sync-log",
    "parked",
    "audit",
    "config",
)


async def test_logged_out_pages_redirect_to_login_with_next(console_app: FastAPI) -> None:
    async with browser(console_app) as http:
        response = await http.get("/console/stations?status=ONLINE")
        assert response.status_code == 303
        assert response.headers["location"] == "/console/login?next=/console/stations%3Fstatus%3DONLINE"
        fragment = await http.get("/console/dashboard/panels", headers={"HX-Request": "true"})
        assert fragment.headers["HX-Redirect"].startswith("/console/login")
        login_page = await http.get("/console/login")
        assert login_page.status_code == 200
        assert 'name="email"' in login_page.text and 'name="password"' in login_page.text


async def test_login_sets_a_locked_down_cookie_and_shows_the_layout(
    console_app: FastAPI, session: AsyncSession
) -> None:
    user = await add_staff(session, Role.STAFF)
    async with browser(console_app) as http:
        response = await log_in(http, user.email, next_path="/console/stations")
        assert response.status_code == 303
        assert response.headers["location"] == "/console/stations"
        cookie = next(h for h in response.headers.get_list("set-cookie") if h.startswith("cg_console="))
        flags = {part.strip().lower() for part in cookie.split(";")}
        assert "httponly" in flags and "samesite=lax" in flags and "path=/console" in flags
        # environment "test" over http: not Secure (production or https would be)
        assert "secure" not in flags
        page = await http.get("/console/")
        assert page.status_code == 200
        for key in NAV:
            assert f'data-testid="nav-{key}"' in page.text
        assert user.email in page.text and 'data-testid="current-user"' in page.text
        assert page.headers["cache-control"] == "no-store"
        assert "script-src 'self'" in page.headers["content-security-policy"]
        stored = await session.scalar(select(ConsoleSession).where(ConsoleSession.user_id == user.id))
        assert stored is not None
        # Only the digest is stored: the cookie value is nowhere in the table.
        token = http.cookies.get("cg_console")
        assert (
            token is not None and stored.token_digest == token_digest(token) and stored.token_digest != token
        )


async def test_secure_cookie_in_production_settings_or_over_https(
    console_app: FastAPI, session: AsyncSession
) -> None:
    user = await add_staff(session, Role.ADMIN)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=console_app), base_url="https://core.test"
    ) as http:
        response = await log_in(http, user.email)
        cookie = next(h for h in response.headers.get_list("set-cookie") if h.startswith("cg_console="))
        assert "secure" in {part.strip().lower() for part in cookie.split(";")}


async def test_bad_login_service_and_inactive_accounts_are_refused_alike(
    console_app: FastAPI, session: AsyncSession
) -> None:
    staff = await add_staff(session, Role.STAFF)
    service = await add_staff(session, Role.SERVICE)
    inactive = await add_staff(session, Role.ADMIN, active=False)
    async with browser(console_app) as http:
        for email, password in (
            (staff.email, "wrong-password"),
            ("nobody@console.test", "whatever"),
            (service.email, None),
            (inactive.email, None),
        ):
            response = await log_in(http, email, **({"password": password} if password else {}))
            assert response.status_code == 401, email
            assert 'data-testid="login-error"' in response.text
            assert "Invalid e-mail or password" in response.text
            assert "cg_console=" not in "".join(response.headers.get_list("set-cookie"))
        assert (await http.get("/console/")).status_code == 303


async def test_login_without_its_csrf_token_is_refused(console_app: FastAPI, session: AsyncSession) -> None:
    user = await add_staff(session, Role.ADMIN)
    async with browser(console_app) as http:
        await http.get("/console/login")
        response = await http.post("/console/login", data={"email": user.email, "password": "x"})
        assert response.status_code == 403
        assert "CSRF token missing or invalid" in response.text
        assert response.headers["content-type"].startswith("text/html")


async def test_logout_revokes_the_session_server_side(
    console_login: Login, console_app: FastAPI, session: AsyncSession
) -> None:
    admin = await console_login(Role.ADMIN)
    token = admin.http.cookies.get("cg_console")
    assert token is not None
    refused = await admin.post("/console/logout", csrf="")
    assert refused.status_code == 403
    response = await admin.post("/console/logout")
    assert response.status_code == 303 and response.headers["location"] == "/console/login"
    stored = await session.get(ConsoleSession, token_digest(token))
    assert stored is not None
    await session.refresh(stored)
    assert stored.revoked_at is not None
    # The old cookie, replayed, no longer opens a page.
    async with browser(console_app) as replay:
        replay.cookies.set("cg_console", token, domain="core.test", path="/console")
        assert (await replay.get("/console/")).status_code == 303


async def test_expired_idle_and_revoked_sessions_and_changed_accounts_are_refused(
    console_login: Login, session: AsyncSession
) -> None:
    for change in ("absolute", "idle", "revoked", "deactivated", "renter"):
        staff = await console_login(Role.STAFF)
        token = staff.http.cookies.get("cg_console")
        assert token is not None
        digest = token_digest(token)
        past = datetime.now(UTC) - timedelta(seconds=1)
        if change == "absolute":
            statement = update(ConsoleSession).values(expires_at=past)
        elif change == "idle":
            statement = update(ConsoleSession).values(last_seen_at=past - timedelta(hours=1))
        elif change == "revoked":
            statement = update(ConsoleSession).values(revoked_at=past)
        else:
            values = {"is_active": False} if change == "deactivated" else {"role": Role.RENTER.value}
            await session.execute(update(User).where(User.id == staff.user.id).values(**values))
            statement = None
        if statement is not None:
            await session.execute(statement.where(ConsoleSession.token_digest == digest))
        await session.commit()
        response = await staff.get("/console/stations")
        assert response.status_code == 303, change
        assert response.headers["location"].startswith("/console/login")


async def test_a_changed_role_acts_on_the_next_request(console_login: Login, session: AsyncSession) -> None:
    staff = await console_login(Role.STAFF)
    await session.execute(update(User).where(User.id == staff.user.id).values(role=Role.VIEWER.value))
    await session.commit()
    page = await staff.get("/console/")
    assert "viewer" in page.text
    refused = await staff.post("/console/stations/0/check")
    assert refused.status_code == 403


async def test_console_errors_are_html_and_the_api_keeps_its_envelope(
    console_login: Login, api: httpx.AsyncClient
) -> None:
    admin = await console_login(Role.ADMIN)
    missing = await admin.get("/console/powerbanks/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/html")
    bad = await admin.get("/console/powerbanks/not-a-uuid")
    assert bad.status_code == 400 and bad.headers["content-type"].startswith("text/html")
    answer = await api.get("/api/admin/powerbanks/not-a-uuid")
    assert answer.status_code == 401 and answer.json()["error"] == "UNAUTHORIZED"


async def test_static_assets_are_shipped_and_cached(console_app: FastAPI) -> None:
    async with browser(console_app) as http:
        for path in ("vendor/htmx/htmx.min.js", "vendor/leaflet/leaflet.js", "css/console.css"):
            response = await http.get(f"/console/static/{path}")
            assert response.status_code == 200, path
            assert response.headers["cache-control"].startswith("public, max-age=")
        login = await http.get("/console/login")
        assert csrf_of(login.text)


async def test_console_answers_are_gzipped_and_the_api_is_not(console_app: FastAPI) -> None:
    async with browser(console_app) as http:
        gzip = {"Accept-Encoding": "gzip"}
        script = await http.get("/console/static/vendor/htmx/htmx.min.js", headers=gzip)
        assert script.status_code == 200 and script.headers["content-encoding"] == "gzip"
        # httpx inflates the body: what arrives is the whole script, sent in far fewer bytes.
        assert int(script.headers["content-length"]) < len(script.content) / 2
        api = await http.get("/openapi.json", headers=gzip)
        assert api.status_code == 200 and "content-encoding" not in api.headers
