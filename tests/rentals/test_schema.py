"""The hand-reviewed migration and the models of the rentals, payments, pricing and renters domains agree
(alembic's autogenerate comparison finds nothing to change in their tables)."""

from __future__ import annotations

from typing import Any

import chargeghar_core.models  # noqa: F401 - the tables the rentals domain references
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from chargeghar_core.kit.db import Base
from chargeghar_core.rentals import all_models
from sqlalchemy.ext.asyncio import AsyncEngine

OUR_TABLES = {model.__tablename__ for model in (getattr(all_models, name) for name in all_models.__all__)}


def _table_of(diff: Any) -> str | None:
    if isinstance(diff, list):  # column-level changes come grouped
        return _table_of(diff[0])
    for part in diff[1:]:
        name = getattr(part, "name", None) if not isinstance(part, str) else None
        table = getattr(part, "table", None)
        if table is not None:
            return str(table.name)
        if name in OUR_TABLES:
            return str(name)
        if isinstance(part, str) and part in OUR_TABLES:
            return part
    return None


async def test_migration_matches_the_models(migrated_engine: AsyncEngine) -> None:
    def compare(connection: Any) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with migrated_engine.connect() as connection:
        diffs = await connection.run_sync(compare)
    ours = [diff for diff in diffs if _table_of(diff) in OUR_TABLES]
    assert ours == []
    assert {"rentals", "wallet_ledger", "wallets", "payments", "renter_profiles"} <= OUR_TABLES
