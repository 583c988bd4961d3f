"""Queries of the iot domain: idempotency claims (with the station lock), the sync-log rows of handled
events, and the set-based writes of a full snapshot (merged into two statements on PostgreSQL)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Integer, String, bindparam, column, delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.iot.models import ProcessedEvent
from chargeghar_core.kit.db import dialect_name, insert_for_dialect, table_of
from chargeghar_core.powerbanks.repository import (
    PG_BANK_UPSERT_CTES,
    BankObservation,
    BankWritten,
    PowerBankRepository,
    pg_bank_params,
)
from chargeghar_core.stations.models import Station, SyncLog
from chargeghar_core.stations.repository import SlotObservation, StationRepository


@dataclass(frozen=True, slots=True)
class SyncLogRow:
    station_id: uuid.UUID | None
    station_key: str | None
    event_type: str
    event_id: str
    outcome: str
    payload_json: str  # the event as received (JSON text): stored without a decode/encode round
    duration_ms: float
    created_at: datetime


@lru_cache(maxsize=4)
def _claim(dialect: str) -> Any:
    table = table_of(ProcessedEvent)
    return (
        insert_for_dialect(dialect, table)
        .values(
            event_key=bindparam("event_key"), event_type=bindparam("event_type"), created_at=bindparam("now")
        )
        .on_conflict_do_nothing(index_elements=[table.c.event_key])
        .returning(table.c.event_key)
    )


@lru_cache(maxsize=1)
def _complete() -> Any:
    table = table_of(ProcessedEvent)
    return (
        update(table)
        .where(table.c.event_key == bindparam("key"))
        .values(outcome=bindparam("outcome"), station_id=bindparam("station_id"), result=bindparam("result"))
    )


@lru_cache(maxsize=1)
def _sync_log_insert() -> Any:
    table = table_of(SyncLog)
    # The payload is bound as text: SQLite stores JSON as text anyway, and it is already serialised.
    return table.insert().values(
        id=bindparam("log_id"),
        station_id=bindparam("station_id"),
        station_key=bindparam("station_key"),
        event_type=bindparam("event_type"),
        event_id=bindparam("event_id"),
        outcome=bindparam("log_outcome"),
        payload=bindparam("payload", type_=String()),
        error=None,
        duration_ms=bindparam("duration_ms"),
        created_at=bindparam("created_at"),
    )


# PostgreSQL: the event's result and its sync-log row in one round trip (two tables, no interaction).
_PG_COMPLETE_AND_LOG = text(
    """
    WITH completed AS (
        UPDATE processed_events SET outcome = :outcome, station_id = CAST(:station_id AS uuid),
            result = CAST(:result AS jsonb)
        WHERE event_key = :key
        RETURNING 1
    )
    INSERT INTO sync_logs (id, station_id, station_key, event_type, event_id, outcome, payload, error,
        duration_ms, created_at)
    VALUES (CAST(:log_id AS uuid), CAST(:log_station_id AS uuid), :station_key, :event_type, :event_id,
        :log_outcome, CAST(:payload AS jsonb), NULL, :duration_ms, CAST(:created_at AS timestamptz))
    """
)


_PG_SYNC_LOG_INSERT = text(
    """
    INSERT INTO sync_logs (id, station_id, station_key, event_type, event_id, outcome, payload, error,
        duration_ms, created_at)
    VALUES (CAST(:log_id AS uuid), CAST(:station_id AS uuid), :station_key, :event_type, :event_id,
        :log_outcome, CAST(:payload AS jsonb), NULL, :duration_ms, CAST(:created_at AS timestamptz))
    """
)


# PostgreSQL: claim the event's key AND lock its station row in one round trip. The lateral subquery keeps
# the row lock legal with the outer join (a missing station yields NULLs, not an empty result).
_PG_CLAIM_AND_LOCK = text(
    """
    WITH claim AS (
        INSERT INTO processed_events (event_key, event_type, created_at)
        VALUES (:event_key, :event_type, CAST(:now AS timestamptz))
        ON CONFLICT (event_key) DO NOTHING
        RETURNING event_key
    )
    SELECT (SELECT count(*) FROM claim) AS claimed, station.*
    FROM (VALUES (1)) AS one (x)
    LEFT JOIN LATERAL (SELECT * FROM stations WHERE imei = :imei FOR UPDATE) AS station ON true
    """
)


@lru_cache(maxsize=1)
def _pg_claim_and_lock() -> Any:
    textual = _PG_CLAIM_AND_LOCK.columns(column("claimed", Integer), *table_of(Station).c)
    return (
        select(Station, textual.selected_columns.claimed)
        .from_statement(textual)
        .execution_options(populate_existing=True)
    )


# PostgreSQL, a whole batch at once: claim every key (a key repeated in the batch is claimed once, by its
# first occurrence) ...
_PG_CLAIM_MANY = text(
    """
    INSERT INTO processed_events (event_key, event_type, created_at)
    SELECT u.event_key, u.event_type, CAST(:now AS timestamptz)
    FROM unnest(CAST(:keys AS text[]), CAST(:types AS text[])) WITH ORDINALITY AS u(event_key, event_type, n)
    ORDER BY u.n
    ON CONFLICT (event_key) DO NOTHING
    RETURNING event_key
    """
)

# ... and lock every station the batch names, in id order (two batches never wait on each other in a cycle).
_PG_LOCK_MANY = text("SELECT * FROM stations WHERE imei = ANY(CAST(:imeis AS text[])) ORDER BY id FOR UPDATE")


@lru_cache(maxsize=1)
def _pg_lock_many() -> Any:
    textual = _PG_LOCK_MANY.columns(*table_of(Station).c)
    return select(Station).from_statement(textual).execution_options(populate_existing=True)


class ProcessedEventRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def claim(self, event_key: str, event_type: str, now: datetime) -> bool:
        """Insert the key; False when it exists. On PostgreSQL a concurrent claim of the same key waits
        for the first transaction: after its commit this returns False, after its rollback True."""
        rows = await self.session.execute(
            _claim(dialect_name(self.session)), {"event_key": event_key, "event_type": event_type, "now": now}
        )
        return rows.first() is not None

    async def claim_and_lock(
        self, event_key: str, event_type: str, imei: str, now: datetime
    ) -> tuple[bool, Station | None]:
        """Claim the key (see :meth:`claim`) and lock the station row named by ``imei`` (None when there is
        none yet). One statement on PostgreSQL, two on SQLite (which serialises writers anyway)."""
        if dialect_name(self.session) != "postgresql":
            claimed = await self.claim(event_key, event_type, now)
            return claimed, await StationRepository(self.session).lock_by_imei(imei)
        row = (
            await self.session.execute(
                _pg_claim_and_lock(),
                {"event_key": event_key, "event_type": event_type, "now": now, "imei": imei},
            )
        ).one()
        station, claimed = row
        return bool(claimed), station

    async def claim_and_lock_many(
        self, keys: Sequence[tuple[str, str]], imeis: Sequence[str], now: datetime
    ) -> tuple[set[str], dict[str, Station]]:
        """PostgreSQL only: claim ``(event_key, event_type)`` pairs and lock the stations named by
        ``imeis`` in two statements. Returns the keys claimed now and the locked stations by IMEI."""
        claimed = await self.session.execute(
            _PG_CLAIM_MANY, {"keys": [k for k, _ in keys], "types": [t for _, t in keys], "now": now}
        )
        claimed_keys = {str(row[0]) for row in claimed}
        stations = (await self.session.execute(_pg_lock_many(), {"imeis": sorted(set(imeis))})).scalars()
        return claimed_keys, {station.imei: station for station in stations}

    async def stored(self, event_key: str) -> tuple[str | None, dict[str, Any] | None, uuid.UUID | None]:
        rows = await self.session.execute(
            select(ProcessedEvent.outcome, ProcessedEvent.result, ProcessedEvent.station_id).where(
                ProcessedEvent.event_key == event_key
            )
        )
        row = rows.first()
        if row is None:
            return None, None, None
        return row[0], row[1], row[2]

    async def complete_and_log(
        self,
        event_key: str,
        *,
        outcome: str,
        station_id: uuid.UUID | None,
        result: dict[str, Any],
        log: SyncLogRow,
    ) -> None:
        """Store the event's result (what a duplicate will be answered) and write its sync-log row."""
        log_params = _log_params(log)
        if dialect_name(self.session) == "postgresql":
            await self.session.execute(
                _PG_COMPLETE_AND_LOG,
                {
                    "key": event_key,
                    "outcome": outcome,
                    "station_id": station_id,
                    "result": json.dumps(result),
                    **log_params,
                    "log_station_id": log.station_id,
                },
            )
            return
        await self.session.execute(
            _complete(), {"key": event_key, "outcome": outcome, "station_id": station_id, "result": result}
        )
        await self.session.execute(_sync_log_insert(), log_params)

    async def add_log(self, log: SyncLogRow) -> None:
        statement = _PG_SYNC_LOG_INSERT if dialect_name(self.session) == "postgresql" else _sync_log_insert()
        await self.session.execute(statement, _log_params(log))


