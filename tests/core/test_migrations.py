"""The migrations run forwards and backwards, and leave the schema the models describe."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from chargeghar_core.kit.db import create_engine
from chargeghar_core.kit.migrate import alembic_config, migrate
from chargeghar_core.models import Base
from chargeghar_core.settings import DatabaseSettings
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

CORE_TABLES = {
    "users",
    "used_refresh_tokens",
    "stations",
    "station_slots",
    "power_banks",
    "power_bank_models",
    "station_status_history",
    "sync_logs",
    "processed_events",
    "devices",
    "staff_audit_log",
}


def _table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


def _core_differences(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    # Other domains add their own tables in later revisions; only core's own tables are compared here.
    return [
        diff
        for diff in compare_metadata(context, Base.metadata)
        if CORE_TABLES & set(map(str, _flatten(diff)))
    ]


def _flatten(diff: object) -> list[object]:
    parts: list[object] = []
    stack = [diff]
    while stack:
        item = stack.pop()
        if isinstance(item, tuple | list):
            stack.extend(item)
        else:
            parts.append(getattr(item, "name", item))
            table = getattr(item, "table", None)
            if table is not None:
                parts.append(table.name)
    return parts


async def test_upgrade_downgrade_upgrade_on_sqlite(tmp_path: Path) -> None:
    settings = DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'mig.sqlite3'}")
    await migrate(settings)
    engine = create_engine(settings)
    try:
        async with engine.connect() as connection:
            assert CORE_TABLES <= await connection.run_sync(_table_names)
            assert await connection.run_sync(_core_differences) == []

        def downgrade(connection: Connection) -> None:
            config = alembic_config(settings)
            config.attributes["connection"] = connection
            command.downgrade(config, "base")

        async with engine.begin() as connection:
            await connection.run_sync(downgrade)
        async with engine.connect() as connection:
            assert not (CORE_TABLES & await connection.run_sync(_table_names))
    finally:
        await engine.dispose()
    await migrate(settings)
