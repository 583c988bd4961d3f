"""Business rules of staff login and token refresh."""

from __future__ import annotations

from datetime import UTC, datetime

import structlog

from chargeghar_core.auth.models import Role, User
from chargeghar_core.auth.repository import UserRepository
from chargeghar_core.auth.tokens import TokenPair, TokenService, hash_password, verify_password
from chargeghar_core.kit.errors import Conflict, Unauthorized

logger = structlog.get_logger(__name__)

# Roles that may log in on /api/admin/login (renters use the app's own login, not this one).
STAFF_LOGIN_ROLES = frozenset({Role.ADMIN, Role.STAFF, Role.VIEWER, Role.SERVICE})


class RefreshTokenReused(Unauthorized):
    """A spent refresh token was presented again: every refresh token of the account is now revoked."""

    code = "TOKEN_REUSED"
    default_message = "Refresh token already used; all sessions of this account were revoked"


class AuthService:
    def __init__(self, users: UserRepository, tokens: TokenService) -> None:
        self.users = users
        self.tokens = tokens

    async def login(self, email: str, password: str) -> tuple[User, TokenPair]:
        user = await self.users.get_by_email(email)
        password_ok = await verify_password(user.password_hash if user else None, password)
        if user is None or not password_ok:
            raise Unauthorized("Invalid e-mail or password", details=None)
        if not user.is_active or user.role_enum not in STAFF_LOGIN_ROLES:
            # Same answer as a bad password: the login page must not reveal which accounts exist.
            raise Unauthorized("Invalid e-mail or password")
        user.last_login_at = datetime.now(UTC)
        await self.users.session.flush()
        return user, self._issue(user)

    async def refresh(self, refresh_token: str) -> tuple[User, TokenPair]:
        claims = self.tokens.decode(refresh_token, "refresh")
        user = await self.users.get(claims.user_id)
        if user is None or not user.is_active or user.role_enum not in STAFF_LOGIN_ROLES:
            raise Unauthorized("Account not active")
        if claims.generation != user.token_generation:
            raise Unauthorized("Refresh token revoked")
        claimed = await self.users.claim_refresh_token(
            jti=claims.jti, user_id=user.id, expires_at=claims.expires_at
        )
        if not claimed:
            # Either the holder or a thief replays it; we cannot tell which, so end every session.
            await self.users.revoke_refresh_tokens(user.id)
            logger.warning("refresh_token_reused", user_id=str(user.id))
            raise RefreshTokenReused()
        return user, self._issue(user)

    def _issue(self, user: User) -> TokenPair:
        return self.tokens.issue_pair(
            user_id=user.id, role=user.role_enum, email=user.email, generation=user.token_generation
        )

    async def create_user(self, *, email: str, password: str, role: Role, full_name: str = "") -> User:
        normalised = email.strip().lower()
        if await self.users.get_by_email(normalised) is not None:
            raise Conflict(f"An account with e-mail {normalised} exists already", code="EMAIL_TAKEN")
        user = User(
            email=normalised,
            full_name=full_name,
            password_hash=hash_password(password),
            role=role.value,
            is_active=True,
            token_generation=0,
        )
        return await self.users.add(user)
