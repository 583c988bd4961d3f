"""Structured logging (structlog over stdlib) and the request correlation id.

The ingest sends ``X-Correlation-Id``; core binds it (or a fresh one) to every log line of the request
and echoes it in the response, so one id follows an event from the device frame to the database.
"""

from __future__ import annotations

import logging
import re
import sys
import uuid

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CORRELATION_HEADER = "x-correlation-id"

# Last line of defence for log output (tracebacks included): password hashes, JWTs and bearer tokens are
# replaced whatever logged them. SQL parameters never reach a log in the first place (hide_parameters).
_SECRET_PATTERNS = (
    re.compile(r"\$argon2(?:id|i|d)\$[^\s'\",)\]]+"),
    re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}"),
    re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
)
_SENSITIVE_KEYS = ("password", "secret", "token", "authorization", "signature", "otp")


def redact(text: str) -> str:
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "<redacted>", text)
    return text


def _redact_sensitive_keys(
    _logger: object, _method: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    for key in list(event_dict):
        if any(word in key.lower() for word in _SENSITIVE_KEYS) and event_dict[key] is not None:
            event_dict[key] = "<redacted>"
    return event_dict


class RedactingFormatter(structlog.stdlib.ProcessorFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


_MAX_CORRELATION_ID_LENGTH = 128


def configure_logging(level: str = "INFO", *, json_logs: bool = False) -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        _redact_sensitive_keys,
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = RedactingFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info
            if json_logs
            else structlog.processors.ExceptionPrettyPrinter(),
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log duplicates what the correlation middleware already knows; keep it quieter.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


class CorrelationIdMiddleware:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware on the hot internal endpoint)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        correlation_id = ""
        for name, value in scope.get("headers", ()):
            if name == CORRELATION_HEADER.encode():
                correlation_id = value.decode("latin-1")[:_MAX_CORRELATION_ID_LENGTH]
                break
        if not correlation_id:
            correlation_id = uuid.uuid4().hex
        header_value = correlation_id.encode("latin-1")

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (CORRELATION_HEADER.encode(), header_value)]
            await send(message)

        # A fresh logging context per request: endpoints bind more (event id, station) for their lines.
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(correlation_id=correlation_id)
        try:
            await self.app(scope, receive, send_with_header)
        finally:
            structlog.contextvars.clear_contextvars()
