"""Every query of the power-bank domain, including the set-based upserts of a station snapshot."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import case, func, literal_column, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from chargeghar_core.kit.db import dialect_name, insert_for_dialect, table_of
from chargeghar_core.powerbanks.models import PowerBank, PowerBankModel, PowerBankStatus

# Statuses an operator (or the rentals flow) owns: a device report never overwrites them.
# Literal SQL values: an expanding IN parameter cannot be part of an executemany statement.
_HELD_STATUSES: list[ColumnElement[str]] = [
    literal_column(f"'{status.value}'") for status in (PowerBankStatus.MAINTENANCE, PowerBankStatus.DAMAGED)
]


@dataclass(frozen=True, slots=True)
class BankObservation:
    """What a snapshot or event says about one bank."""

    serial_number: str
    model: str
    capacity_mah: int
    status: str
    battery_level: int
    hardware_info: dict[str, Any]
    station_id: uuid.UUID | None
    slot_number: int | None


@lru_cache(maxsize=4)
def _bank_upsert(dialect: str) -> Any:
    """Built once per dialect: constructing ``.excluded`` and the clauses costs more than executing."""
    table = table_of(PowerBank)
    statement = insert_for_dialect(dialect, table)
    excluded = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=[table.c.serial_number],
        set_={
            "status": case((table.c.status.in_(_HELD_STATUSES), table.c.status), else_=excluded.status),
            "battery_level": excluded.battery_level,
            "hardware_info": excluded.hardware_info,
            "current_station_id": excluded.current_station_id,
            "current_slot_number": excluded.current_slot_number,
            "last_seen_at": excluded.last_seen_at,
            "modified_at": excluded.last_seen_at,
        },
    ).returning(table.c.serial_number, table.c.id)


# PostgreSQL: every bank of a snapshot in one statement whose SQL text never changes (arrays, not one
# VALUES tuple per row), so it is prepared once per connection and costs almost nothing to send.
_PG_BANK_UPSERT = text(
    """
    INSERT INTO power_banks (id, serial_number, model, capacity_mah, status, battery_level, hardware_info,
        current_station_id, current_slot_number, total_rentals, charge_cycles, last_seen_at, created_at)
    SELECT gen_random_uuid(), t.serial, t.model, t.capacity, t.status, t.battery, CAST(t.info AS jsonb),
        t.station_id, t.slot, 0, 0, CAST(:seen_at AS timestamptz), CAST(:seen_at AS timestamptz)
    FROM unnest(CAST(:serials AS text[]), CAST(:models AS text[]), CAST(:capacities AS int[]),
        CAST(:statuses AS text[]), CAST(:batteries AS int[]), CAST(:infos AS text[]),
        CAST(:station_ids AS uuid[]), CAST(:slots AS int[]))
        AS t(serial, model, capacity, status, battery, info, station_id, slot)
    ON CONFLICT (serial_number) DO UPDATE SET
        status = CASE WHEN power_banks.status IN ('MAINTENANCE', 'DAMAGED') THEN power_banks.status
                      ELSE excluded.status END,
        battery_level = excluded.battery_level,
        hardware_info = excluded.hardware_info,
        current_station_id = excluded.current_station_id,
        current_slot_number = excluded.current_slot_number,
        last_seen_at = excluded.last_seen_at,
        modified_at = excluded.last_seen_at
    RETURNING serial_number, id
    """
)


class PowerBankRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def model_prefixes(self) -> list[tuple[str, str, int]]:
        rows = await self.session.execute(
            select(PowerBankModel.serial_prefix, PowerBankModel.model, PowerBankModel.capacity_mah)
        )
        return [(prefix, model, capacity) for prefix, model, capacity in rows]

    async def upsert_observed(
        self, banks: Sequence[BankObservation], seen_at: datetime
    ) -> dict[str, uuid.UUID]:
        """Insert unknown banks and update known ones in ONE statement; returns serial → id.

        Model and capacity are only set on insert (an admin may have corrected them); operator-held
        statuses (maintenance, damaged) survive; a bank seen in a slot is not rented any more (closing the
        rental is the rentals hook's job, run before this).
        """
        if not banks:
            return {}
        if dialect_name(self.session) == "postgresql":
            rows = await self.session.execute(
                _PG_BANK_UPSERT,
                {
                    "seen_at": seen_at,
                    "serials": [bank.serial_number for bank in banks],
                    "models": [bank.model for bank in banks],
                    "capacities": [bank.capacity_mah for bank in banks],
                    "statuses": [bank.status for bank in banks],
                    "batteries": [bank.battery_level for bank in banks],
                    "infos": [json.dumps(bank.hardware_info) for bank in banks],
                    "station_ids": [bank.station_id for bank in banks],
                    "slots": [bank.slot_number for bank in banks],
                },
            )
            return {serial: bank_id for serial, bank_id in rows}
        # SQLite: a list of parameter sets is sent as ONE multi-row statement ("insertmanyvalues") that,
        # unlike .values([...]), is compiled once and cached.
        rows = await self.session.execute(
            _bank_upsert("sqlite"),
            [
                {
                    "id": uuid.uuid4(),
                    "serial_number": bank.serial_number,
                    "model": bank.model,
                    "capacity_mah": bank.capacity_mah,
                    "status": bank.status,
                    "battery_level": bank.battery_level,
                    "hardware_info": bank.hardware_info,
                    "current_station_id": bank.station_id,
                    "current_slot_number": bank.slot_number,
                    "total_rentals": 0,
                    "charge_cycles": 0,
                    "last_seen_at": seen_at,
                    "created_at": seen_at,
                }
                for bank in banks
            ],
        )
        return {serial: bank_id for serial, bank_id in rows}

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
        query = select(PowerBank)
        if status:
            query = query.where(PowerBank.status == status)
        if station_id:
            query = query.where(PowerBank.current_station_id == station_id)
        if search:
            pattern = f"%{search.lower()}%"
            query = query.where(
                or_(
                    func.lower(PowerBank.serial_number).like(pattern),
                    func.lower(PowerBank.model).like(pattern),
                )
            )
        total = await self.session.scalar(select(func.count()).select_from(query.subquery()))
        rows = await self.session.execute(query.order_by(PowerBank.serial_number).limit(limit).offset(offset))
        return list(rows.scalars()), int(total or 0)
