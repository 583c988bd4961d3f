"""Rentals test fixtures: the session's database migrated once with alembic, each test isolated by an outer
transaction rolled back at the end (request, popup-task and event sessions join it in savepoint mode), a
fake ingest on a free port, and a second, committed database for the real-concurrency tests."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest
from chargeghar_core.kit.db import create_engine
from chargeghar_core.kit.migrate import migrate
from chargeghar_core.settings import DatabaseSettings
from rentals_support import (
    FakeIngest,
    RentalsClient,
    rental_settings,
    running_fake_ingest,
    running_rentals_app,
)
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker


@pytest.fixture(scope="session")
def rentals_database_url(database_url: str) -> str:
    """The session's database: PostgreSQL when reachable (always in CI), otherwise SQLite."""
    return database_url


@pytest.fixture
async def fake_ingest() -> AsyncIterator[FakeIngest]:
    async with running_fake_ingest() as ingest:
        yield ingest


@pytest.fixture
async def client(
    rentals_database_url: str, test_sessionmaker: async_sessionmaker[AsyncSession], fake_ingest: FakeIngest
) -> AsyncIterator[RentalsClient]:
    async with running_rentals_app(
        rentals_database_url, rental_settings(fake_ingest.base_url), sessionmaker=test_sessionmaker
    ) as rentals_client:
        yield rentals_client


# --------------------------------------------------------------------------------------------- committed DB


def _admin_url() -> str:
    return os.environ.get("TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
async def rentals_committed_url(
    rentals_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """A second database whose commits are real (for concurrent sessions), migrated once."""
    if not rentals_database_url.startswith("postgresql"):
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('rentals_committed') / 'core.sqlite3'}"
        await migrate(DatabaseSettings(url=url))
        yield url
        return
    import asyncpg

    name = f"cg_rentals_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(_admin_url(), timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    parts = urlsplit(rentals_database_url)
    url = urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
    await migrate(DatabaseSettings(url=url))
    try:
        yield url
    finally:
        admin = await asyncpg.connect(_admin_url(), timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def committed_engine(rentals_committed_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(DatabaseSettings(url=rentals_committed_url))
    yield engine
    await engine.dispose()
