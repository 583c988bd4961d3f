"""Every query of the stations domain: station rows, set-based slot writes, history, sync log, listings."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import and_, bindparam, case, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from chargeghar_core.kit.db import (
    LIKE_ESCAPE,
    dialect_name,
    insert_for,
    insert_for_dialect,
    like_contains,
    table_of,
    utcnow,
)
from chargeghar_core.powerbanks.models import BankCondition, PowerBank
from chargeghar_core.stations.models import (
    DeviceFaultCounter,
    SlotStatus,
    Station,
    StationSlot,
    StationStatusHistory,
    SyncLog,
)

# A bank below this charge is not offered to renters.
RENTABLE_MIN_BATTERY = 20


@dataclass(frozen=True, slots=True)
class SlotObservation:
    slot_number: int
    status: str
    battery_level: int
    power_bank_id: uuid.UUID | None
    metadata: dict[str, Any]


def slot_upsert_set(excluded: Any) -> dict[str, Any]:
    """What an observed slot overwrites when it exists (``ON CONFLICT (station_id, slot_number) DO UPDATE``):
    the one definition behind every slot upsert, whatever the dialect or the statement around it."""
    return {
        "status": excluded.status,
        "battery_level": excluded.battery_level,
        "power_bank_id": excluded.power_bank_id,
        "slot_metadata": excluded.slot_metadata,
        "modified_at": excluded.created_at,
    }


@lru_cache(maxsize=4)
def _slot_upsert(dialect: str) -> Any:
    """Built once per dialect (constructing ``.excluded`` is costly on the hot path)."""
    table = table_of(StationSlot)
    statement = insert_for_dialect(dialect, table)
    return statement.on_conflict_do_update(
        index_elements=[table.c.station_id, table.c.slot_number], set_=slot_upsert_set(statement.excluded)
    )


@lru_cache(maxsize=1)
def _station_snapshot_update() -> Any:
    table = table_of(Station)
    return (
        update(table)
        .where(table.c.id == bindparam("target_id"))
        .values(
            status=bindparam("status"),
            status_changed_at=bindparam("status_changed_at"),
            total_slots=bindparam("total_slots"),
            hardware_info=bindparam("hardware_info"),
            last_heartbeat=bindparam("last_heartbeat"),
            observed_at=bindparam("observed_at"),
            modified_at=bindparam("modified_at"),
        )
    )


class StationRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # ------------------------------------------------------------------ single station rows

    async def lock_by_imei(self, imei: str) -> Station | None:
        """The station row, locked until the transaction ends (PostgreSQL), so that two events of one
        station apply one after the other and the stale-snapshot check sees the newest ``observed_at``."""
        # SQLite renders no FOR UPDATE (it serialises writers anyway).
        query = select(Station).where(Station.imei == imei).with_for_update()
        rows = await self.session.execute(query.execution_options(populate_existing=True))
        return rows.scalar_one_or_none()

    async def insert_placeholder(self, *, imei: str, serial_number: str, name: str, now: datetime) -> bool:
        """Create an undeployed station; False when a concurrent request (or the serial) got there first."""
        statement = (
            insert_for(self.session, table_of(Station))
            .values(
                id=uuid.uuid4(),
                imei=imei,
                serial_number=serial_number,
                name=name,
                latitude=0.0,
                longitude=0.0,
                address="",
                landmark="",
                total_slots=0,
                status="OFFLINE",
                is_deployed=False,
                is_maintenance=False,
                hardware_info={},
                created_at=now,
            )
            .on_conflict_do_nothing()
        )
        result = await self.session.execute(statement)
        return bool(getattr(result, "rowcount", 0))

    async def get_by_serial(self, serial_number: str, *, with_slots: bool = False) -> Station | None:
        query = select(Station).where(Station.serial_number == serial_number)
        if with_slots:
            query = query.options(selectinload(Station.slots).selectinload(StationSlot.power_bank))
        rows = await self.session.execute(query)
        return rows.scalar_one_or_none()

    async def get_with_slots(self, station_id: uuid.UUID) -> Station | None:
        rows = await self.session.execute(
            select(Station)
            .where(Station.id == station_id)
            .options(selectinload(Station.slots).selectinload(StationSlot.power_bank))
        )
        return rows.scalar_one_or_none()

    async def get(self, station_id: uuid.UUID) -> Station | None:
        return await self.session.get(Station, station_id)

    async def serial_taken(self, serial_number: str, *, except_id: uuid.UUID | None = None) -> bool:
        query = select(Station.id).where(Station.serial_number == serial_number)
        if except_id is not None:
            query = query.where(Station.id != except_id)
        return (await self.session.scalar(query.limit(1))) is not None

    async def add_history(self, entry: StationStatusHistory) -> None:
        self.session.add(entry)

    # ------------------------------------------------------------------ set-based slot writes

    async def release_and_detach(self, station_id: uuid.UUID, bank_ids: Sequence[uuid.UUID]) -> None:
        """Before a snapshot's slots are written: empty every slot of this station and any slot elsewhere
        holding one of ``bank_ids`` (so the one-slot-per-bank unique constraint holds at every statement;
        a slot elsewhere that lost its bank is no longer occupied), and detach banks recorded at this
        station that the snapshot no longer lists. (The one-statement path of ``iot.snapshots`` does the
        same with CTEs.)"""
        slots = table_of(StationSlot)
        condition = slots.c.station_id == station_id
        if bank_ids:
            condition = or_(condition, slots.c.power_bank_id.in_(list(bank_ids)))
        await self.session.execute(
            update(slots)
            .where(and_(slots.c.power_bank_id.is_not(None), condition))
            .values(
                power_bank_id=None,
                status=case(
                    (slots.c.status == SlotStatus.OCCUPIED.value, SlotStatus.AVAILABLE.value),
                    else_=slots.c.status,
                ),
            )
        )
        banks = table_of(PowerBank)
        at_station = banks.c.current_station_id == station_id
        if bank_ids:
            at_station = at_station & banks.c.id.not_in(list(bank_ids))
        await self.session.execute(
            update(banks).where(at_station).values(current_station_id=None, current_slot_number=None)
        )

    async def apply_snapshot_fields(self, station_id: uuid.UUID, values: dict[str, Any]) -> None:
        """One UPDATE of the station row with what a snapshot carries (no ORM unit of work: hot path)."""
        await self.session.execute(_station_snapshot_update(), {"target_id": station_id, **values})

    async def upsert_slots(
        self, station_id: uuid.UUID, slots: Sequence[SlotObservation], now: datetime
    ) -> None:
        """Every observed slot of one station in ONE ``INSERT … ON CONFLICT DO UPDATE``."""
        if not slots:
            return
        # Parameter sets, not .values([...]): one cached statement executed for all rows at once.
        await self.session.execute(
            _slot_upsert(dialect_name(self.session)),
            [
                {
                    "id": uuid.uuid4(),
                    "station_id": station_id,
                    "slot_number": slot.slot_number,
                    "status": slot.status,
                    "battery_level": slot.battery_level,
                    "power_bank_id": slot.power_bank_id,
                    "slot_metadata": slot.metadata,
                    "created_at": now,
                }
                for slot in slots
            ],
        )

    async def delete_slots_outside(
        self, station_id: uuid.UUID, total_slots: int, listed: Sequence[int]
    ) -> None:
        """A full snapshot is the authority on which slots exist: a slot outside its layout (1..total_slots)
        that it does not list goes (a phantom from a stray slot event)."""
        table = table_of(StationSlot)
        await self.session.execute(
            delete(table).where(
                table.c.station_id == station_id,
                or_(table.c.slot_number > total_slots, table.c.slot_number < 1),
                table.c.slot_number.not_in(list(listed)),
            )
        )

    async def count_fault(self, station_id: uuid.UUID, source: str, code: str, at: datetime) -> None:
        """One more device-reported failure of ``code`` (``source``: the event type) at this station."""
        table = table_of(DeviceFaultCounter)
        statement = insert_for_dialect(dialect_name(self.session), table).values(
            id=uuid.uuid4(), station_id=station_id, source=source, code=code, count=1, last_seen_at=at
        )
        await self.session.execute(
            statement.on_conflict_do_update(
                index_elements=[table.c.station_id, table.c.source, table.c.code],
                set_={"count": table.c.count + 1, "last_seen_at": statement.excluded.last_seen_at},
            )
        )

    async def fault_counts(self, station_id: uuid.UUID) -> dict[tuple[str, str], int]:
        rows = await self.session.execute(
            select(DeviceFaultCounter.source, DeviceFaultCounter.code, DeviceFaultCounter.count).where(
                DeviceFaultCounter.station_id == station_id
            )
        )
        return {(source, code): count for source, code, count in rows}

    async def delete_slots_above(self, station_id: uuid.UUID, highest_slot: int) -> None:
        """The cabinet shrank (or was mis-reported before): slots beyond its size no longer exist."""
        table = table_of(StationSlot)
        await self.session.execute(
            delete(table).where(table.c.station_id == station_id, table.c.slot_number > highest_slot)
        )

    async def place_in_slot(
        self,
        station_id: uuid.UUID,
        slot: SlotObservation,
        now: datetime,
    ) -> None:
        """Put ``slot.power_bank_id`` (or nothing) into one slot: the bank leaves any other slot, a bank
        that was recorded in this slot is no longer there, then the slot row is upserted."""
        slots = table_of(StationSlot)
        banks = table_of(PowerBank)
        here = and_(slots.c.station_id == station_id, slots.c.slot_number == slot.slot_number)
        if slot.power_bank_id is not None:
            await self.session.execute(
                update(slots)
                .where(slots.c.power_bank_id == slot.power_bank_id, ~here)
                .values(
                    power_bank_id=None,
                    status=case(
                        (slots.c.status == SlotStatus.OCCUPIED.value, SlotStatus.AVAILABLE.value),
                        else_=slots.c.status,
                    ),
                )
            )
        displaced = and_(
            banks.c.current_station_id == station_id, banks.c.current_slot_number == slot.slot_number
        )
        if slot.power_bank_id is not None:
            displaced = and_(displaced, banks.c.id != slot.power_bank_id)
        await self.session.execute(
            update(banks).where(displaced).values(current_station_id=None, current_slot_number=None)
        )
        await self.upsert_slots(station_id, [slot], now)

    async def get_slot(self, station_id: uuid.UUID, slot_number: int) -> StationSlot | None:
        rows = await self.session.execute(
            select(StationSlot).where(
                StationSlot.station_id == station_id, StationSlot.slot_number == slot_number
            )
        )
        return rows.scalar_one_or_none()

    # ------------------------------------------------------------------ reads for the API

    async def search(
        self,
        *,
        deployed_only: bool,
        status: str | None,
        search: str | None,
        bounding_box: tuple[float, float, float, float] | None,
    ) -> list[Station]:
        """Stations matching the filters (distance filtering and paging happen in the service)."""
        query = select(Station)
        if deployed_only:
            query = query.where(Station.is_deployed.is_(True))
        if status:
            query = query.where(Station.status == status)
        if search:
            pattern = like_contains(search)
            query = query.where(
                or_(
                    func.lower(Station.name).like(pattern, escape=LIKE_ESCAPE),
                    func.lower(Station.address).like(pattern, escape=LIKE_ESCAPE),
                    func.lower(Station.landmark).like(pattern, escape=LIKE_ESCAPE),
                    func.lower(Station.serial_number).like(pattern, escape=LIKE_ESCAPE),
                )
            )
        if bounding_box is not None:
            min_lat, max_lat, min_lng, max_lng = bounding_box
            query = query.where(
                Station.latitude.between(min_lat, max_lat), Station.longitude.between(min_lng, max_lng)
            )
        rows = await self.session.execute(query.order_by(Station.name, Station.serial_number))
        return list(rows.scalars())

    async def rentable_counts(self, station_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
        """Banks per station that a renter could take now: in a slot, available, charged enough."""
        if not station_ids:
            return {}
        rows = await self.session.execute(
            select(StationSlot.station_id, func.count())
            .join(PowerBank, PowerBank.id == StationSlot.power_bank_id)
            .where(
                StationSlot.station_id.in_(list(station_ids)),
                StationSlot.status == SlotStatus.OCCUPIED.value,
                PowerBank.status == "AVAILABLE",
                PowerBank.condition == BankCondition.HEALTHY,
                PowerBank.battery_level >= RENTABLE_MIN_BATTERY,
            )
            .group_by(StationSlot.station_id)
        )
        return {station_id: int(count) for station_id, count in rows}

    async def history(self, station_id: uuid.UUID, *, limit: int, offset: int) -> list[StationStatusHistory]:
        rows = await self.session.execute(
            select(StationStatusHistory)
            .where(StationStatusHistory.station_id == station_id)
            .order_by(StationStatusHistory.changed_at.desc())
            .limit(limit)
            .offset(offset)
        )
        return list(rows.scalars())

    async def sync_logs(
        self, station_id: uuid.UUID, *, outcome: str | None, limit: int, offset: int
    ) -> list[SyncLog]:
        query = select(SyncLog).where(SyncLog.station_id == station_id)
        if outcome:
            query = query.where(SyncLog.outcome == outcome)
        rows = await self.session.execute(
            query.order_by(SyncLog.created_at.desc()).limit(limit).offset(offset)
        )
        return list(rows.scalars())


class SyncLogRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_resolving_station(self, entry: SyncLog) -> None:
        """Insert with ``station_id`` looked up by key at write time: the station may have been created in
        the transaction that just rolled back, so only a committed station is referenced."""
        table = table_of(SyncLog)
        station_id = (
            select(Station.id).where(Station.imei == entry.station_key).limit(1).scalar_subquery()
            if entry.station_key
            else None
        )
        await self.session.execute(
            table.insert().values(
                id=entry.id or uuid.uuid4(),
                station_id=station_id,
                station_key=entry.station_key,
                event_type=entry.event_type,
                event_id=entry.event_id,
                outcome=entry.outcome,
                payload=entry.payload or {},
                error=entry.error,
                duration_ms=entry.duration_ms or 0.0,
                created_at=entry.created_at or utcnow(),
            )
        )
