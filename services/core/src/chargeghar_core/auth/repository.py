"""Every query of the auth domain."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.auth.models import UsedRefreshToken, User


class UserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_by_email(self, email: str) -> User | None:
        result = await self.session.execute(select(User).where(User.email == email.strip().lower()))
        return result.scalar_one_or_none()

    async def get(self, user_id: uuid.UUID) -> User | None:
        return await self.session.get(User, user_id)

    async def add(self, user: User) -> User:
        self.session.add(user)
        await self.session.flush()
        return user

    async def claim_refresh_token(self, *, jti: str, user_id: uuid.UUID, expires_at: datetime) -> bool:
        """Record a refresh token as spent. False when it had been spent already (a replay)."""
        try:
            async with self.session.begin_nested():
                self.session.add(UsedRefreshToken(jti=jti, user_id=user_id, expires_at=expires_at))
        except IntegrityError:
            return False
        return True

    async def revoke_refresh_tokens(self, user_id: uuid.UUID) -> None:
        await self.session.execute(
            update(User).where(User.id == user_id).values(token_generation=User.token_generation + 1)
        )
