"""Queries of the iot domain: idempotency claims (with the station lock), the sync-log rows of handled
events, and the step-by-step writes of a full snapshot (SQLite, and PostgreSQL's general path; the
one-statement path of PostgreSQL is ``iot.snapshots``)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    ARRAY,
    String,
    and_,
    any_,
    bindparam,
    column,
    delete,
    exists,
    func,
    literal_column,
    not_,
    select,
    true,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from chargeghar_core.iot.models import ProcessedEvent
from chargeghar_core.iot.statements import (
    BANKS,
    LOGS,
    RENTALS,
    STATIONS,
    claim_insert,
    json_from_text,
    open_rental_status,
    replay_then_claim,
    store_result,
)
from chargeghar_core.kit.db import UTCDateTime, dialect_name, insert_for_dialect, table_of
from chargeghar_core.powerbanks.repository import BankObservation, BankWritten, PowerBankRepository
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
    """An event's stored result (what a duplicate is answered)."""
    return store_result(
        bindparam("key"),
        outcome=bindparam("outcome"),
        station_id=bindparam("result_station_id"),
        result=bindparam("result"),
    )


@lru_cache(maxsize=1)
def _sync_log_insert() -> Any:
    """One sync-log row. The payload arrives already serialised (the event as received) and is stored
    without a decode/encode round: bound as text, cast to JSONB on PostgreSQL (SQLite keeps JSON as text)."""
    return LOGS.insert().values(
        id=bindparam("log_id"),
        station_id=bindparam("log_station_id"),
        station_key=bindparam("log_station_key"),
        event_type=bindparam("log_event_type"),
        event_id=bindparam("log_event_id"),
        outcome=bindparam("log_outcome"),
        payload=json_from_text(bindparam("log_payload", type_=String())),
        error=None,
        duration_ms=bindparam("log_duration_ms"),
        created_at=bindparam("log_created_at"),
    )


@lru_cache(maxsize=1)
def _pg_complete_and_log() -> Any:
    """PostgreSQL: the event's result and its sync-log row in one round trip (two tables, no interaction)."""
    completed = _complete().returning(literal_column("1")).cte("completed")
    return _sync_log_insert().add_cte(completed)


def open_rental_serials() -> Any:
    """Which of the banks named by the ``serials`` array have an open rental: through the banks' unique
    serial index and the open-rental partial unique index, i.e. two index probes per serial."""
    return (
        select(BANKS.c.serial_number)
        .join(RENTALS, and_(RENTALS.c.power_bank_id == BANKS.c.id, open_rental_status(RENTALS)))
        .where(BANKS.c.serial_number == any_(bindparam("serials", type_=ARRAY(String()))))
    )


def _rented_array() -> Any:
    return func.array(open_rental_serials().scalar_subquery(), type_=ARRAY(String())).label("rented")


@lru_cache(maxsize=1)
def _pg_claim_and_lock() -> Any:
    """PostgreSQL, one round trip for everything an event needs before it is applied: the signature's
    replay claim (when the event key is not the signature), the event's claim (only when the replay claim
    held), the station row lock, and which banks the event names have an open rental (the rentals domain is
    asked only about those). The station comes from a LATERAL subquery outer-joined to the one-row summary:
    the row lock stays legal and a missing station yields NULLs (None), not an empty result."""
    replay_key = bindparam("replay_key", type_=String())
    replay, claim = replay_then_claim(
        event_key=bindparam("event_key", type_=String()),
        event_type=bindparam("event_type", type_=String()),
        now=bindparam("now", type_=UTCDateTime()),
        replay_key=replay_key,
    )
    replay_held = exists(select(replay.c.event_key))
    summary = select(
        select(func.count()).select_from(claim).scalar_subquery().label("claimed"),
        and_(replay_key.is_not(None), not_(replay_held)).label("replayed"),
        _rented_array(),
    ).subquery("summary")
    locked = (
        select(STATIONS)
        .where(STATIONS.c.imei == bindparam("imei", type_=String()))
        .with_for_update()
        .lateral("station")
    )
    station = aliased(Station, locked)
    return (
        select(station, summary.c.claimed, summary.c.replayed, summary.c.rented)
        .select_from(summary.outerjoin(locked, true()))
        .execution_options(populate_existing=True)
    )


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """What an event's claim found: whether it is this event's first delivery, its station (locked), and
    which banks it names have an open rental (None: not looked up, the rentals domain looks itself)."""

    claimed: bool
    station: Station | None
    rented: frozenset[str] | None = None
    replayed: bool = False  # the signature was seen before under another event id


@lru_cache(maxsize=1)
def _pg_claim_many() -> Any:
    """PostgreSQL, a whole batch at once: claim every key (a key repeated in the batch is claimed once, by
    its first occurrence) ..."""
    pairs = (
        func.unnest(bindparam("keys", type_=ARRAY(String())), bindparam("types", type_=ARRAY(String())))
        .table_valued(column("event_key", String()), column("event_type", String()), with_ordinality="n")
        .render_derived(name="u")
    )
    now = bindparam("now", type_=UTCDateTime())
    return claim_insert(select(pairs.c.event_key, pairs.c.event_type, now).order_by(pairs.c.n))


