"""Core test fixtures: one database migrated once per session with alembic, each test isolated by an outer
transaction that is rolled back, and API clients on ``httpx.ASGITransport`` whose request sessions join
that transaction in savepoint mode (so a request's commit is a RELEASE SAVEPOINT).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from chargeghar_core.kit.db import create_engine
from chargeghar_core.kit.migrate import migrate
from chargeghar_core.settings import (
    DatabaseSettings,
)
from core_support import CoreClient, StatementCounter, make_settings, running_client
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

# --------------------------------------------------------------------------------------------- database


@pytest.fixture(scope="session")
def core_database_url(database_url: str) -> str:
    """The session's database: PostgreSQL when reachable (always in CI), otherwise SQLite."""
    return database_url


# --------------------------------------------------------------------------------------------- both dialects
# For the tests of the statements themselves: each runs on SQLite and on PostgreSQL (marked ``postgres``:
# skipped without a server, required in CI), so the dialect-specific statements are held to one behaviour.


@pytest.fixture(scope="session")
async def sqlite_dialect_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('both_dialects') / 'core.sqlite3'}"
    await migrate(DatabaseSettings(url=url))
    return url


@pytest.fixture(scope="session")
async def postgres_dialect_url(postgres_url: str) -> str:
    await migrate(DatabaseSettings(url=postgres_url))
    return postgres_url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def dialect_url(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_dialect_url" if request.param == "sqlite" else "postgres_dialect_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
async def dialect_engine(dialect_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(DatabaseSettings(url=dialect_url))
    yield engine
    await engine.dispose()


@pytest.fixture
async def dialect_db(dialect_engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """A session on either dialect inside a transaction that is rolled back after the test."""
    async with dialect_engine.connect() as connection:
        outer = await connection.begin()
        maker = async_sessionmaker(bind=connection, join_transaction_mode="create_savepoint", autoflush=False)
        async with maker() as session:
            yield session
        await outer.rollback()


# --------------------------------------------------------------------------------------------- app + client


@pytest.fixture
async def client(
    core_database_url: str, test_sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[CoreClient]:
    async with running_client(
        make_settings(core_database_url), sessionmaker=test_sessionmaker
    ) as core_client:
        yield core_client


@pytest.fixture
def client_factory(
    core_database_url: str, test_sessionmaker: async_sessionmaker[AsyncSession]
) -> Callable[..., Any]:
    """``async with client_factory(internal=InternalSettings(...)) as c:`` — a client with other settings."""

    def factory(*, client_host: str = "127.0.0.1", **overrides: Any) -> Any:
        return running_client(
            make_settings(core_database_url, **overrides),
            sessionmaker=test_sessionmaker,
            client_host=client_host,
        )

    return factory


# --------------------------------------------------------------------------------------------- committed DB


def _admin_url() -> str:
    return os.environ.get("TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
async def committed_database_url(
    core_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """A second database for the few tests that need real commits (never rolled back), migrated once."""
    database_url = core_database_url
    if not database_url.startswith("postgresql"):
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('committed') / 'core.sqlite3'}"
        await migrate(DatabaseSettings(url=url))
        yield url
        return
    import asyncpg

    name = f"cg_core_commit_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(_admin_url(), timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    parts = urlsplit(database_url)
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


# --------------------------------------------------------------------------------------------- statements


@pytest.fixture
def statement_counter(db_connection: AsyncConnection) -> Iterator[StatementCounter]:
    counter = StatementCounter()
    sync_connection = db_connection.sync_connection
    assert sync_connection is not None
    event.listen(sync_connection, "before_cursor_execute", counter)
    try:
        yield counter
    finally:
        event.remove(sync_connection, "before_cursor_execute", counter)
