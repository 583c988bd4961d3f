"""Every query of the renters domain."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.auth.models import Role, User
from chargeghar_core.kit.db import LIKE_ESCAPE, dialect_name, like_contains
from chargeghar_core.notifications.models import NotificationOutbox, NotificationPreference
from chargeghar_core.rentals.models import OPEN_STATUSES, Rental
from chargeghar_core.renters.models import AccountStatus, OtpChallenge, RenterProfile, RenterSession


class RenterRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def is_active_renter(self, user_id: uuid.UUID) -> bool:
        row = await self.session.execute(
            select(User.is_active, RenterProfile.status)
            .join(RenterProfile, RenterProfile.user_id == User.id)
            .where(User.id == user_id, User.role == Role.RENTER.value)
        )
        found = row.first()
        return found is not None and bool(found[0]) and found[1] == AccountStatus.ACTIVE.value

    async def get(self, user_id: uuid.UUID) -> tuple[User, RenterProfile] | None:
        rows = await self.session.execute(
            select(User, RenterProfile)
            .join(RenterProfile, RenterProfile.user_id == User.id)
            .where(User.id == user_id, User.role == Role.RENTER.value)
            .execution_options(populate_existing=True)
        )
        found = rows.first()
        return None if found is None else (found[0], found[1])

    async def by_email(self, email: str) -> tuple[User, RenterProfile] | None:
        rows = await self.session.execute(
            select(User, RenterProfile)
            .join(RenterProfile, RenterProfile.user_id == User.id)
            .where(User.email == email.strip().lower())
        )
        found = rows.first()
        return None if found is None else (found[0], found[1])

    async def by_phone(self, phone: str) -> tuple[User, RenterProfile] | None:
        rows = await self.session.execute(
            select(User, RenterProfile)
            .join(RenterProfile, RenterProfile.user_id == User.id)
            .where(RenterProfile.phone == phone)
        )
        found = rows.first()
        return None if found is None else (found[0], found[1])

    async def email_taken(self, email: str) -> bool:
        return (await self.session.scalar(select(User.id).where(User.email == email))) is not None

    async def phone_taken(self, phone: str) -> bool:
        return (
            await self.session.scalar(select(RenterProfile.user_id).where(RenterProfile.phone == phone))
        ) is not None

    async def add(self, user: User, profile: RenterProfile) -> None:
        self.session.add(user)
        await self.session.flush()
        self.session.add(profile)
        await self.session.flush()

    async def search(
        self, *, search: str | None, limit: int, offset: int
    ) -> tuple[list[tuple[User, RenterProfile]], int]:
        query = select(User, RenterProfile).join(RenterProfile, RenterProfile.user_id == User.id)
        if search:
            pattern = like_contains(search)
            query = query.where(
                func.lower(User.email).like(pattern, escape=LIKE_ESCAPE)
                | func.coalesce(RenterProfile.phone, "").like(pattern, escape=LIKE_ESCAPE)
                | func.lower(RenterProfile.display_name).like(pattern, escape=LIKE_ESCAPE)
            )
        total = await self.session.scalar(select(func.count()).select_from(query.subquery()))
        rows = await self.session.execute(query.order_by(User.created_at.desc()).limit(limit).offset(offset))
        return [(user, profile) for user, profile in rows], int(total or 0)


class SessionRepository:
    """Renter sessions (devices), login codes and the checks account deletion needs."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_session(self, row: RenterSession) -> RenterSession:
        self.session.add(row)
        await self.session.flush()
        return row

    async def get_session(self, session_id: uuid.UUID, *, lock: bool = False) -> RenterSession | None:
        query = (
            select(RenterSession)
            .where(RenterSession.id == session_id)
            .execution_options(populate_existing=True)
        )
        if lock and dialect_name(self.session) == "postgresql":
            query = query.with_for_update()
        return await self.session.scalar(query)

    async def live_sessions(self, user_id: uuid.UUID) -> list[RenterSession]:
        rows = await self.session.scalars(
            select(RenterSession)
            .where(RenterSession.user_id == user_id, RenterSession.revoked_at.is_(None))
            .order_by(RenterSession.last_seen_at.desc())
        )
        return list(rows)

    async def release_push_token(self, token: str, *, keep: uuid.UUID) -> None:
        """A device token belongs to one session: the app reinstalled or another renter logged in."""
        await self.session.execute(
            update(RenterSession)
            .where(RenterSession.push_token == token, RenterSession.id != keep)
            .values(push_token=None)
        )

    async def delete_sessions(self, user_id: uuid.UUID) -> None:
        await self.session.execute(delete(RenterSession).where(RenterSession.user_id == user_id))

    async def add_challenge(self, challenge: OtpChallenge) -> None:
        self.session.add(challenge)
        await self.session.flush()

    async def retire_challenges(self, destination_hash: str, now: datetime) -> None:
        """Only the newest code of a destination is valid."""
        await self.session.execute(
            update(OtpChallenge)
            .where(OtpChallenge.destination_hash == destination_hash, OtpChallenge.consumed_at.is_(None))
            .values(consumed_at=now)
        )

    async def live_challenge(self, destination_hash: str, now: datetime) -> OtpChallenge | None:
        query = (
            select(OtpChallenge)
            .where(
                OtpChallenge.destination_hash == destination_hash,
                OtpChallenge.consumed_at.is_(None),
                OtpChallenge.expires_at > now,
            )
            .order_by(OtpChallenge.created_at.desc())
            .limit(1)
            .execution_options(populate_existing=True)
        )
        if dialect_name(self.session) == "postgresql":
            query = query.with_for_update()
        return await self.session.scalar(query)

    async def delete_challenges(self, destination_hashes: list[str]) -> None:
        await self.session.execute(
            delete(OtpChallenge).where(OtpChallenge.destination_hash.in_(destination_hashes))
        )

    async def has_open_rental(self, user_id: uuid.UUID) -> bool:
        found = await self.session.scalar(
            select(Rental.id).where(Rental.user_id == user_id, Rental.status.in_(OPEN_STATUSES)).limit(1)
        )
        return found is not None

    async def dues_paisa(self, user_id: uuid.UUID) -> int:
        total = await self.session.scalar(
            select(func.coalesce(func.sum(Rental.amount_due_paisa), 0)).where(Rental.user_id == user_id)
        )
        return int(total or 0)

    async def drop_notifications(self, user_id: uuid.UUID) -> None:
        """Undelivered notifications of a deleted account are not sent; its preferences go."""
        await self.session.execute(
            update(NotificationOutbox)
            .where(NotificationOutbox.user_id == user_id, NotificationOutbox.status == "PENDING")
            .values(status="SKIPPED", destination=None, sealed_secret=None, last_error="account deleted")
        )
        await self.session.execute(
            delete(NotificationPreference).where(NotificationPreference.user_id == user_id)
        )
