"""JWT access and refresh tokens (HS256, python-jose) and argon2 password hashing."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from jose import ExpiredSignatureError, JWTError, jwt

from chargeghar_core.auth.models import Role
from chargeghar_core.kit.errors import Unauthorized
from chargeghar_core.settings import JwtSettings

TokenType = Literal["access", "refresh"]

_VERIFIED_CACHE_SIZE = 1024

_password_hasher = PasswordHasher()
# Verified when the e-mail is unknown, so that a login's timing does not reveal which accounts exist.
_DUMMY_HASH = _password_hasher.hash("not-a-real-password")


def hash_password(password: str) -> str:
    return _password_hasher.hash(password)


def _verify_password_blocking(password_hash: str | None, password: str) -> bool:
    try:
        return _password_hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def verify_password(password_hash: str | None, password: str) -> bool:
    # argon2 costs tens of milliseconds of CPU on purpose: keep it off the event loop.
    return await asyncio.to_thread(_verify_password_blocking, password_hash, password)


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: uuid.UUID
    role: Role
    email: str
    token_type: TokenType
    jti: str
    generation: int
    expires_at: datetime
    # The refresh-token family (a renter's session on one device); None for tokens without one.
    family: str | None = None


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    access_expires_at: datetime
    refresh_expires_at: datetime


class TokenService:
    def __init__(self, settings: JwtSettings) -> None:
        self._secret = settings.secret.get_secret_value()
        self._algorithm = settings.algorithm
        self._issuer = settings.issuer
        self._access_ttl = timedelta(minutes=settings.access_ttl_minutes)
        self._refresh_ttl = timedelta(days=settings.refresh_ttl_days)
        # Verified access tokens: the ingest sends the same token with every event, and re-checking the
        # HMAC-SHA256 signature and claims each time is pure CPU on the hot path. Expiry is still checked
        # on every use; refresh tokens are never cached (each one must be spent once).
        self._verified_access: dict[str, TokenClaims] = {}

    def issue_pair(
        self, *, user_id: uuid.UUID, role: Role, email: str, generation: int, family: str | None = None
    ) -> TokenPair:
        now = datetime.now(UTC)
        access, access_exp = self._encode(
            user_id, role, email, generation, "access", now, self._access_ttl, family
        )
        refresh, refresh_exp = self._encode(
            user_id, role, email, generation, "refresh", now, self._refresh_ttl, family
        )
        return TokenPair(access, refresh, access_exp, refresh_exp)

    def _encode(
        self,
        user_id: uuid.UUID,
        role: Role,
        email: str,
        generation: int,
        token_type: TokenType,
        now: datetime,
        ttl: timedelta,
        family: str | None = None,
    ) -> tuple[str, datetime]:
        expires_at = now + ttl
        claims: dict[str, Any] = {
            "sub": str(user_id),
            "role": role.value,
            "email": email,
            "type": token_type,
            "gen": generation,
            "jti": uuid.uuid4().hex,
            "iss": self._issuer,
            "iat": int(now.timestamp()),
            "exp": int(expires_at.timestamp()),
        }
        if family is not None:
            claims["fam"] = family
        return jwt.encode(claims, self._secret, algorithm=self._algorithm), expires_at

    def decode(self, token: str, expected_type: TokenType) -> TokenClaims:
        """Verify signature, expiry, issuer and type; any failure is a 401."""
        if expected_type == "access":
            cached = self._verified_access.get(token)
            if cached is not None:
                if cached.expires_at <= datetime.now(UTC):
                    del self._verified_access[token]
                    raise Unauthorized("Token expired")
                return cached
        claims = self._verify(token, expected_type)
        if expected_type == "access":
            if len(self._verified_access) >= _VERIFIED_CACHE_SIZE:
                self._verified_access.clear()  # crude but bounded; callers hold few tokens at a time
            self._verified_access[token] = claims
        return claims

    def _verify(self, token: str, expected_type: TokenType) -> TokenClaims:
        try:
            claims = jwt.decode(token, self._secret, algorithms=[self._algorithm], issuer=self._issuer)
        except ExpiredSignatureError as exc:
            raise Unauthorized("Token expired") from exc
        except JWTError as exc:
            raise Unauthorized("Invalid token") from exc
        if claims.get("type") != expected_type:
            raise Unauthorized(
                f"Not an {expected_type} token" if expected_type == "access" else "Not a refresh token"
            )
        try:
            return TokenClaims(
                user_id=uuid.UUID(str(claims["sub"])),
                role=Role(claims["role"]),
                email=str(claims.get("email", "")),
                token_type=expected_type,
                jti=str(claims["jti"]),
                generation=int(claims.get("gen", 0)),
                expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
                family=str(claims["fam"]) if claims.get("fam") else None,
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise Unauthorized("Invalid token claims") from exc
