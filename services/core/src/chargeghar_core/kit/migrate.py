"""Run the alembic migrations from code: the `migrate` start-up step and the dev auto-migration."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import structlog
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from chargeghar_core.settings import DatabaseSettings

logger = structlog.get_logger(__name__)

# services/core/src/chargeghar_core/kit/migrate.py → the repository root holds alembic.ini + migrations/.
_REPOSITORY_ROOT = Path(__file__).resolve().parents[5]


# Key of the PostgreSQL advisory lock that serialises migrations (any fixed bigint; "cg-migr" in ASCII).
MIGRATION_LOCK_KEY = 0x63672D6D69677200
# Longest wait for another replica's migration before this one gives up (and its container restarts).
MIGRATION_LOCK_TIMEOUT_S = 600.0


class MigrationSetupError(RuntimeError):
    """alembic.ini or the migrations folder cannot be found."""


class MigrationLockTimeout(RuntimeError):
    """Another process kept the migration lock longer than the timeout."""


def alembic_config(settings: DatabaseSettings) -> Config:
    ini_path = Path(settings.alembic_ini) if settings.alembic_ini else _REPOSITORY_ROOT / "alembic.ini"
    if not ini_path.is_file():
        raise MigrationSetupError(f"alembic.ini not found at {ini_path} (set CORE_DB__ALEMBIC_INI)")
    config = Config(str(ini_path))
    config.set_main_option("sqlalchemy.url", settings.url)
    return config


def _upgrade_on_connection(connection: Connection, config: Config, revision: str) -> None:
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def upgrade_database(
    engine: AsyncEngine,
    settings: DatabaseSettings,
    revision: str = "head",
    lock_timeout_s: float = MIGRATION_LOCK_TIMEOUT_S,
) -> None:
    """``alembic upgrade <revision>`` over one connection of ``engine`` (safe inside a running loop).

    On PostgreSQL the upgrade runs under a cluster-wide advisory lock, so replicas starting at once
    migrate one after the other (the later ones find the database at head and do nothing).
    """
    config = alembic_config(settings)
    async with _migration_lock(engine, lock_timeout_s):
        async with engine.begin() as connection:
            await connection.run_sync(_upgrade_on_connection, config, revision)
    logger.info("database_migrated", revision=revision)


@asynccontextmanager
async def _migration_lock(engine: AsyncEngine, timeout_s: float) -> AsyncIterator[None]:
    if engine.dialect.name != "postgresql":
        yield  # SQLite is the single-node setup: one process migrates
        return
    # A session-level lock on a connection of its own: it survives the commits alembic makes on the
    # migration connection, and PostgreSQL frees it when this process dies mid-migration.
    async with engine.connect() as lock_connection:
        lock_connection = await lock_connection.execution_options(isolation_level="AUTOCOMMIT")
        deadline = time.monotonic() + timeout_s
        waiting_logged = False
        while not await lock_connection.scalar(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
        ):
            if time.monotonic() >= deadline:
                raise MigrationLockTimeout(
                    f"another process held the migration lock for more than {timeout_s:.0f} s"
                )
            if not waiting_logged:
                logger.info("migration_lock_wait", detail="another replica is migrating")
                waiting_logged = True
            await asyncio.sleep(0.5)
        try:
            yield
        finally:
            await lock_connection.execute(
                text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )


async def wait_for_database(engine: AsyncEngine, timeout_s: float) -> None:
    """Retry ``SELECT 1`` until the server answers (containers start in any order) or time runs out."""
    deadline = time.monotonic() + timeout_s
    attempt = 0
    while True:
        attempt += 1
        try:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            return
        except Exception as exc:
            if time.monotonic() >= deadline:
                raise
            logger.warning("database_not_ready", attempt=attempt, error=str(exc))
            await asyncio.sleep(min(2.0, 0.25 * attempt))


async def migrate(settings: DatabaseSettings, revision: str = "head") -> None:
    """The start-up step: wait for the database, then upgrade it."""
    if settings.is_sqlite:
        ensure_sqlite_directory(settings.url)
    engine = create_async_engine(settings.url)
    try:
        await wait_for_database(engine, settings.wait_timeout_s)
        await upgrade_database(engine, settings, revision)
    finally:
        await engine.dispose()


def ensure_sqlite_directory(url: str) -> None:
    # sqlite+aiosqlite:///./var/dev/core.sqlite3 → ./var/dev must exist before the first connect.
    path = url.split(":///", 1)[-1].split("?", 1)[0]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