def _log_params(log: SyncLogRow) -> dict[str, Any]:
    return {
        "log_id": uuid.uuid4(),
        "station_id": log.station_id,
        "station_key": log.station_key,
        "event_type": log.event_type,
        "event_id": log.event_id,
        "log_outcome": log.outcome,
        "payload": log.payload_json,
        "duration_ms": log.duration_ms,
        "created_at": log.created_at,
    }


# --------------------------------------------------------------------------------------------- snapshots

# PostgreSQL fast path of a full snapshot: two statements after the claim and the station lock.
#
# 1. Banks: upsert every listed bank, detach banks recorded at the station that are no longer listed, and
#    empty the slots that will be rewritten (this station's, and any slot elsewhere holding a listed bank),
#    except a slot that keeps the very bank it holds.
#    The three touch disjoint rows, so one statement is safe; the slot upsert must see the emptied slots
#    (one-slot-per-bank unique constraint), which is why it is the next statement.
_PG_SNAPSHOT_BANKS = text(
    f"""
    WITH {PG_BANK_UPSERT_CTES}, detached AS (
        UPDATE power_banks SET current_station_id = NULL, current_slot_number = NULL
        WHERE current_station_id = CAST(:station_id AS uuid)
          AND NOT (serial_number = ANY(CAST(:serials AS text[])))
        RETURNING 1
    ), released AS (
        UPDATE station_slots SET power_bank_id = NULL,
            status = CASE WHEN status = 'OCCUPIED' THEN 'AVAILABLE' ELSE status END
        WHERE power_bank_id IS NOT NULL
          AND (station_id = CAST(:station_id AS uuid) OR power_bank_id IN (SELECT id FROM banks))
          -- A slot keeping the bank it already holds is left alone: the slot upsert rewrites it anyway,
          -- and emptying it first would write every unchanged slot twice.
          AND NOT EXISTS (
              SELECT 1 FROM banks kept
              WHERE kept.id = station_slots.power_bank_id
                AND station_slots.station_id = CAST(:station_id AS uuid)
                AND station_slots.slot_number = kept.current_slot_number
          )
        RETURNING 1
    )
    SELECT serial_number, id, battery_level FROM banks
    """  # noqa: S608 - the interpolated text is a constant
)

