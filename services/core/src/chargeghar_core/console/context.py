"""What every console endpoint depends on: the logged-in staff account, the request's database session,
rendering with the layout's context, redirects with a flash message.

- ``Page`` (GET): a logged-in staff account of any console role (admin, staff, viewer); else 303 to login.
- ``Action`` (POST): logged in, a valid CSRF token (else 403), and a role that may act (a viewer: 403).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

import structlog
from fastapi import Depends, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.console.rendering import page_headers, render_template
from chargeghar_core.console.security import (
    CSRF_FIELD,
    CSRF_HEADER,
    pop_flash,
    set_flash,
    submitted_token,
    tokens_match,
)
from chargeghar_core.console.sessions import COOKIE_NAME, StaffSession, console_settings, load_session
from chargeghar_core.console.settings import ConsoleSettings
from chargeghar_core.kit.db import DbSession

logger = structlog.get_logger(__name__)

CSRF_REFUSED = "CSRF token missing or invalid"


class ConsoleError(Exception):
    """An error the console answers with its HTML error page (status, message)."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


class LoginRequired(Exception):
    """No live session: answered with a redirect to the login page (``next`` = where to go back)."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def safe_next(value: str | None) -> str:
    """Only a console path is a valid place to return to after login (never another site)."""
    if value and value.startswith("/console") and not value.startswith("//") and "\\" not in value:
        return value
    return "/console/"


def login_url(next_path: str) -> str:
    return f"/console/login?next={quote(safe_next(next_path), safe='/')}"


@dataclass
class ConsoleContext:
    """One request's view of the console: use :meth:`render` for pages, :meth:`redirect` after actions."""

    request: Request
    db: AsyncSession
    staff: StaffSession
    settings: ConsoleSettings

    @property
    def can_act(self) -> bool:
        return self.staff.can_act

    def base_context(self, response: Response, *, fragment: bool = False) -> dict[str, Any]:
        # A fragment (htmx refresh) must not eat the flash meant for the page around it.
        flash = None if fragment else pop_flash(self.request, response)
        return {
            "request": self.request,
            "staff": self.staff,
            "can_act": self.staff.can_act,
            "csrf_token": self.staff.csrf_token,
            "csrf_field": CSRF_FIELD,
            "csrf_header": CSRF_HEADER,
            "flash": flash,
            "console": self.settings,
            "current_path": self.request.url.path,
        }

    def render(
        self,
        template: str,
        context: dict[str, Any] | None = None,
        *,
        status_code: int = 200,
        fragment: bool = False,
    ) -> Response:
        """A full page (extends ``base.html``) with the flash of the previous action, or with
        ``fragment=True`` a piece of one for htmx."""
        response = HTMLResponse(status_code=status_code, headers=page_headers(self.settings.map_tile_url))
        values = self.base_context(response, fragment=fragment)
        values.update(context or {})
        response.body = response.render(render_template(template, values))
        response.headers["content-length"] = str(len(response.body))
        return response

    def redirect(self, url: str, *, ok: str | None = None, error: str | None = None) -> Response:
        """303 to ``url`` (post/redirect/get) with a flash message for the next page."""
        response = RedirectResponse(url, status_code=303)
        if ok is not None:
            set_flash(self.request, response, "ok", ok)
        elif error is not None:
            set_flash(self.request, response, "error", error)
        return response


async def _staff_session(request: Request, db: AsyncSession) -> StaffSession | None:
    return await load_session(db, request.cookies.get(COOKIE_NAME), console_settings(request))


async def page_context(request: Request, db: DbSession) -> ConsoleContext:
    staff = await _staff_session(request, db)
    if staff is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(target)
    return ConsoleContext(request=request, db=db, staff=staff, settings=console_settings(request))


async def action_context(request: Request, db: DbSession) -> ConsoleContext:
    staff = await _staff_session(request, db)
    if staff is None:
        raise LoginRequired("/console/")
    if not tokens_match(staff.csrf_token, await submitted_token(request)):
        logger.warning("console_csrf_refused", path=request.url.path, user_id=str(staff.user_id))
        raise ConsoleError(403, CSRF_REFUSED)
    if not staff.can_act:
        logger.warning("console_viewer_action_refused", path=request.url.path, user_id=str(staff.user_id))
        raise ConsoleError(403, "The viewer role is read-only")
    return ConsoleContext(request=request, db=db, staff=staff, settings=console_settings(request))


Page = Annotated[ConsoleContext, Depends(page_context)]
Action = Annotated[ConsoleContext, Depends(action_context)]
