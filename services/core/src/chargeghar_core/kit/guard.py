"""Refuse input the database cannot store, before any endpoint sees it.

PostgreSQL refuses U+0000 in ``text`` and ``jsonb`` and the driver cannot encode a lone UTF-16 surrogate
(``"\\ud800"`` is valid JSON and decodes to one); without this guard such a value fails deep inside a
transaction and the caller gets a 500 for its own bad input. A deeply nested JSON body makes the JSON
parser recurse until it fails (also a 500). :class:`RequestGuardMiddleware` answers all of these with a
typed 400 and the field path, for every endpoint at once.

The internal station-data endpoints are left to their own checks (:func:`find_unstorable_text`): the
contract verifies the HMAC over the raw bytes before it looks at the body, and a refused event must be
recorded in the sync log.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chargeghar_core.kit.errors import error_body

# Deeper than any body or event of the API (a full snapshot is 4 levels deep); JSON nested deeper is
# refused rather than walked.
MAX_JSON_DEPTH = 32
DEFAULT_MAX_BODY_BYTES = 1024 * 1024

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
UNSTORABLE_MESSAGE = "must not contain NUL (U+0000) or unpaired surrogate characters"
TOO_DEEP_MESSAGE = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"


class JsonTooDeep(ValueError):
    """The JSON document nests deeper than :data:`MAX_JSON_DEPTH` (or than the parser can recurse)."""


def has_unstorable_text(text: str) -> bool:
    return _UNSTORABLE.search(text) is not None


def strip_unstorable(text: str) -> str:
    """``text`` without the characters PostgreSQL cannot store (for logs and failure records)."""
    return _UNSTORABLE.sub("", text)


def loads_bounded(data: bytes | str) -> Any:
    """``json.loads`` that refuses (with :class:`JsonTooDeep`) what it would otherwise crash on."""
    try:
        value = json.loads(data)
    except RecursionError as exc:
        raise JsonTooDeep(TOO_DEEP_MESSAGE) from exc
    find_unstorable_text(value)  # raises JsonTooDeep beyond MAX_JSON_DEPTH
    return value


def find_unstorable_text(value: Any, prefix: str = "") -> list[str]:
    """Dotted paths (``slots.0.power_bank_serial``) of every key or string holding NUL or a surrogate.

    Iterative, so a deep document cannot exhaust the stack; raises :class:`JsonTooDeep` past the bound."""
    found: list[str] = []
    stack: list[tuple[str, Any, int]] = [(prefix, value, 0)]
    while stack:
        path, item, depth = stack.pop()
        if isinstance(item, str):
            if has_unstorable_text(item):
                found.append(path or "__root__")
            continue
        if isinstance(item, dict | list):
            if depth >= MAX_JSON_DEPTH:
                raise JsonTooDeep(TOO_DEEP_MESSAGE)
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                child_path = f"{path}.{key}" if path else str(key)
                if isinstance(key, str) and has_unstorable_text(key):
                    found.append(child_path)
                stack.append((child_path, child, depth + 1))
    return sorted(found)


def sanitize_json(value: Any, depth: int = 0) -> Any:
    """A copy of ``value`` that PostgreSQL can store: bad characters stripped, nesting cut at the bound.
    For failure records, which must be written whatever the event held."""
    if isinstance(value, str):
        return strip_unstorable(value)
    if depth >= MAX_JSON_DEPTH:
        return "<nested too deeply>" if isinstance(value, dict | list) else value
    if isinstance(value, dict):
        return {strip_unstorable(str(key)): sanitize_json(child, depth + 1) for key, child in value.items()}
    if isinstance(value, list):
        return [sanitize_json(child, depth + 1) for child in value]
    return value


class RequestGuardMiddleware:
    """Pure ASGI: checks the path, the query string and JSON / form bodies (buffered, size-capped, then
    replayed to the app unchanged)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        skip_body_prefixes: tuple[str, ...] = (),
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.app = app
        self.skip_body_prefixes = skip_body_prefixes
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = _check_path_and_query(scope)
        if refusal is not None:
            await _answer(send, 400, refusal)
            return
        path: str = scope.get("path", "")
        kind = _body_kind(scope)
        if kind is None or path.startswith(self.skip_body_prefixes):
            await self.app(scope, receive, send)
            return

        chunks: list[bytes] = []
        size = 0
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] != "http.request":
                # The client went away: nothing to answer.
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _answer(
                    send,
                    413,
                    error_body("PAYLOAD_TOO_LARGE", f"Request body larger than {self.max_body_bytes} bytes"),
                )
                return
            chunks.append(chunk)
            more_body = message.get("more_body", False)
        body = b"".join(chunks)

        refusal = _check_body(kind, body)
        if refusal is not None:
            await _answer(send, 400, refusal)
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _refusal(details: dict[str, list[str]]) -> dict[str, Any]:
    return error_body("VALIDATION_ERROR", "Request contains characters that cannot be stored", details)


def _check_path_and_query(scope: Scope) -> dict[str, Any] | None:
    details: dict[str, list[str]] = {}
    if has_unstorable_text(scope.get("path", "")):
        details["path"] = [UNSTORABLE_MESSAGE]
    query = scope.get("query_string", b"")
    if query:
        # Decoded exactly as Starlette decodes it for the endpoints.
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if has_unstorable_text(name) or has_unstorable_text(value):
                details[f"query.{strip_unstorable(name)}"] = [UNSTORABLE_MESSAGE]
    return _refusal(details) if details else None


def _body_kind(scope: Scope) -> str | None:
    if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
        return None
    content_type = ""
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            content_type = value.decode("latin-1").split(";", 1)[0].strip().lower()
            break
    # FastAPI parses a body without a content type as JSON too.
    if not content_type or content_type == "application/json" or content_type.endswith("+json"):
        return "json"
    if content_type == "application/x-www-form-urlencoded":
        return "form"
    return None


def _check_body(kind: str, body: bytes) -> dict[str, Any] | None:
    if not body:
        return None
    if kind == "form":
        paths = [
            f"body.{strip_unstorable(name)}"
            for name, value in parse_qsl(body.decode("latin-1"), keep_blank_values=True)
            if has_unstorable_text(name) or has_unstorable_text(value)
        ]
        return _refusal({key: [UNSTORABLE_MESSAGE] for key in paths}) if paths else None
    try:
        document = json.loads(body)
    except RecursionError:
        return error_body("INVALID_JSON", "Body is not valid JSON", {"body": [TOO_DEEP_MESSAGE]})
    except ValueError:
        return None  # not JSON at all: the endpoint's own validation answers it
    try:
        paths = find_unstorable_text(document, "body")
    except JsonTooDeep:
        return error_body("INVALID_JSON", "Body is not valid JSON", {"body": [TOO_DEEP_MESSAGE]})
    return _refusal({key: [UNSTORABLE_MESSAGE] for key in paths}) if paths else None


async def _answer(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
