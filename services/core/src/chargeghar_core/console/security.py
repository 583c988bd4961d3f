"""CSRF tokens and signed flash messages.

- Logged in: one random CSRF token per session (stored with it); every POST form carries it as
  ``csrf_token`` and htmx sends it as ``X-CSRF-Token``.
- The login form (no session yet): a random value in a short-lived cookie, and in the form its HMAC under
  the JWT secret, so a page on another site can neither read nor forge the pair.
- Flash messages travel in a cookie to the page after the redirect, signed so that nobody can make the
  console display a message of their own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from fastapi import Request, Response

from chargeghar_core.console.sessions import clear_cookie, set_cookie
from chargeghar_core.settings import Settings

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
LOGIN_COOKIE = "cg_console_login"
FLASH_COOKIE = "cg_console_flash"
LOGIN_COOKIE_MAX_AGE = 3600
MAX_FLASH_TEXT = 500


def _key(request: Request, purpose: str) -> bytes:
    settings: Settings = request.app.state.settings
    secret = settings.jwt.secret.get_secret_value().encode()
    return hmac.new(secret, f"chargeghar-console:{purpose}".encode(), hashlib.sha256).digest()


def _sign(request: Request, purpose: str, value: str) -> str:
    return hmac.new(_key(request, purpose), value.encode(), hashlib.sha256).hexdigest()


def tokens_match(expected: str | None, given: str | None) -> bool:
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


async def submitted_token(request: Request) -> str | None:
    """The CSRF token of a POST: the htmx header, else the form field (the form is parsed once and cached
    by Starlette, so the endpoint can still read it)."""
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        return value if isinstance(value, str) else None
    return None


def login_csrf_token(request: Request, response: Response) -> str:
    """The login form's token; sets (or keeps) the pre-session cookie it is bound to."""
    nonce = request.cookies.get(LOGIN_COOKIE)
    if not nonce or len(nonce) > 128:
        nonce = secrets.token_urlsafe(24)
    set_cookie(request, response, LOGIN_COOKIE, nonce, LOGIN_COOKIE_MAX_AGE)
    return _sign(request, "login", nonce)


def login_csrf_valid(request: Request, given: str | None) -> bool:
    nonce = request.cookies.get(LOGIN_COOKIE)
    if not nonce or len(nonce) > 128:
        return False
    return tokens_match(_sign(request, "login", nonce), given)


@dataclass(frozen=True, slots=True)
class Flash:
    kind: str  # "ok" or "error"
    text: str


def set_flash(request: Request, response: Response, kind: str, text: str) -> None:
    payload = json.dumps({"k": "ok" if kind == "ok" else "error", "t": text[:MAX_FLASH_TEXT]})
    encoded = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
    set_cookie(request, response, FLASH_COOKIE, f"{encoded}.{_sign(request, 'flash', encoded)}", 300)


def pop_flash(request: Request, response: Response) -> Flash | None:
    """The flash of the previous action (if any, and if the signature holds); clears the cookie."""
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    clear_cookie(request, response, FLASH_COOKIE)
    encoded, _, signature = raw.partition(".")
    if not tokens_match(_sign(request, "flash", encoded), signature):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
        return Flash(kind=str(data["k"]), text=str(data["t"]))
    except (ValueError, KeyError, TypeError):
        return None
