"""Every query of the renters domain."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.auth.models import Role, User
from chargeghar_core.renters.models import AccountStatus, RenterProfile


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
            pattern = f"%{search.lower()}%"
            query = query.where(
                func.lower(User.email).like(pattern)
                | func.coalesce(RenterProfile.phone, "").like(pattern)
                | func.lower(RenterProfile.display_name).like(pattern)
            )
        total = await self.session.scalar(select(func.count()).select_from(query.subquery()))
        rows = await self.session.execute(query.order_by(User.created_at.desc()).limit(limit).offset(offset))
        return [(user, profile) for user, profile in rows], int(total or 0)
