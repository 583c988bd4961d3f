"""HTML answers for console paths: the app's JSON envelope stays for the API, a console user gets a page.

:func:`install_console_errors` wraps the handlers the app already has (kit/errors.py): for a path under
``/console`` it renders ``error.html``, for anything else it calls the original handler unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from chargeghar_core.console.context import ConsoleError, LoginRequired, login_url
from chargeghar_core.console.rendering import page_headers, render_template
from chargeghar_core.console.sessions import console_settings
from chargeghar_core.kit.errors import CoreError, dependency_failure

logger = structlog.get_logger(__name__)

Handler = Callable[[Request, Exception], Awaitable[Response]]
CONSOLE_PREFIX = "/console"


def is_console(request: Request) -> bool:
    path = request.url.path
    return path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")


def error_page(
    request: Request, status_code: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    settings = console_settings(request)
    body = render_template(
        "error.html",
        {
            "request": request,
            "status_code": status_code,
            "message": message,
            "staff": None,
            "console": settings,
        },
    )
    merged = page_headers(settings.map_tile_url)
    merged.update(headers or {})
    return HTMLResponse(body, status_code=status_code, headers=merged)


def _describe(exc: Exception) -> tuple[int, str, dict[str, str] | None]:
    if isinstance(exc, ConsoleError):
        return exc.status_code, exc.message, None
    if isinstance(exc, RequestValidationError):
        fields = ", ".join(".".join(str(part) for part in error.get("loc", ())) for error in exc.errors())
        return 400, f"Invalid input: {fields}", None
    if isinstance(exc, StarletteHTTPException):
        return exc.status_code, str(exc.detail), None
    answer = dependency_failure(exc)
    if isinstance(answer, CoreError):
        retry = (answer.headers or {}).get("Retry-After")
        return answer.status_code, answer.message, {"Retry-After": retry} if retry else None
    logger.exception("console_unhandled_error", error_type=type(exc).__name__)
    return 500, "Internal server error", None


def _wrap(original: Handler | None) -> Handler:
    async def handle(request: Request, exc: Exception) -> Response:
        if is_console(request):
            if isinstance(exc, LoginRequired):
                return login_redirect(request, exc.next_path)
            status_code, message, headers = _describe(exc)
            return error_page(request, status_code, message, headers)
        if original is None:
            raise exc
        return await original(request, exc)

    return handle


def login_redirect(request: Request, next_path: str) -> Response:
    target = login_url(next_path)
    if request.headers.get("HX-Request"):
        # An htmx fragment would otherwise swap the login page into the middle of a page.
        return Response(status_code=200, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


def install_console_errors(app: FastAPI) -> None:
    handlers: dict[Any, Handler] = dict(app.exception_handlers)
    for key in (CoreError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(key, _wrap(handlers.get(key)))
    for key, original in handlers.items():
        if isinstance(key, type) and key not in (CoreError, RequestValidationError, StarletteHTTPException):
            app.add_exception_handler(key, _wrap(original))
    app.add_exception_handler(ConsoleError, _wrap(None))
    app.add_exception_handler(LoginRequired, _wrap(None))
