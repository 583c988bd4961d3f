"""Every query of the power-bank domain, including the set-based upserts of a station snapshot."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Select, case, func, literal_column, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from chargeghar_core.kit.db import LIKE_ESCAPE, dialect_name, insert_for_dialect, like_contains, table_of
from chargeghar_core.powerbanks.models import (
    BankCondition,
    OperatorStatus,
    PowerBank,
    PowerBankConditionHistory,
    PowerBankModel,
    PowerBankStatus,
)

# Marker put in a bank's hardware_info while its battery level is unknown (device 0xFF): the stored level
# is the last known one and is not overwritten.
BATTERY_UNKNOWN_KEY = "battery_unknown"

# Statuses an operator (or the rentals flow) owns: a device report never overwrites them.
# Literal SQL values: an expanding IN parameter cannot be part of an executemany statement.
# RETIRED is held too; a LOST bank reported in a slot is found (the device's report wins).
_HELD_STATUSES: list[ColumnElement[str]] = [
    literal_column(f"'{status}'")
    for status in (PowerBankStatus.MAINTENANCE.value, PowerBankStatus.DAMAGED.value, OperatorStatus.RETIRED)
]


@dataclass(frozen=True, slots=True)
class BankObservation:
    """What a snapshot or event says about one bank."""

    serial_number: str
    model: str
    capacity_mah: int
    status: str
    battery_level: int | None  # None: unknown, the stored level is kept
    hardware_info: dict[str, Any]
    station_id: uuid.UUID | None
    slot_number: int | None
    condition: str = BankCondition.HEALTHY  # what the device reports (see BankCondition)
    condition_code: str | None = None

    def stored_info(self) -> dict[str, Any]:
        """``hardware_info`` as stored: with the unknown-battery marker when the level is unknown."""
        if self.battery_level is None:
            return {**self.hardware_info, BATTERY_UNKNOWN_KEY: True}
        return self.hardware_info


@dataclass(frozen=True, slots=True)
class BankWritten:
    """A bank after an upsert: its id and the battery level stored (the known one when unknown now)."""

    id: uuid.UUID
    battery_level: int


def bank_upsert_set(table: Any, excluded: Any) -> dict[str, Any]:
    """What an observed bank overwrites when it exists (``ON CONFLICT (serial_number) DO UPDATE SET``): the
    one definition behind every bank upsert, whatever the dialect or the statement around it.

    Model and capacity are only set on insert (an admin may have corrected them); operator-held statuses
    survive; an unknown battery (the marker in the info) keeps the stored level; the condition follows the
    report, and its timestamp moves only when it changed."""
    condition_changed = or_(
        table.c.condition.is_distinct_from(excluded.condition),
        table.c.condition_code.is_distinct_from(excluded.condition_code),
    )
    return {
        "status": case((table.c.status.in_(_HELD_STATUSES), table.c.status), else_=excluded.status),
        "battery_level": case(
            (excluded.hardware_info[BATTERY_UNKNOWN_KEY].as_string().is_not(None), table.c.battery_level),
            else_=excluded.battery_level,
        ),
        "hardware_info": excluded.hardware_info,
        "condition": excluded.condition,
        "condition_code": excluded.condition_code,
        "condition_changed_at": case(
            (condition_changed, excluded.last_seen_at), else_=table.c.condition_changed_at
        ),
        "current_station_id": excluded.current_station_id,
        "current_slot_number": excluded.current_slot_number,
        "last_seen_at": excluded.last_seen_at,
        "modified_at": excluded.last_seen_at,
    }


@lru_cache(maxsize=4)
def _bank_upsert(dialect: str) -> Any:
    """Built once per dialect: constructing ``.excluded`` and the clauses costs more than executing."""
    table = table_of(PowerBank)
    statement = insert_for_dialect(dialect, table)
    return statement.on_conflict_do_update(
        index_elements=[table.c.serial_number], set_=bank_upsert_set(table, statement.excluded)
    ).returning(table.c.serial_number, table.c.id, table.c.battery_level)


class PowerBankRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def model_prefixes(self) -> list[tuple[str, str, int]]:
        rows = await self.session.execute(
            select(PowerBankModel.serial_prefix, PowerBankModel.model, PowerBankModel.capacity_mah)
        )
        return [(prefix, model, capacity) for prefix, model, capacity in rows]

    async def upsert_observed(
        self, banks: Sequence[BankObservation], seen_at: datetime, *, source: str = "full"
    ) -> dict[str, BankWritten]:
        """Insert unknown banks and update known ones with ONE multi-row upsert (after one read of their prior
        state); returns serial → written bank.

        Model and capacity are only set on insert (an admin may have corrected them); operator-held
        statuses (maintenance, damaged) survive; a bank seen in a slot is not rented any more (closing the
        rental is the rentals hook's job, run before this). The device-reported condition follows the
        report, and each change of it is written to the condition history (``source`` names the event).
        """
        if not banks:
            return {}
        # The prior conditions and levels are read first: a condition change goes to the history, and an
        # unknown level keeps the stored one. (The one-statement snapshot path of PostgreSQL does this inside
        # its statement: see ``iot.snapshots``.)
        prior_rows = await self.session.execute(
            select(
                PowerBank.serial_number,
                PowerBank.battery_level,
                PowerBank.condition,
                PowerBank.condition_code,
            ).where(PowerBank.serial_number.in_([bank.serial_number for bank in banks]))
        )
        prior = {serial: (battery, condition, code) for serial, battery, condition, code in prior_rows}
        # A list of parameter sets is sent as ONE multi-row statement ("insertmanyvalues") that, unlike
        # .values([...]), is compiled once and cached.
        rows = await self.session.execute(
            _bank_upsert(dialect_name(self.session)),
            [
                {
                    "id": uuid.uuid4(),
                    "serial_number": bank.serial_number,
                    "model": bank.model,
                    "capacity_mah": bank.capacity_mah,
                    "status": bank.status,
                    "battery_level": _known_level(bank, prior.get(bank.serial_number)),
                    "hardware_info": bank.stored_info(),
                    "current_station_id": bank.station_id,
                    "current_slot_number": bank.slot_number,
                    "total_rentals": 0,
                    "charge_cycles": 0,
                    "last_seen_at": seen_at,
                    "created_at": seen_at,
                    "condition": bank.condition,
                    "condition_code": bank.condition_code,
                    "condition_changed_at": seen_at,
                }
                for bank in banks
            ],
        )
        written = {serial: BankWritten(bank_id, battery) for serial, bank_id, battery in rows}
        changes = []
        for bank in banks:
            before = prior.get(bank.serial_number)
            changed = (
                before[1:] != (bank.condition, bank.condition_code)
                if before is not None
                else bank.condition != BankCondition.HEALTHY
            )
            if changed and bank.serial_number in written:
                changes.append(
                    {
                        "id": uuid.uuid4(),
                        "power_bank_id": written[bank.serial_number].id,
                        "previous_condition": before[1] if before else None,
                        "previous_code": before[2] if before else None,
                        "condition": bank.condition,
                        "condition_code": bank.condition_code,
                        "station_id": bank.station_id,
                        "slot_number": bank.slot_number,
                        "source": source,
                        "changed_at": seen_at,
                    }
                )
        if changes:
            await self.session.execute(table_of(PowerBankConditionHistory).insert(), changes)
        return written

    async def record_condition(
        self,
        bank: PowerBank,
        condition: str,
        code: str | None,
        *,
        station_id: uuid.UUID | None,
        slot_number: int | None,
        source: str,
        at: datetime,
    ) -> bool:
        """Set a loaded bank's device-reported condition; a change is written to the history. True when
        it changed."""
        if (bank.condition, bank.condition_code) == (condition, code):
            return False
        self.session.add(
            PowerBankConditionHistory(
                id=uuid.uuid4(),
                power_bank_id=bank.id,
                previous_condition=bank.condition,
                previous_code=bank.condition_code,
                condition=condition,
                condition_code=code,
                station_id=station_id,
                slot_number=slot_number,
                source=source,
                changed_at=at,
            )
        )
        bank.condition = condition
        bank.condition_code = code
        bank.condition_changed_at = at
        return True

    async def condition_history(self, bank_id: uuid.UUID) -> list[PowerBankConditionHistory]:
        rows = await self.session.execute(
            select(PowerBankConditionHistory)
            .where(PowerBankConditionHistory.power_bank_id == bank_id)
            .order_by(PowerBankConditionHistory.changed_at, PowerBankConditionHistory.id)
        )
        return list(rows.scalars())

    async def list_models(self) -> list[PowerBankModel]:
        rows = await self.session.execute(select(PowerBankModel).order_by(PowerBankModel.serial_prefix))
        return list(rows.scalars())

    async def prefix_mapped(self, serial_prefix: str) -> bool:
        query = select(PowerBankModel.id).where(PowerBankModel.serial_prefix == serial_prefix)
        return (await self.session.scalar(query)) is not None

    async def add_model(self, row: PowerBankModel) -> PowerBankModel:
        self.session.add(row)
        await self.session.flush()
        return row

    async def get_by_serial(self, serial_number: str) -> PowerBank | None:
        rows = await self.session.execute(select(PowerBank).where(PowerBank.serial_number == serial_number))
        return rows.scalar_one_or_none()

    async def search_banks(
        self,
        *,
        status: str | None,
        station_id: uuid.UUID | None,
        search: str | None,
        limit: int,
        offset: int,
    ) -> tuple[list[PowerBank], int]:
        query = bank_inventory(status=status, station_id=station_id, search=search)
        total = await self.session.scalar(select(func.count()).select_from(query.subquery()))
        rows = await self.session.execute(query.order_by(PowerBank.serial_number).limit(limit).offset(offset))
        return list(rows.scalars()), int(total or 0)


def bank_inventory(
    *,
    status: str | None = None,
    station_id: uuid.UUID | None = None,
    condition: str | None = None,
    search: str | None = None,
) -> Select[PowerBank]:
    """The inventory filter of the admin API and the console: status, station, device condition, and a
    case-insensitive part of the serial or model."""
    query = select(PowerBank)
    if status:
        query = query.where(PowerBank.status == status)
    if station_id:
        query = query.where(PowerBank.current_station_id == station_id)
    if condition:
        query = query.where(PowerBank.condition == condition)
    if search:
        pattern = like_contains(search)
        query = query.where(
            or_(
                func.lower(PowerBank.serial_number).like(pattern, escape=LIKE_ESCAPE),
                func.lower(PowerBank.model).like(pattern, escape=LIKE_ESCAPE),
            )
        )
    return query


def _known_level(bank: BankObservation, before: tuple[int, str, str | None] | None) -> int:
    """The level to store: the reported one, else (unknown) the stored one, else 0 for a new bank."""
    if bank.battery_level is not None:
        return bank.battery_level
    return before[0] if before is not None else 0