# 2. Slots, the station row, the event's stored result and its sync-log row: four tables, one statement.
_PG_SNAPSHOT_SLOTS_AND_FINISH = text(
    """
    WITH station_row AS (
        UPDATE stations SET status = :status, status_changed_at = CAST(:status_changed_at AS timestamptz),
            total_slots = :total_slots, hardware_info = CAST(:hardware_info AS jsonb),
            last_heartbeat = CAST(:last_heartbeat AS timestamptz),
            observed_at = CAST(:observed_at AS timestamptz), modified_at = CAST(:now AS timestamptz)
        WHERE id = CAST(:station_id AS uuid)
        RETURNING 1
    ), completed AS (
        UPDATE processed_events SET outcome = :log_outcome, station_id = CAST(:station_id AS uuid),
            result = CAST(:result AS jsonb)
        WHERE event_key = :key
        RETURNING 1
    ), logged AS (
        INSERT INTO sync_logs (id, station_id, station_key, event_type, event_id, outcome, payload, error,
            duration_ms, created_at)
        VALUES (CAST(:log_id AS uuid), CAST(:station_id AS uuid), :station_key, :event_type, :event_id,
            :log_outcome, CAST(:payload AS jsonb), NULL, :duration_ms, CAST(:created_at AS timestamptz))
        RETURNING 1
    ), removed AS (
        -- The snapshot is the authority on which slots exist: a slot outside its layout (a phantom created
        -- by a stray slot event, or one the cabinet no longer has) goes unless the snapshot lists it.
        DELETE FROM station_slots
        WHERE station_id = CAST(:station_id AS uuid)
          AND (slot_number > :total_slots OR slot_number < 1)
          AND NOT (slot_number = ANY(CAST(:numbers AS int[])))
        RETURNING 1
    )
    INSERT INTO station_slots (id, station_id, slot_number, status, battery_level, power_bank_id,
        slot_metadata, created_at)
    SELECT gen_random_uuid(), CAST(:station_id AS uuid), t.number, t.status, t.battery, t.bank,
        CAST(t.metadata AS jsonb), CAST(:now AS timestamptz)
    FROM unnest(CAST(:numbers AS int[]), CAST(:slot_statuses AS text[]), CAST(:slot_batteries AS int[]),
        CAST(:bank_ids AS uuid[]), CAST(:metadata AS text[])) AS t(number, status, battery, bank, metadata)
    ON CONFLICT (station_id, slot_number) DO UPDATE SET
        status = excluded.status,
        battery_level = excluded.battery_level,
        power_bank_id = excluded.power_bank_id,
        slot_metadata = excluded.slot_metadata,
        modified_at = excluded.created_at
    """
)


