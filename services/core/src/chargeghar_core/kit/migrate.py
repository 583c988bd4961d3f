"""Run the alembic migrations from code: the `migrate` start-up step and the dev auto-migration."""

from __future__ import annotations

import asyncio
import time
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


class MigrationSetupError(RuntimeError):
    """alembic.ini or the migrations folder cannot be found."""


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


async def upgrade_database(engine: AsyncEngine, settings: DatabaseSettings, revision: str = "head") -> None:
    """``alembic upgrade <revision>`` over one connection of ``engine`` (safe inside a running loop)."""
    config = alembic_config(settings)
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade_on_connection, config, revision)
    logger.info("database_migrated", revision=revision)


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
    # sqlite+aiosqlite:///./var/core.sqlite3 → ./var must exist before the first connect.
    path = url.split(":///", 1)[-1].split("?", 1)[0]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
