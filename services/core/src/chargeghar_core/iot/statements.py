"""The building blocks the iot statements share, defined once from the table metadata: the tables, the
column lists of the rows the snapshot and event writes insert, the idempotency claims (replay key, then
event key), an event's stored result, and the few JSON / time operations compiled per dialect.

``iot.repository`` (step-by-step writes), ``iot.event_writes`` (one statement per small event) and
``iot.snapshots`` (one statement per batch of full syncs) assemble their statements from these, so a claim
or a sync-log row means the same thing on every path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import JSON, Boolean, Float, String, exists, literal_column, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import ColumnElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from chargeghar_core.iot.models import ProcessedEvent
from chargeghar_core.kit.db import JSONType, table_of
from chargeghar_core.powerbanks.models import PowerBank, PowerBankConditionHistory
from chargeghar_core.rentals.models import OPEN_STATUSES, Rental
from chargeghar_core.stations.models import (
    DeviceFaultCounter,
    Station,
    StationSlot,
    StationStatusHistory,
    SyncLog,
)

# ------------------------------------------------------------------------------------------- tables

STATIONS = table_of(Station)
SLOTS = table_of(StationSlot)
BANKS = table_of(PowerBank)
CONDITIONS = table_of(PowerBankConditionHistory)
HISTORY = table_of(StationStatusHistory)
FAULTS = table_of(DeviceFaultCounter)
PROCESSED = table_of(ProcessedEvent)
LOGS = table_of(SyncLog)
RENTALS = table_of(Rental)

# ------------------------------------------------------------------------------------------- inserted rows
# The columns an INSERT … SELECT writes, in the order of its SELECT list (every path writes whole rows).

CLAIM_ROW = ("event_key", "event_type", "created_at")
BANK_ROW = (
    "id",
    "serial_number",
    "model",
    "capacity_mah",
    "status",
    "battery_level",
    "hardware_info",
    "current_station_id",
    "current_slot_number",
    "total_rentals",
    "charge_cycles",
    "last_seen_at",
    "created_at",
    "condition",
    "condition_code",
    "condition_changed_at",
)
SLOT_ROW = (
    "id",
    "station_id",
    "slot_number",
    "status",
    "battery_level",
    "power_bank_id",
    "slot_metadata",
    "created_at",
)
CONDITION_ROW = (
    "id",
    "power_bank_id",
    "previous_condition",
    "previous_code",
    "condition",
    "condition_code",
    "station_id",
    "slot_number",
    "source",
    "changed_at",
)
STATUS_HISTORY_ROW = (
    "id",
    "station_id",
    "previous_status",
    "status",
    "trigger",
    "changed_at",
    "previous_duration_s",
    "channel",
)
SYNC_LOG_ROW = (
    "id",
    "station_id",
    "station_key",
    "event_type",
    "event_id",
    "outcome",
    "payload",
    "error",
    "duration_ms",
    "created_at",
)

# ------------------------------------------------------------------------------------------- claims


def claim_insert(rows: Any, columns: Iterable[str] = CLAIM_ROW) -> Any:
    """PostgreSQL: insert the event keys ``rows`` selects, unless already there; returns the keys claimed
    now. A concurrent claim of the same key waits for the first transaction (the unique index)."""
    return (
        pg_insert(PROCESSED)
        .from_select(list(columns), rows)
        .on_conflict_do_nothing(index_elements=[PROCESSED.c.event_key])
        .returning(PROCESSED.c.event_key)
    )


def replay_then_claim(*, event_key: Any, event_type: Any, now: Any, replay_key: Any) -> tuple[Any, Any]:
    """PostgreSQL: the signature's replay claim (when the event key is not the signature) and then the
    event's claim, only when the replay claim held: the CTEs ``replay`` and ``claim``."""
    replay = claim_insert(select(replay_key, event_type, now).where(replay_key.is_not(None))).cte("replay")
    replay_held = exists(select(replay.c.event_key))
    claim = claim_insert(
        select(event_key, event_type, now).where(or_(replay_key.is_(None), replay_held))
    ).cte("claim")
    return replay, claim


def store_result(event_key: Any, *conditions: Any, outcome: Any, station_id: Any, result: Any) -> Any:
    """An event's stored result: what a later delivery of the same event is answered."""
    return (
        update(PROCESSED)
        .where(PROCESSED.c.event_key == event_key, *conditions)
        .values(outcome=outcome, station_id=station_id, result=result)
    )


def open_rental_status(rentals: Any) -> Any:
    """``status IN ('PENDING_POPUP', …)`` with the statuses written into the SQL: the planner matches it
    with the predicate of the open-rental partial unique index only when the values are in the text (a bound
    parameter would not prove the index applies)."""
    return rentals.c.status.in_([literal_column(f"'{status}'") for status in OPEN_STATUSES])


def one_of(column: ColumnElement[Any], values: Iterable[str]) -> ColumnElement[bool]:
    """``column IN ('A', 'B')`` with the constants written into the SQL. ``in_()`` of plain values makes an
    "expanding" parameter, which SQLAlchemy renders into the statement's text again on every execution (a
    regex pass over several KB of SQL per event)."""
    return column.in_([literal_column(_sql_string(value)) for value in sorted(values)])


def _sql_string(value: str) -> str:
    if not value.replace("_", "").isalnum():
        raise ValueError(f"not a plain constant: {value!r}")  # only enum names are written into SQL
    return f"'{value}'"


# ------------------------------------------------------------------------------------------- JSON and time
# The few JSON and time operations the statements need, one SQL element each, compiled per dialect.