@dataclass(frozen=True, slots=True)
class SnapshotFinish:
    """Everything written at the end of an applied snapshot besides its slots."""

    station_values: dict[str, Any]  # status, status_changed_at, total_slots, hardware_info, last_heartbeat,
    # observed_at, modified_at
    event_key: str
    result: dict[str, Any]
    log: SyncLogRow


class SnapshotWriter:
    """Writes an applied full snapshot with a constant number of statements: 2 on PostgreSQL (merged with
    data-modifying CTEs), 6 on SQLite (the same steps one by one)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self._postgres = dialect_name(session) == "postgresql"

    async def write_banks(
        self, station_id: uuid.UUID, banks: Sequence[BankObservation], now: datetime
    ) -> dict[str, BankWritten]:
        """Upsert the listed banks, detach the missing ones, empty the slots; returns serial → bank."""
        if not self._postgres:
            written = await PowerBankRepository(self.session).upsert_observed(banks, now)
            await StationRepository(self.session).release_and_detach(
                station_id, [bank.id for bank in written.values()]
            )
            return written
        rows = await self.session.execute(
            _PG_SNAPSHOT_BANKS, {**pg_bank_params(banks, now, "full"), "station_id": station_id}
        )
        return {serial: BankWritten(bank_id, battery) for serial, bank_id, battery in rows}

    async def write_slots_and_finish(
        self, station_id: uuid.UUID, slots: Sequence[SlotObservation], finish: SnapshotFinish, now: datetime
    ) -> None:
        if not self._postgres:
            stations = StationRepository(self.session)
            await stations.delete_slots_outside(
                station_id, finish.station_values["total_slots"], [slot.slot_number for slot in slots]
            )
            await stations.upsert_slots(station_id, slots, now)
            await stations.apply_snapshot_fields(station_id, finish.station_values)
            await ProcessedEventRepository(self.session).complete_and_log(
                finish.event_key,
                outcome=finish.log.outcome,
                station_id=station_id,
                result=finish.result,
                log=finish.log,
            )
            return
        values = finish.station_values
        await self.session.execute(
            _PG_SNAPSHOT_SLOTS_AND_FINISH,
            {
                **_log_params(finish.log),
                "station_id": station_id,
                "now": now,
                "status": values["status"],
                "status_changed_at": values["status_changed_at"],
                "total_slots": values["total_slots"],
                "hardware_info": json.dumps(values["hardware_info"]),
                "last_heartbeat": values["last_heartbeat"],
                "observed_at": values["observed_at"],
                "key": finish.event_key,
                "result": json.dumps(finish.result),
                "numbers": [slot.slot_number for slot in slots],
                "slot_statuses": [slot.status for slot in slots],
                "slot_batteries": [slot.battery_level for slot in slots],
                "bank_ids": [slot.power_bank_id for slot in slots],
                "metadata": [json.dumps(slot.metadata) for slot in slots],
            },
        )


class RetentionRepository:
    """Age-based pruning of the sync log and of the idempotency keys, in bounded chunks."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def delete_sync_logs_before(self, cutoff: datetime, limit: int) -> int:
        table = table_of(SyncLog)
        return await self._delete_chunk(table, table.c.id, table.c.created_at, cutoff, limit)

    async def delete_processed_events_before(self, cutoff: datetime, limit: int) -> int:
        table = table_of(ProcessedEvent)
        return await self._delete_chunk(table, table.c.event_key, table.c.created_at, cutoff, limit)

    async def _delete_chunk(self, table: Any, key: Any, created_at: Any, cutoff: datetime, limit: int) -> int:
        # DELETE … WHERE key IN (SELECT key … LIMIT n): portable (SQLite has no DELETE … LIMIT) and short,
        # so no long lock is held on a busy table. SKIP LOCKED on PostgreSQL: two replicas pruning at once
        # take different rows instead of waiting on each other.
        oldest = select(key).where(created_at < cutoff).limit(limit)
        if dialect_name(self.session) == "postgresql":
            oldest = oldest.with_for_update(skip_locked=True)
        result = await self.session.execute(delete(table).where(key.in_(oldest.scalar_subquery())))
        return int(getattr(result, "rowcount", 0) or 0)
