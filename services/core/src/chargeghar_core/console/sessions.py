"""Console sessions: a random token in an HttpOnly cookie, its digest and expiry in ``console_sessions``.

Every request re-reads the session and its account, so a logout, a deactivated account or a changed role
acts on the next request (no state is trusted from the cookie beyond the token itself).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from fastapi import Request, Response
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.auth.models import Role, User
from chargeghar_core.auth.tokens import TokenClaims
from chargeghar_core.console.models import ConsoleSession
from chargeghar_core.console.settings import ConsoleSettings
from chargeghar_core.settings import Settings

logger = structlog.get_logger(__name__)

COOKIE_NAME = "cg_console"
COOKIE_PATH = "/console"
CONSOLE_ROLES = frozenset({Role.ADMIN, Role.STAFF, Role.VIEWER})
ACTION_ROLES = frozenset({Role.ADMIN, Role.STAFF})
# last_seen_at is written at most this often: a page view is then a read, not a write.
TOUCH_EVERY = timedelta(seconds=60)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def console_settings(request: Request) -> ConsoleSettings:
    settings: Settings = request.app.state.settings
    return settings.console


def cookie_secure(request: Request) -> bool:
    """Secure unless a development/test deployment is reached over plain http (overridable)."""
    settings: Settings = request.app.state.settings
    if settings.console.secure_cookie is not None:
        return settings.console.secure_cookie
    return settings.environment == "production" or request.url.scheme == "https"


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        secure=cookie_secure(request),
        httponly=True,
        samesite="lax",
    )


def clear_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(
        name, path=COOKIE_PATH, secure=cookie_secure(request), httponly=True, samesite="lax"
    )


@dataclass(frozen=True, slots=True)
class StaffSession:
    """The logged-in staff account behind a request, as the services' audit calls want it."""

    user_id: uuid.UUID
    email: str
    role: Role
    csrf_token: str
    token_digest: str
    expires_at: datetime

    @property
    def can_act(self) -> bool:
        return self.role in ACTION_ROLES

    @property
    def claims(self) -> TokenClaims:
        # The audit and command services take the API's token claims; a console session is the same actor.
        return TokenClaims(
            user_id=self.user_id,
            role=self.role,
            email=self.email,
            token_type="access",  # noqa: S106 - a token kind, not a secret
            jti=self.token_digest[:16],
            generation=0,
            expires_at=self.expires_at,
        )


async def open_session(
    session: AsyncSession, user: User, settings: ConsoleSettings, *, user_agent: str = ""
) -> str:
    """Create a session row for ``user``; returns the cookie token (shown once, never stored)."""
    token = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    session.add(
        ConsoleSession(
            token_digest=token_digest(token),
            user_id=user.id,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            last_seen_at=now,
            expires_at=now + timedelta(hours=settings.session_absolute_hours),
            user_agent=user_agent[:200],
        )
    )
    await session.flush()
    return token


async def load_session(
    session: AsyncSession, token: str | None, settings: ConsoleSettings
) -> StaffSession | None:
    """The live session of ``token`` (touched), or None when unknown, revoked, expired or its account may
    no longer use the console."""
    if not token or len(token) > 128:
        return None
    digest = token_digest(token)
    row = (
        await session.execute(
            select(ConsoleSession, User)
            .join(User, User.id == ConsoleSession.user_id)
            .where(ConsoleSession.token_digest == digest)
        )
    ).one_or_none()
    if row is None:
        return None
    stored, user = row
    now = datetime.now(UTC)
    idle_limit = stored.last_seen_at + timedelta(minutes=settings.session_idle_minutes)
    reason = None
    if stored.revoked_at is not None:
        reason = "revoked"
    elif now >= stored.expires_at:
        reason = "expired"
    elif now >= idle_limit:
        reason = "idle"
    elif not user.is_active or user.role not in {role.value for role in CONSOLE_ROLES}:
        reason = "account"
    if reason is not None:
        logger.info("console_session_refused", reason=reason, user_id=str(user.id))
        return None
    if now - stored.last_seen_at >= TOUCH_EVERY:
        stored.last_seen_at = now
        await session.flush()
    return StaffSession(
        user_id=user.id,
        email=user.email,
        role=Role(user.role),
        csrf_token=stored.csrf_token,
        token_digest=digest,
        expires_at=min(stored.expires_at, idle_limit),
    )


async def revoke_session(session: AsyncSession, digest: str) -> None:
    await session.execute(
        update(ConsoleSession)
        .where(ConsoleSession.token_digest == digest, ConsoleSession.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
