"""Renter accounts: registration, login by e-mail or phone, rotating refresh tokens, profile, status."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import structlog

from chargeghar_core.audit.service import record_staff_action
from chargeghar_core.auth.models import Role, User
from chargeghar_core.auth.repository import UserRepository
from chargeghar_core.auth.service import RefreshTokenReused
from chargeghar_core.auth.tokens import TokenClaims, TokenPair, TokenService, hash_password, verify_password
from chargeghar_core.kit.db import utcnow
from chargeghar_core.kit.errors import Conflict, NotFound, Unauthorized, ValidationFailed
from chargeghar_core.notifications.models import Channel, NotificationPreference
from chargeghar_core.notifications.outbox import notify, preferences
from chargeghar_core.notifications.templates import Event
from chargeghar_core.payments.wallet import WalletService
from chargeghar_core.renters.models import AccountStatus, RenterProfile, RenterSession
from chargeghar_core.renters.repository import RenterRepository, SessionRepository

logger = structlog.get_logger(__name__)

_PHONE = re.compile(r"^\+?[0-9]{7,15}$")
# users.email is required and unique; a renter who signs up with a phone only gets this reserved,
# undeliverable address (RFC 2606 ".invalid") so the staff accounts table needs no change.
_PHONE_ONLY_EMAIL_DOMAIN = "phone.renters.invalid"
_DELETED_EMAIL_DOMAIN = "deleted.renters.invalid"
# Not an argon2 hash: verifying any password against it fails (accounts made by a login code).
NO_PASSWORD = "!no-password"  # noqa: S105 - a marker, not a credential


def is_placeholder_email(email: str) -> bool:
    return email.endswith(".invalid")


def phone_only_email(phone: str) -> str:
    return f"{phone}@{_PHONE_ONLY_EMAIL_DOMAIN}"


class AccountNotDeletable(Conflict):
    code = "ACCOUNT_NOT_DELETABLE"


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
        self.sessions = SessionRepository(renters.session)
        self.tokens = tokens

    async def register(
        self, *, email: str | None, phone: str | None, password: str, display_name: str
    ) -> tuple[User, RenterProfile, TokenPair]:
        if not email and not phone:
            raise ValidationFailed("Give an e-mail address or a phone number")
        normalised_phone = normalise_phone(phone) if phone else None
        normalised_email = email.strip().lower() if email else phone_only_email(normalised_phone or "")
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
        await notify(self.renters.session, Event.ACCOUNT_CREATED, user.id, key="welcome")
        return user, profile, await self.start_session(user)

    async def create_for_login_code(
        self, *, email: str | None, phone: str | None
    ) -> tuple[User, RenterProfile]:
        """The account of a first login by code: no password, the verified address as login."""
        user = User(
            id=uuid.uuid4(),
            email=email or phone_only_email(phone or ""),
            full_name="",
            password_hash=NO_PASSWORD,
            role=Role.RENTER.value,
            is_active=True,
            token_generation=0,
        )
        profile = RenterProfile(
            user_id=user.id, phone=phone, display_name="", status=AccountStatus.ACTIVE.value
        )
        await self.renters.add(user, profile)
        logger.info("renter_registered", user_id=str(user.id), by="login_code")
        await notify(self.renters.session, Event.ACCOUNT_CREATED, user.id, key="welcome")
        return user, profile

    async def login(
        self, *, login: str, password: str, device_name: str = "", platform: str = ""
    ) -> tuple[User, RenterProfile, TokenPair]:
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
        return user, profile, await self.start_session(user, device_name=device_name, platform=platform)

    async def refresh(self, refresh_token: str) -> tuple[User, RenterProfile, TokenPair]:
        claims = self.tokens.decode(refresh_token, "refresh")
        found = await self.renters.get(claims.user_id)
        if found is None or not found[0].is_active or found[1].status != AccountStatus.ACTIVE.value:
            raise Unauthorized("Account not active")
        user, profile = found
        if claims.generation != user.token_generation:
            raise Unauthorized("Refresh token revoked")
        device = None
        if claims.family is not None:
            device = await self.sessions.get_session(_family_id(claims.family), lock=True)
            if device is None or device.user_id != user.id or device.revoked_at is not None:
                raise Unauthorized("Session ended; log in again")
        if not await self.users.claim_refresh_token(
            jti=claims.jti, user_id=user.id, expires_at=claims.expires_at
        ):
            await self.users.revoke_refresh_tokens(user.id)
            raise RefreshTokenReused()
        if device is None:
            # A token from before sessions existed: it becomes a session from now on.
            return user, profile, await self.start_session(user)
        device.last_seen_at = utcnow()
        await self.renters.session.flush()
        return user, profile, self._issue(user, device.id)

    # ================================================================== sessions and devices

    async def start_session(self, user: User, *, device_name: str = "", platform: str = "") -> TokenPair:
        now = utcnow()
        device = await self.sessions.add_session(
            RenterSession(
                id=uuid.uuid4(),
                user_id=user.id,
                device_name=device_name[:100],
                platform=platform[:16],
                created_at=now,
                last_seen_at=now,
            )
        )
        return self._issue(user, device.id)

    async def logout(self, claims: TokenClaims) -> None:
        """End the calling device's session: its refresh tokens are refused from now on. A token without
        a session (issued before sessions existed) ends every session of the account."""
        if claims.family is None:
            await self.users.revoke_refresh_tokens(claims.user_id)
            return
        device = await self.sessions.get_session(_family_id(claims.family), lock=True)
        if device is not None and device.user_id == claims.user_id:
            device.revoked_at = device.revoked_at or utcnow()
            device.push_token = None
            await self.renters.session.flush()

    async def devices(self, user_id: uuid.UUID) -> list[RenterSession]:
        return await self.sessions.live_sessions(user_id)

    async def register_push_token(
        self, claims: TokenClaims, *, push_token: str, device_name: str | None, platform: str | None
    ) -> RenterSession:
        if claims.family is None:
            raise Unauthorized("This token has no session; log in again to register a device")
        device = await self.sessions.get_session(_family_id(claims.family), lock=True)
        if device is None or device.user_id != claims.user_id or device.revoked_at is not None:
            raise Unauthorized("Session ended; log in again")
        await self.sessions.release_push_token(push_token, keep=device.id)
        device.push_token = push_token
        if device_name is not None:
            device.device_name = device_name[:100]
        if platform is not None:
            device.platform = platform[:16]
        device.last_seen_at = utcnow()
        await self.renters.session.flush()
        return device

    async def revoke_device(self, user_id: uuid.UUID, device_id: uuid.UUID) -> None:
        device = await self.sessions.get_session(device_id, lock=True)
        if device is None or device.user_id != user_id or device.revoked_at is not None:
            raise NotFound("No such device", code="DEVICE_NOT_FOUND")
        device.revoked_at = utcnow()
        device.push_token = None
        await self.renters.session.flush()

    # ================================================================== preferences

    async def preferences(self, user_id: uuid.UUID) -> NotificationPreference:
        await self.profile(user_id)
        return await preferences(self.renters.session, user_id)

    async def update_preferences(
        self,
        user_id: uuid.UUID,
        *,
        language: str | None,
        push: bool | None,
        sms: bool | None,
        email: bool | None,
    ) -> NotificationPreference:
        await self.profile(user_id)
        prefs = await self.renters.session.get(NotificationPreference, user_id)
        if prefs is None:
            prefs = await preferences(self.renters.session, user_id)
            self.renters.session.add(prefs)
        if language is not None:
            prefs.language = language
        if push is not None:
            prefs.push_enabled = push
        if sms is not None:
            prefs.sms_enabled = sms
        if email is not None:
            prefs.email_enabled = email
        prefs.modified_at = utcnow()
        await self.renters.session.flush()
        return prefs

    # ================================================================== deletion

    async def delete_account(self, user_id: uuid.UUID, *, destination_hashes: list[str]) -> None:
        """Anonymise the account (app stores require deletion); rentals, payments and the ledger stay, as
        the law requires, tied to an id that no longer names anybody. Refused while a rental is open or
        money is owed."""
        user, profile = await self.profile(user_id)
        if await self.sessions.has_open_rental(user_id):
            raise AccountNotDeletable("End your rental before deleting the account", code="RENTAL_OPEN")
        dues = await self.sessions.dues_paisa(user_id)
        balance = await WalletService(self.renters.session).balance(user_id)
        if dues > 0 or balance < 0:
            raise AccountNotDeletable(
                "Pay what you owe before deleting the account",
                code="DUES_OUTSTANDING",
                details={"dues_paisa": dues, "wallet_balance_paisa": balance},
            )
        farewell: dict[Channel, str] = {}
        if not is_placeholder_email(user.email):
            farewell[Channel.EMAIL] = user.email
        if profile.phone:
            farewell[Channel.SMS] = profile.phone
        await self.sessions.drop_notifications(user_id)
        await self.sessions.delete_sessions(user_id)
        await self.sessions.delete_challenges(destination_hashes)
        now = utcnow()
        user.email = f"deleted-{user.id.hex}@{_DELETED_EMAIL_DOMAIN}"
        user.full_name = ""
        user.password_hash = NO_PASSWORD
        user.is_active = False
        user.token_generation += 1
        profile.phone = None
        profile.display_name = ""
        profile.status_reason = "deleted by the renter"
        profile.deleted_at = now
        await self.renters.session.flush()
        await notify(
            self.renters.session, Event.ACCOUNT_DELETED, user_id, key="deleted", destinations=farewell
        )
        logger.info("renter_deleted", user_id=str(user_id))

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
            if normalised != profile.phone:
                # Told on the old number and the e-mail: a hijacked session changing it must be noticed.
                notice: dict[Channel, str] = {}
                if profile.phone:
                    notice[Channel.SMS] = profile.phone
                if not is_placeholder_email(user.email):
                    notice[Channel.EMAIL] = user.email
                await notify(
                    self.renters.session,
                    Event.ACCOUNT_CHANGED,
                    user.id,
                    key=f"phone:{uuid.uuid4().hex}",
                    payload={"change": "phone"},
                    destinations=notice,
                )
            profile.phone = normalised
        await self.renters.session.flush()
        return user, profile

    async def set_status(
        self, user_id: uuid.UUID, status: AccountStatus, reason: str | None, *, actor: TokenClaims
    ) -> tuple[User, RenterProfile]:
        """A staff member's decision, audited in the same transaction (admin API and console alike)."""
        user, profile = await self.profile(user_id)
        previous = profile.status
        profile.status = status.value
        profile.status_reason = reason
        if status is AccountStatus.SUSPENDED:
            # Suspension ends every session: refresh tokens issued before are refused from now on.
            await self.users.revoke_refresh_tokens(user.id)
        await notify(
            self.renters.session,
            Event.ACCOUNT_CHANGED,
            user.id,
            key=f"status:{uuid.uuid4().hex}",
            payload={"change": "status", "status": status.value},
        )
        await self.renters.session.flush()
        await record_staff_action(
            self.renters.session,
            actor=actor,
            action="renter.status",
            target_type="renter",
            target_id=str(user.id),
            details={"status_before": previous, "status": status.value, "reason": reason},
            outcome="applied",
        )
        return await self.profile(user_id)

    def _issue(self, user: User, session_id: uuid.UUID) -> TokenPair:
        return self.tokens.issue_pair(
            user_id=user.id,
            role=Role.RENTER,
            email=user.email,
            generation=user.token_generation,
            family=session_id.hex,
        )


def _family_id(family: str) -> uuid.UUID:
    try:
        return uuid.UUID(hex=family)
    except ValueError as exc:
        raise Unauthorized("Invalid token claims") from exc