@lru_cache(maxsize=1)
def _pg_lock_many() -> Any:
    """... and lock every station the batch names, in id order (two batches never wait on each other in a
    cycle); each row also carries the banks of the batch that have an open rental."""
    return (
        select(Station, _rented_array())
        .where(Station.imei == any_(bindparam("imeis", type_=ARRAY(String()))))
        .order_by(Station.id)
        .with_for_update(of=Station)
        .execution_options(populate_existing=True)
    )


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
        self,
        event_key: str,
        event_type: str,
        imei: str,
        now: datetime,
        *,
        replay_key: str | None = None,
        serials: Sequence[str] = (),
    ) -> ClaimResult:
        """Claim ``replay_key`` (when given) and then ``event_key`` (see :meth:`claim`), lock the station row
        named by ``imei`` (None when there is none yet) and find which of ``serials`` have an open rental.

        One statement on PostgreSQL. SQLite (which serialises writers anyway) runs the claims and the lock
        one by one and leaves the open-rental lookup to the rentals domain (``rented`` None)."""
        if dialect_name(self.session) != "postgresql":
            if replay_key is not None and not await self.claim(replay_key, event_type, now):
                return ClaimResult(claimed=False, station=None, replayed=True)
            claimed = await self.claim(event_key, event_type, now)
            station = await StationRepository(self.session).lock_by_imei(imei) if claimed else None
            return ClaimResult(claimed=claimed, station=station)
        row = (
            await self.session.execute(
                _pg_claim_and_lock(),
                {
                    "event_key": event_key,
                    "replay_key": replay_key,
                    "event_type": event_type,
                    "now": now,
                    "imei": imei,
                    "serials": list(serials),
                },
            )
        ).one()
        station, claimed, replayed, rented = row
        return ClaimResult(bool(claimed), station, frozenset(rented or ()), bool(replayed))

    async def claim_and_lock_many(
        self, keys: Sequence[tuple[str, str]], imeis: Sequence[str], now: datetime, serials: Sequence[str]
    ) -> tuple[set[str], dict[str, Station], frozenset[str]]:
        """PostgreSQL only: claim ``(event_key, event_type)`` pairs, lock the stations named by ``imeis``
        and find which of ``serials`` have an open rental, in two statements. Returns the keys claimed now,
        the locked stations by IMEI and the rented serials."""
        claimed = await self.session.execute(
            _pg_claim_many(), {"keys": [k for k, _ in keys], "types": [t for _, t in keys], "now": now}
        )
        claimed_keys = {str(row[0]) for row in claimed}
        rows = (
            await self.session.execute(
                _pg_lock_many(), {"imeis": sorted(set(imeis)), "serials": list(serials)}
            )
        ).all()
        rented = frozenset(rows[0][1] or ()) if rows else await self._open_rental_serials(serials)
        return claimed_keys, {station.imei: station for station, _ in rows}, rented

    async def _open_rental_serials(self, serials: Sequence[str]) -> frozenset[str]:
        if not serials:
            return frozenset()
        rows = await self.session.execute(open_rental_serials(), {"serials": list(serials)})
        return frozenset(str(serial) for (serial,) in rows)

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
        parameters = {
            "key": event_key,
            "outcome": outcome,
            "result_station_id": station_id,
            "result": result,
            **_log_params(log),
        }
        if dialect_name(self.session) == "postgresql":
            # One round trip: the update rides along as a data-modifying CTE of the insert.
            await self.session.execute(_pg_complete_and_log(), parameters)
            return
        await self.session.execute(_complete(), parameters)
        await self.session.execute(_sync_log_insert(), parameters)

    async def add_log(self, log: SyncLogRow) -> None:
        await self.session.execute(_sync_log_insert(), _log_params(log))


def _log_params(log: SyncLogRow) -> dict[str, Any]:
    # Every key is prefixed: a key named like a column of processed_events would be taken by the UPDATE
    # of the combined PostgreSQL statement as one more column to SET.
    return {
        "log_id": uuid.uuid4(),
        "log_station_id": log.station_id,
        "log_station_key": log.station_key,
        "log_event_type": log.event_type,
        "log_event_id": log.event_id,
        "log_outcome": log.outcome,
        "log_payload": log.payload_json,
        "log_duration_ms": log.duration_ms,
        "log_created_at": log.created_at,
    }


# --------------------------------------------------------------------------------------------- snapshots
#
# The multi-statement path of a full snapshot (SQLite; on PostgreSQL when the one-statement path of
# ``iot.snapshots`` cannot apply it: a new station, a stale snapshot, a bank out on a rental). The same
# statement definitions serve both dialects; each dialect's upsert is produced from them.


@dataclass(frozen=True, slots=True)
class SnapshotFinish:
    """Everything written at the end of an applied snapshot besides its slots."""

    station_values: dict[str, Any]  # status, status_changed_at, total_slots, hardware_info, last_heartbeat,
    # observed_at, modified_at
    event_key: str
    result: dict[str, Any]
    log: SyncLogRow


class SnapshotWriter:
    """Writes an applied full snapshot step by step with a constant number of statements whatever its size:
    banks (prior state read + one multi-row upsert + condition history), slots emptied and banks detached,
    phantom slots deleted, one multi-row slot upsert, the station row, the result and the sync-log row."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def write_banks(
        self, station_id: uuid.UUID, banks: Sequence[BankObservation], now: datetime
    ) -> dict[str, BankWritten]:
        """Upsert the listed banks, detach the missing ones, empty the slots; returns serial → bank."""
        written = await PowerBankRepository(self.session).upsert_observed(banks, now)
        await StationRepository(self.session).release_and_detach(
            station_id, [bank.id for bank in written.values()]
        )
        return written

    async def write_slots_and_finish(
        self, station_id: uuid.UUID, slots: Sequence[SlotObservation], finish: SnapshotFinish, now: datetime
    ) -> None:
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
