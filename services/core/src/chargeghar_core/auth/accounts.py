"""Account creation outside a request (the CLI): one session, committed once."""

from __future__ import annotations

import uuid

from chargeghar_core.auth.models import Role
from chargeghar_core.auth.repository import UserRepository
from chargeghar_core.auth.service import AuthService
from chargeghar_core.auth.tokens import TokenService
from chargeghar_core.kit.db import create_engine, create_sessionmaker
from chargeghar_core.settings import Settings


async def create_account(
    settings: Settings, email: str, password: str, role: Role, full_name: str = ""
) -> uuid.UUID:
    engine = create_engine(settings.db)
    try:
        async with create_sessionmaker(engine)() as session:
            service = AuthService(UserRepository(session), TokenService(settings.jwt))
            user = await service.create_user(email=email, password=password, role=role, full_name=full_name)
            await session.commit()
            return user.id
    finally:
        await engine.dispose()
