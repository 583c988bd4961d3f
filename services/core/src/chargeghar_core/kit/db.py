"""Database plumbing: declarative base, portable column types, engine factory and the session dependency.

The same models and migrations run on PostgreSQL (asyncpg, production/CI) and SQLite (aiosqlite, one
replica). Portable choices made here: ``Uuid`` (native on PostgreSQL, CHAR(32) on SQLite), JSON that is
JSONB on PostgreSQL, and timestamps that always come back timezone-aware in UTC (SQLite drops the offset).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, cast

from fastapi import Depends, Request
from sqlalchemy import JSON, DateTime, MetaData, Table, TypeDecorator, Uuid, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from chargeghar_core.kit.openapi import answers
from chargeghar_core.settings import DatabaseSettings

# Stable constraint names so that alembic migrations (and SQLite batch mode) can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """``timestamptz`` on PostgreSQL; on SQLite a naive UTC value that is made aware again when read."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        if dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012 - SQLAlchemy reads this class attribute
        datetime: UTCDateTime(),
        uuid.UUID: Uuid(),
        dict[str, Any]: JSONType,
    }


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(default=utcnow, nullable=False)
    modified_at: Mapped[datetime | None] = mapped_column(default=None, onupdate=utcnow, nullable=True)


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    if settings.is_sqlite:
        engine = create_async_engine(
            settings.url,
            echo=settings.echo,
            # Never put bound values (password hashes, tokens) into exception messages or echo logs.
            hide_parameters=True,
            connect_args={"timeout": settings.connect_timeout_s},
        )
        event.listen(engine.sync_engine, "connect", _configure_sqlite_connection)
        event.listen(engine.sync_engine, "begin", _begin_sqlite_transaction)
        return engine
    return create_async_engine(
        settings.url,
        echo=settings.echo,
        hide_parameters=True,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        # No pool_pre_ping: it costs two round trips (BEGIN; ROLLBACK) on every checkout, i.e. on every
        # request. A connection broken by a server restart fails one request (answered 500, retried by
        # the ingest) and is then discarded; pool_recycle retires idle connections before servers do.
        pool_timeout=settings.pool_timeout_s,
        pool_recycle=1800,
        connect_args={"timeout": settings.connect_timeout_s},
    )


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    # The sqlite3 driver's own transaction handling breaks SAVEPOINTs (a batch needs one per event):
    # switch it off and let SQLAlchemy emit BEGIN itself (see _begin_sqlite_transaction).
    dbapi_connection.isolation_level = None
    # Foreign keys are off by default in SQLite; WAL lets readers run while one writer commits.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _begin_sqlite_transaction(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False: objects stay readable after the single commit at the end of a request.
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@answers(
    (
        503,
        "DATABASE_UNAVAILABLE",
        "The database (or Redis) is unreachable or too slow; retry after `Retry-After`",
    )
)
async def get_db_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request, committed once after the endpoint returned, rolled back on any error."""
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with sessionmaker() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()


# scope="function": the commit runs before the response is sent, so a failed commit is never a 200.
DbSession = Annotated[AsyncSession, Depends(get_db_session, scope="function")]


def dialect_name(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def insert_for(session: AsyncSession, table: Any) -> Any:
    """``INSERT`` with ``ON CONFLICT`` support for the session's database (PostgreSQL or SQLite).

    Both dialects offer ``on_conflict_do_update`` / ``on_conflict_do_nothing`` and ``.excluded`` with the
    same signature, so callers write one statement for both.
    """
    return insert_for_dialect(dialect_name(session), table)


def insert_for_dialect(dialect: str, table: Any) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def table_of(model: type[Base]) -> Table:
    """The Core ``Table`` of a mapped class, typed as such (``__table__`` is typed as a FromClause)."""
    return cast(Table, model.__table__)


LIKE_ESCAPE = "\\"


def like_contains(text: str) -> str:
    """A ``LIKE`` pattern matching ``text`` anywhere, lower-cased, with the wildcards ``%`` and ``_`` (and
    the escape character) in ``text`` escaped: use with ``.like(pattern, escape=LIKE_ESCAPE)``."""
    escaped = text.lower().replace(LIKE_ESCAPE, LIKE_ESCAPE * 2).replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
