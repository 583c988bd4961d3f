"""Login by one-time code sent to a phone (SMS) or an e-mail address; the first verified login registers.

- Codes are 6 random digits, stored only as HMAC-SHA256 bound to their challenge, valid ``otp_ttl_s``,
  spent by the first correct use, dead after ``otp_max_attempts`` wrong ones; a new code retires the older.
- Requests are rate-limited per destination and per client address, checks per client address.
- No enumeration: a request is answered the same way whether or not an account exists (or may log in);
  codes to suspended or deleted accounts are simply not sent.
- The code travels in the notification outbox sealed (Fernet) and is erased once delivered; logs only
  ever show the masked destination.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

import structlog

from chargeghar_core.auth.models import User
from chargeghar_core.auth.tokens import TokenPair
from chargeghar_core.kit.db import utcnow
from chargeghar_core.kit.errors import RateLimited, Unauthorized, ValidationFailed
from chargeghar_core.kit.ratelimit import RateLimiter
from chargeghar_core.notifications.models import Channel
from chargeghar_core.notifications.outbox import notify_login_code
from chargeghar_core.notifications.sealing import OtpKeys, mask_destination
from chargeghar_core.renters.models import AccountStatus, OtpChallenge, RenterProfile
from chargeghar_core.renters.service import RenterService, normalise_phone, phone_only_email
from chargeghar_core.settings import NotificationSettings

logger = structlog.get_logger(__name__)

CODE_DIGITS = 6
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class InvalidLoginCode(Unauthorized):
    """Wrong, expired, spent or unknown code. Returned by the endpoint (not raised through the request
    session) so that the counted attempt is committed with the answer."""

    code = "INVALID_CODE"

    def __init__(self) -> None:
        super().__init__("Invalid or expired code")


@dataclass(frozen=True, slots=True)
class Destination:
    channel: Channel
    address: str  # normalised: lower-case e-mail or +E.164 phone

    @classmethod
    def parse(cls, raw: str) -> Destination:
        text = raw.strip()
        if "@" in text:
            if not _EMAIL.fullmatch(text) or text.lower().endswith(".invalid"):
                raise ValidationFailed(
                    "Invalid e-mail address",
                    details={"body.destination": ["Not an e-mail address"]},
                )
            return cls(Channel.EMAIL, text.lower())
        return cls(Channel.SMS, normalise_phone(text))


@dataclass(frozen=True, slots=True)
class CodeSent:
    destination: str  # masked
    channel: Channel
    expires_in_s: int


class OtpLogin:
    def __init__(
        self,
        renters: RenterService,
        settings: NotificationSettings,
        keys: OtpKeys,
        limiter: RateLimiter,
    ) -> None:
        self.renters = renters
        self.settings = settings
        self.keys = keys
        self.limiter = limiter

    async def _limit(self, key: str, limit: int) -> None:
        decision = await self.limiter.hit(key, limit, self.settings.otp_window_s)
        if not decision.allowed:
            raise RateLimited(decision.retry_after_s)

    async def request_code(self, raw_destination: str, *, language: str, client: str) -> CodeSent:
        destination = Destination.parse(raw_destination)
        lookup = self.keys.destination_hash(destination.address)
        await self._limit(f"otp:send:client:{client}", self.settings.otp_requests_per_client)
        await self._limit(f"otp:send:dest:{lookup}", self.settings.otp_requests_per_destination)
        answer = CodeSent(mask_destination(destination.address), destination.channel, self.settings.otp_ttl_s)
        found = await self._account(destination)
        if found is not None and not _may_log_in(*found):
            logger.info("otp_not_sent_account_inactive", destination=answer.destination)
            return answer
        now = utcnow()
        repo = self.renters.sessions
        await repo.retire_challenges(lookup, now)
        challenge_id = uuid.uuid4()
        code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
        await repo.add_challenge(
            OtpChallenge(
                id=challenge_id,
                destination_hash=lookup,
                channel=destination.channel.value,
                code_hash=self.keys.code_hash(challenge_id.hex, code),
                attempts=0,
                created_at=now,
                expires_at=now + timedelta(seconds=self.settings.otp_ttl_s),
            )
        )
        await notify_login_code(
            self.renters.renters.session,
            challenge_id=challenge_id,
            channel=destination.channel,
            destination=destination.address,
            sealed_code=self.keys.seal(code),
            language=language,
            minutes=max(1, self.settings.otp_ttl_s // 60),
            user_id=found[0].id if found else None,
        )
        logger.info("otp_requested", destination=answer.destination, channel=destination.channel.value)
        return answer

    async def verify(
        self, raw_destination: str, code: str, *, client: str, device_name: str, platform: str
    ) -> tuple[User, RenterProfile, TokenPair, bool]:
        """The account (created on the first login) and a token pair; raises InvalidLoginCode."""
        destination = Destination.parse(raw_destination)
        lookup = self.keys.destination_hash(destination.address)
        await self._limit(f"otp:check:client:{client}", self.settings.otp_verifications_per_client)
        now = utcnow()
        challenge = await self.renters.sessions.live_challenge(lookup, now)
        if challenge is None:
            raise InvalidLoginCode()
        challenge.attempts += 1
        if not self.keys.code_matches(challenge.id.hex, code, challenge.code_hash):
            if challenge.attempts >= self.settings.otp_max_attempts:
                challenge.consumed_at = now  # dead: ask for a new code
                logger.warning("otp_attempts_exhausted", destination=mask_destination(destination.address))
            await self.renters.renters.session.flush()
            raise InvalidLoginCode()
        challenge.consumed_at = now
        found = await self._account(destination)
        created = found is None
        if found is None:
            found = await self.renters.create_for_login_code(
                email=destination.address if destination.channel is Channel.EMAIL else None,
                phone=destination.address if destination.channel is Channel.SMS else None,
            )
        user, profile = found
        if not _may_log_in(user, profile):
            await self.renters.renters.session.flush()
            raise InvalidLoginCode()
        user.last_login_at = now
        await self.renters.renters.session.flush()
        pair = await self.renters.start_session(user, device_name=device_name, platform=platform)
        logger.info("otp_login", user_id=str(user.id), created=created)
        return user, profile, pair, created

    async def _account(self, destination: Destination) -> tuple[User, RenterProfile] | None:
        repo = self.renters.renters
        if destination.channel is Channel.EMAIL:
            return await repo.by_email(destination.address)
        found = await repo.by_phone(destination.address)
        return found or await repo.by_email(phone_only_email(destination.address))


def _may_log_in(user: User, profile: RenterProfile) -> bool:
    return user.is_active and profile.status == AccountStatus.ACTIVE.value and profile.deleted_at is None
