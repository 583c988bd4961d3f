"""Typed errors carrying their HTTP status and code, rendered by one handler into the contract envelope.

Envelope (contract.md §2): ``{"success": false, "message": "...", "error": "<CODE>", "details": {...}?}``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from sqlalchemy.exc import (
    DataError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = structlog.get_logger(__name__)


class CoreError(Exception):
    """Base of every error core answers on purpose. Subclasses fix ``status_code`` and ``code``."""

    status_code: int = 500
    code: str = "INTERNAL_ERROR"
    default_message: str = "Internal server error"

    def __init__(
        self,
        message: str | None = None,
        *,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        code: str | None = None,
        status_code: int | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.details = dict(details) if details is not None else None
        self.headers = dict(headers) if headers is not None else None
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        super().__init__(self.message)


class BadRequest(CoreError):
    status_code = 400
    code = "BAD_REQUEST"
    default_message = "Bad request"


class ValidationFailed(CoreError):
    status_code = 400
    code = "VALIDATION_ERROR"
    default_message = "Request validation failed"


class Unauthorized(CoreError):
    status_code = 401
    code = "UNAUTHORIZED"
    default_message = "Authentication required"

    def __init__(self, message: str | None = None, *, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message, details=details, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(CoreError):
    status_code = 403
    code = "FORBIDDEN"
    default_message = "Not allowed"


class NotFound(CoreError):
    status_code = 404
    code = "NOT_FOUND"
    default_message = "Not found"


class Conflict(CoreError):
    status_code = 409
    code = "CONFLICT"
    default_message = "Conflict with the current state"


class RateLimited(CoreError):
    status_code = 429
    code = "RATE_LIMITED"
    default_message = "Too many requests"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(
            f"Rate limit exceeded; retry in {retry_after_s} s",
            details={"retry_after_s": retry_after_s},
            headers={"Retry-After": str(retry_after_s)},
        )


class ServiceUnavailable(CoreError):
    """A dependency on the request path (database, Redis) is down or too slow: worth retrying later."""

    status_code = 503
    code = "SERVICE_UNAVAILABLE"
    default_message = "A service this request needs is unavailable; retry later"

    def __init__(
        self, message: str | None = None, *, code: str | None = None, retry_after_s: int = 5
    ) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after_s)})


class DatabaseUnavailable(ServiceUnavailable):
    code = "DATABASE_UNAVAILABLE"
    default_message = "The database is unavailable; retry later"


class RedisUnavailable(ServiceUnavailable):
    code = "REDIS_UNAVAILABLE"
    default_message = "Redis is unavailable; retry later"


class InvalidInput(CoreError):
    """A value that passed validation but cannot be stored (PostgreSQL refuses it): the caller's input."""

    status_code = 400
    code = "INVALID_INPUT"
    default_message = "A value in the request cannot be stored"


def error_body(code: str, message: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"success": False, "message": message, "error": code}
    if details is not None:
        body["details"] = dict(details)
    return body


def error_response(error: CoreError) -> JSONResponse:
    return JSONResponse(
        error_body(error.code, error.message, error.details),
        status_code=error.status_code,
        headers=error.headers,
    )


def validation_details(errors: Sequence[Any]) -> dict[str, Any]:
    """Pydantic / FastAPI errors as ``{"body.email": ["Field required"], ...}`` — the same shape as the
    wire contract's VALIDATION_ERROR details (``chargeghar_protocol.contract.validation_error_details``)."""
    details: dict[str, list[str]] = {}
    for item in errors:
        path = ".".join(str(part) for part in item.get("loc", ())) or "__root__"
        details.setdefault(path, []).append(str(item.get("msg", "")))
    return details


_HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "RATE_LIMITED",
}


async def _handle_core_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CoreError)
    return error_response(exc)


async def _handle_request_validation(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(ValidationFailed(details=validation_details(exc.errors())))


async def _handle_http_exception(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "HTTP_ERROR")
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=getattr(exc, "headers", None)
    )


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else (current.__cause__ or current.__context__)


def is_bad_value_error(exc: BaseException) -> bool:
    """True when the database refused a *value* (SQLSTATE class 22: NUL in text, number out of range, an
    unencodable character), i.e. the input is at fault and a retry cannot succeed."""
    for link in _exception_chain(exc):
        if isinstance(link, DataError | UnicodeEncodeError | OverflowError):
            return True
        sqlstate = getattr(link, "sqlstate", None) or getattr(link, "pgcode", None)
        if isinstance(sqlstate, str) and sqlstate.startswith("22"):
            return True
        # asyncpg refuses some arguments client-side (e.g. "value out of int32 range") with its DataError.
        if type(link).__name__ == "DataError" and type(link).__module__.startswith("asyncpg"):
            return True
    return False


def _raised_by_database_driver(tb: TracebackType | None) -> bool:
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if "/sqlalchemy/" in filename or "/asyncpg/" in filename or "/aiosqlite/" in filename:
            return True
        tb = tb.tb_next
    return False


def dependency_failure(exc: BaseException) -> CoreError | None:
    """The typed answer to a failure of a dependency or of a stored value; None for a genuine bug.

    The database driver reports an unreachable server as a bare ``OSError`` / ``TimeoutError`` (asyncpg
    connects outside SQLAlchemy's error wrapping), so those are told apart by where they were raised."""
    if isinstance(exc, CoreError):
        return exc
    if isinstance(exc, RedisError):
        return RedisUnavailable()
    if isinstance(exc, SQLAlchemyError):
        if is_bad_value_error(exc):
            return InvalidInput()
        if isinstance(exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeoutError) or (
            getattr(exc, "connection_invalidated", False)
        ):
            return DatabaseUnavailable()
        # Any other database error that wraps a lost connection (the server went away mid-query).
        if any(isinstance(link, OSError | TimeoutError) for link in _exception_chain(exc)):
            return DatabaseUnavailable()
        return None
    if isinstance(exc, OSError | TimeoutError):
        if _raised_by_database_driver(exc.__traceback__):
            return DatabaseUnavailable()
        return ServiceUnavailable()
    return None


async def _handle_dependency_failure(_request: Request, exc: Exception) -> JSONResponse:
    answer = dependency_failure(exc)
    if answer is None:
        return await _handle_unexpected(_request, exc)
    if answer.status_code >= 500:
        logger.warning(
            "dependency_unavailable", error=answer.code, error_type=type(exc).__name__, cause=str(exc)
        )
    else:
        logger.warning("value_refused_by_database", error_type=type(exc).__name__, cause=str(exc)[:500])
    return error_response(answer)


async def _handle_unexpected(_request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled_error", error_type=type(exc).__name__)
    return JSONResponse(error_body("INTERNAL_ERROR", "Internal server error"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(CoreError, _handle_core_error)
    app.add_exception_handler(RequestValidationError, _handle_request_validation)
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)
    # Registered per class (not folded into the catch-all below): the catch-all runs in Starlette's
    # ServerErrorMiddleware, which re-raises after answering; these are expected conditions, not bugs.
    for dependency_error in (SQLAlchemyError, RedisError, OSError, TimeoutError):
        app.add_exception_handler(dependency_error, _handle_dependency_failure)
    app.add_exception_handler(Exception, _handle_unexpected)
