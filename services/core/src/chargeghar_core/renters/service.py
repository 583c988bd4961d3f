"""Renter accounts: registration, login by e-mail or phone, rotating refresh tokens, profile, status."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import structlog

from chargeghar_core.auth.models import Role, User
from chargeghar_core.auth.repository import UserRepository
from chargeghar_core.auth.service import RefreshTokenReused
from chargeghar_core.auth.tokens import TokenPair, TokenService, hash_password, verify_password
from chargeghar_core.kit.errors import Conflict, NotFound, Unauthorized, ValidationFailed
from chargeghar_core.renters.models import AccountStatus, RenterProfile
from chargeghar_core.renters.repository import RenterRepository

logger = structlog.get_logger(__name__)

_PHONE = re.compile(r"^\+?[0-9]{7,15}$")
# users.email is required and unique; a renter who signs up with a phone only gets this reserved,
# undeliverable address (RFC 2606 ".invalid") so the staff accounts table needs no change.
_PHONE_ONLY_EMAIL_DOMAIN = "phone.renters.invalid"


def normalise_phone(phone: str) -> str:
    compact = re.sub(r"[\s\-()]", "", phone)
    if not _PHONE.fullmatch(compact):
        raise ValidationFailed(
            "Invalid phone number", details={"errors": [{"path": "phone", "message": "7-15 digits"}]}
        )
    return compact if compact.startswith("+") else "+" + compact


class RenterService:
    def __init__(self, renters: RenterRepository, tokens: TokenService) -> None:
        self.renters = renters
        self.users = UserRepository(renters.session)
        self.tokens = tokens

    async def register(
        self, *, email: str | None, phone: str | None, password: str, display_name: str
    ) -> tuple[User, RenterProfile, TokenPair]:
        if not email and not phone:
            raise ValidationFailed("Give an e-mail address or a phone number")
        normalised_phone = normalise_phone(phone) if phone else None
        normalised_email = (
            email.strip().lower() if email else f"{normalised_phone}@{_PHONE_ONLY_EMAIL_DOMAIN}"
        )
        if await self.renters.email_taken(normalised_email):
            raise Conflict("An account with this e-mail exists already", code="EMAIL_TAKEN")
        if normalised_phone and await self.renters.phone_taken(normalised_phone):
            raise Conflict("An account with this phone number exists already", code="PHONE_TAKEN")
        user = User(
            id=uuid.uuid4(),
            email=normalised_email,
            full_name=display_name,
            password_hash=hash_password(password),
            role=Role.RENTER.value,
            is_active=True,
            token_generation=0,
        )
        profile = RenterProfile(
            user_id=user.id,
            phone=normalised_phone,
            display_name=display_name,
            status=AccountStatus.ACTIVE.value,
        )
        await self.renters.add(user, profile)
        logger.info("renter_registered", user_id=str(user.id))
        return user, profile, self._issue(user)

    async def login(self, *, login: str, password: str) -> tuple[User, RenterProfile, TokenPair]:
        found = (
            await self.renters.by_email(login)
            if "@" in login
            else await self.renters.by_phone(normalise_phone(login))
        )
        password_ok = await verify_password(found[0].password_hash if found else None, password)
        if found is None or not password_ok:
            raise Unauthorized("Invalid login or password")
        user, profile = found
        if not user.is_active or profile.status != AccountStatus.ACTIVE.value:
            raise Unauthorized("Invalid login or password")
        user.last_login_at = datetime.now(UTC)
        await self.renters.session.flush()
        return user, profile, self._issue(user)

    async def refresh(self, refresh_token: str) -> tuple[User, RenterProfile, TokenPair]:
        claims = self.tokens.decode(refresh_token, "refresh")
        found = await self.renters.get(claims.user_id)
        if found is None or not found[0].is_active or found[1].status != AccountStatus.ACTIVE.value:
            raise Unauthorized("Account not active")
        user, profile = found
        if claims.generation != user.token_generation:
            raise Unauthorized("Refresh token revoked")
        if not await self.users.claim_refresh_token(
            jti=claims.jti, user_id=user.id, expires_at=claims.expires_at
        ):
            await self.users.revoke_refresh_tokens(user.id)
            raise RefreshTokenReused()
        return user, profile, self._issue(user)

    async def profile(self, user_id: uuid.UUID) -> tuple[User, RenterProfile]:
        found = await self.renters.get(user_id)
        if found is None:
            raise NotFound("Renter not found", code="RENTER_NOT_FOUND")
        return found

    async def update_profile(
        self, user_id: uuid.UUID, *, display_name: str | None, phone: str | None
    ) -> tuple[User, RenterProfile]:
        user, profile = await self.profile(user_id)
        if display_name is not None:
            profile.display_name = display_name
            user.full_name = display_name
        if phone is not None:
            normalised = normalise_phone(phone)
            if normalised != profile.phone and await self.renters.phone_taken(normalised):
                raise Conflict("An account with this phone number exists already", code="PHONE_TAKEN")
            profile.phone = normalised
        await self.renters.session.flush()
        return user, profile

    async def set_status(
        self, user_id: uuid.UUID, status: AccountStatus, reason: str | None
    ) -> tuple[User, RenterProfile]:
        user, profile = await self.profile(user_id)
        profile.status = status.value
        profile.status_reason = reason
        if status is AccountStatus.SUSPENDED:
            # Suspension ends every session: refresh tokens issued before are refused from now on.
            await self.users.revoke_refresh_tokens(user.id)
        await self.renters.session.flush()
        return await self.profile(user_id)

    def _issue(self, user: User) -> TokenPair:
        return self.tokens.issue_pair(
            user_id=user.id, role=Role.RENTER, email=user.email, generation=user.token_generation
        )