def _sql_function(
    name: str, type_: Any, *, postgresql: Callable[..., str], sqlite: Callable[..., str]
) -> type[FunctionElement[Any]]:
    """A SQL element whose text on each dialect is a template over its arguments' SQL."""
    element: type[FunctionElement[Any]] = type(
        name, (FunctionElement,), {"type": type_, "inherit_cache": True, "name": name}
    )
    for dialect, render in (("postgresql", postgresql), ("sqlite", sqlite)):
        compiles(element, dialect)(_compiled_with(render))
    return element


def _compiled_with(render: Callable[..., str]) -> Callable[..., str]:
    def compile_element(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> str:
        return render(*(compiler.process(clause, **kw) for clause in element.clauses))

    return compile_element


# ``a`` with the keys of ``b`` (SQLite's ``json_patch`` merges nested objects too and drops keys set to
# null, which device hardware info never relies on).
json_merged = _sql_function(
    "json_merged",
    JSONType,
    postgresql=lambda left, right: f"({left} || {right})",
    sqlite=lambda left, right: f"json_patch({left}, {right})",
)

# The text at ``document[outer][inner]`` (None when missing).
json_text = _sql_function(
    "json_text",
    String(),
    postgresql=lambda document, outer, inner: f"({document} -> {outer} ->> {inner})",
    sqlite=lambda document, outer, inner: (
        f"json_extract({document}, '$.\"' || {outer} || '\".\"' || {inner} || '\"')"
    ),
)

# JSON already serialised (the event as received): stored without a decode/encode round.
json_from_text = _sql_function(
    "json_from_text",
    JSONType,
    postgresql=lambda text: f"CAST({text} AS JSONB)",
    sqlite=lambda text: text,
)

# ``document``, or an empty object when it is NULL.
json_or_empty = _sql_function(
    "json_or_empty",
    JSONType,
    postgresql=lambda document: f"COALESCE({document}, '{{}}'::jsonb)",
    sqlite=lambda document: f"COALESCE({document}, '{{}}')",
)


def _seconds_between_sqlite(later: str, earlier: str) -> str:
    # Stored as 'YYYY-MM-DD HH:MM:SS.ffffff': whole seconds by strftime, the fraction from the text (exact to
    # the microsecond, as on PostgreSQL; julianday() would lose some).
    whole = f"(strftime('%s', {later}) - strftime('%s', {earlier}))"
    fraction = f"(CAST(substr({later}, 20) AS REAL) - CAST(substr({earlier}, 20) AS REAL))"
    return f"max(0.0, {whole} + {fraction})"


# ``later - earlier`` in seconds, never negative.
seconds_between = _sql_function(
    "seconds_between",
    Float(),
    postgresql=lambda later, earlier: f"GREATEST(0.0, EXTRACT(EPOCH FROM ({later} - {earlier}))::float8)",
    sqlite=_seconds_between_sqlite,
)


class json_object(FunctionElement[Any]):
    """A JSON object from ``key, value, key, value, …`` (keys: SQL string literals). Booleans and JSON values
    stay what they are on SQLite too (where they would otherwise become 0/1 and strings)."""

    type = JSONType
    inherit_cache = True
    name = "json_object"


def build_object(**values: ColumnElement[Any]) -> json_object:
    arguments: list[ColumnElement[Any]] = []
    for key, value in values.items():
        arguments += [literal_column(f"'{key}'"), value]
    return json_object(*arguments)


@compiles(json_object, "postgresql")
def _json_object_pg(element: json_object, compiler: SQLCompiler, **kw: Any) -> str:
    return f"jsonb_build_object({', '.join(compiler.process(c, **kw) for c in element.clauses)})"


@compiles(json_object, "sqlite")
def _json_object_sqlite(element: json_object, compiler: SQLCompiler, **kw: Any) -> str:
    parts = []
    for index, clause in enumerate(element.clauses):
        sql = compiler.process(clause, **kw)
        parts.append(_sqlite_json_value(clause, sql) if index % 2 else sql)
    return f"json_object({', '.join(parts)})"


class json_with(FunctionElement[Any]):
    """``document`` with the keys ``key, value, …`` set (a null value is stored as null on both dialects,
    unlike SQLite's ``json_patch``): how a result's constant part gets the values only SQL knows."""

    type = JSONType
    inherit_cache = True
    name = "json_with"


def with_keys(document: Any, **values: ColumnElement[Any]) -> json_with:
    arguments: list[ColumnElement[Any]] = [document]
    for key, value in values.items():
        arguments += [literal_column(f"'{key}'"), value]
    return json_with(*arguments)


@compiles(json_with, "postgresql")
def _json_with_pg(element: json_with, compiler: SQLCompiler, **kw: Any) -> str:
    document, *pairs = element.clauses.clauses
    inner = ", ".join(compiler.process(c, **kw) for c in pairs)
    return f"({compiler.process(document, **kw)} || jsonb_build_object({inner}))"


@compiles(json_with, "sqlite")
def _json_with_sqlite(element: json_with, compiler: SQLCompiler, **kw: Any) -> str:
    document, *pairs = element.clauses.clauses
    parts = []
    for index in range(0, len(pairs), 2):
        key, value = pairs[index], pairs[index + 1]
        path = "'$.\"' || " + compiler.process(key, **kw) + " || '\"'"
        parts += [path, _sqlite_json_value(value, compiler.process(value, **kw))]
    return f"json_set({compiler.process(document, **kw)}, {', '.join(parts)})"


def _sqlite_json_value(clause: Any, sql: str) -> str:
    """Booleans and JSON values written into a SQLite JSON object as JSON (not as 0/1 or a string)."""
    if isinstance(clause.type, Boolean):
        return f"CASE WHEN {sql} THEN json('true') ELSE json('false') END"
    if isinstance(clause.type, JSON):
        return f"json({sql})"
    return sql
