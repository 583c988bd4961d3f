"""structlog over the standard library: console lines in development, JSON lines in production."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Evidence of bad device input in a log line: enough bytes to recognise it, never the whole body (a
# 10 MB body would otherwise become a 20 MB log line).
LOG_HEX_PREFIX_BYTES = 64
# Any field rendered longer than this is cut (a last guard for hex dumps and echoed device strings).
LOG_FIELD_MAX_CHARS = 1024


def hex_prefix(raw: bytes, limit: int = LOG_HEX_PREFIX_BYTES) -> str:
    """The first ``limit`` bytes as hex, with the total length when cut: ``a80047…(+1234 bytes)``."""
    if len(raw) <= limit:
        return raw.hex()
    return f"{raw[:limit].hex()}…(+{len(raw) - limit} bytes)"


def cap_long_fields(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: cut every string field longer than LOG_FIELD_MAX_CHARS."""
    for key, value in event_dict.items():
        if isinstance(value, str) and len(value) > LOG_FIELD_MAX_CHARS:
            event_dict[key] = f"{value[:LOG_FIELD_MAX_CHARS]}…(+{len(value) - LOG_FIELD_MAX_CHARS} chars)"
    return event_dict


def configure_logging(*, json: bool, level: str = "INFO") -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        cap_long_fields,
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    # Library chatter (connection pools, paho internals) only when something is wrong.
    for noisy in ("httpx", "httpcore", "aiosqlite", "amqtt"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
