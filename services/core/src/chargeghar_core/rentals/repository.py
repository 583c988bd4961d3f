"""Every query of the rentals domain, including the bank reservation (compare-and-set) and the CAS
transitions that make each settlement happen exactly once."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chargeghar_protocol.contract import PowerBankStatus, SlotStatus
from sqlalchemy import exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.kit.db import dialect_name, table_of, utcnow
from chargeghar_core.payments.repository import serialise_sqlite_writers
from chargeghar_core.powerbanks.models import BankCondition, PowerBank
from chargeghar_core.rentals.models import (
    OPEN_STATUSES,
    Rental,
    RentalAuditEntry,
    RentalExtension,
    RentalStatus,
)
from chargeghar_core.stations.models import Station, StationSlot


@dataclass(frozen=True, slots=True)
class RentableBank:
    bank_id: uuid.UUID
    serial_number: str
    slot_number: int
    battery_level: int


class OpenRentalConflict(Exception):
    """Inserting a rental broke one of the open-rental unique indexes (``which`` = "user" or "bank")."""

    def __init__(self, which: str) -> None:
        super().__init__(which)
        self.which = which


class RentalRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @property
    def _is_postgres(self) -> bool:
        return dialect_name(self.session) == "postgresql"

    @property
    def locks_rows(self) -> bool:
        """True where row locks (FOR UPDATE / SKIP LOCKED) exist; SQLite serialises whole writers instead."""
        return self._is_postgres

    # ------------------------------------------------------------------ reads

    async def get(self, rental_id: uuid.UUID) -> Rental | None:
        return await self.session.get(Rental, rental_id, populate_existing=True)

    async def lock(self, rental_id: uuid.UUID) -> Rental | None:
        """The rental, row-locked until the transaction ends on PostgreSQL (SQLite serialises writers)."""
        await serialise_sqlite_writers(self.session)
        query = select(Rental).where(Rental.id == rental_id).execution_options(populate_existing=True)
        if self._is_postgres:
            query = query.with_for_update()
        return (await self.session.execute(query)).scalar_one_or_none()

    async def open_for_user(self, user_id: uuid.UUID) -> Rental | None:
        rows = await self.session.execute(
            select(Rental).where(Rental.user_id == user_id, Rental.status.in_(OPEN_STATUSES))
        )
        return rows.scalar_one_or_none()

    async def open_for_bank(self, bank_id: uuid.UUID, *, lock: bool) -> Rental | None:
        query = (
            select(Rental)
            .where(Rental.power_bank_id == bank_id, Rental.status.in_(OPEN_STATUSES))
            .execution_options(populate_existing=True)
        )
        if lock and self._is_postgres:
            query = query.with_for_update()
        return (await self.session.execute(query)).scalar_one_or_none()

    async def open_for_serials(self, serials: Sequence[str]) -> list[Rental]:
        """Open rentals of any of these banks, in one query, locked (PostgreSQL)."""
        if not serials:
            return []
        query = (
            select(Rental)
            .where(Rental.power_bank_serial.in_(list(serials)), Rental.status.in_(OPEN_STATUSES))
            .order_by(Rental.id)
            .execution_options(populate_existing=True)
        )
        if self._is_postgres:
            query = query.with_for_update()
        return list((await self.session.execute(query)).scalars())

    async def pending_by_command(self, command_id: str) -> Rental | None:
        query = (
            select(Rental)
            .where(
                Rental.status == RentalStatus.PENDING_POPUP.value,
                (Rental.popup_command_id == command_id) | (Rental.check_command_id == command_id),
            )
            .execution_options(populate_existing=True)
        )
        if self._is_postgres:
            query = query.with_for_update()
        return (await self.session.execute(query)).scalar_one_or_none()

    async def pending_at_station_for_serial(self, station_id: uuid.UUID, serial: str) -> Rental | None:
        query = (
            select(Rental)
            .where(
                Rental.status == RentalStatus.PENDING_POPUP.value,
                Rental.station_id == station_id,
                Rental.power_bank_serial == serial,
            )
            .execution_options(populate_existing=True)
        )
        if self._is_postgres:
            query = query.with_for_update()
        return (await self.session.execute(query)).scalar_one_or_none()

    async def dues_of(self, user_id: uuid.UUID) -> int:
        value = await self.session.scalar(
            select(func.coalesce(func.sum(Rental.amount_due_paisa), 0)).where(
                Rental.user_id == user_id, Rental.amount_due_paisa > 0
            )
        )
        return int(value or 0)

    async def with_dues(self, user_id: uuid.UUID) -> list[Rental]:
        query = (
            select(Rental)
            .where(Rental.user_id == user_id, Rental.amount_due_paisa > 0)
            .order_by(Rental.ended_at, Rental.id)
            .execution_options(populate_existing=True)
        )
        if self._is_postgres:
            query = query.with_for_update()
        return list((await self.session.execute(query)).scalars())

    async def history(
        self, user_id: uuid.UUID | None, *, status: str | None, limit: int, offset: int
    ) -> tuple[list[Rental], int]:
        query = select(Rental)
        if user_id is not None:
            query = query.where(Rental.user_id == user_id)
        if status:
            query = query.where(Rental.status == status)
        total = await self.session.scalar(select(func.count()).select_from(query.subquery()))
        rows = await self.session.execute(
            query.order_by(Rental.created_at.desc(), Rental.id).limit(limit).offset(offset)
        )
        return list(rows.scalars()), int(total or 0)

    async def code_taken(self, code: str) -> bool:
        return (await self.session.scalar(select(Rental.id).where(Rental.code == code))) is not None

    async def station(self, station_id: uuid.UUID) -> Station | None:
        return await self.session.get(Station, station_id)

    async def station_by_serial(self, serial: str) -> Station | None:
        rows = await self.session.execute(select(Station).where(Station.serial_number == serial))
        return rows.scalar_one_or_none()

    async def bank(self, bank_id: uuid.UUID) -> PowerBank | None:
        return await self.session.get(PowerBank, bank_id, populate_existing=True)

    # ------------------------------------------------------------------ reservation

    async def rentable_banks(
        self, station_id: uuid.UUID, *, min_battery: int, serial: str | None, limit: int, lock: bool = True
    ) -> list[RentableBank]:
        """Banks a renter can take now at this station, fullest first.

        On PostgreSQL the rows are locked with SKIP LOCKED, so concurrent starts each get a different bank
        at once instead of queueing behind one row.
        """
        has_open_rental = exists().where(
            Rental.power_bank_id == PowerBank.id, Rental.status.in_(OPEN_STATUSES)
        )
        query = (
            select(PowerBank.id, PowerBank.serial_number, StationSlot.slot_number, PowerBank.battery_level)
            .join(StationSlot, StationSlot.power_bank_id == PowerBank.id)
            .where(
                StationSlot.station_id == station_id,
                StationSlot.status == SlotStatus.OCCUPIED.value,
                PowerBank.status == PowerBankStatus.AVAILABLE.value,
                PowerBank.condition == BankCondition.HEALTHY,  # the device reports no fault
                PowerBank.battery_level >= min_battery,
                ~has_open_rental,
            )
            .order_by(PowerBank.battery_level.desc(), StationSlot.slot_number)
            .limit(limit)
        )
        if serial is not None:
            query = query.where(PowerBank.serial_number == serial)
        if lock and self._is_postgres:
            query = query.with_for_update(of=PowerBank, skip_locked=True)
        rows = await self.session.execute(query)
        return [RentableBank(bank_id, sn, slot, battery) for bank_id, sn, slot, battery in rows]

    async def reserve_bank(self, bank_id: uuid.UUID) -> bool:
        """AVAILABLE → RENTED, compare-and-set: False when someone else changed it first."""
        table = table_of(PowerBank)
        result = await self.session.execute(
            update(table)
            .where(table.c.id == bank_id, table.c.status == PowerBankStatus.AVAILABLE.value)
            .values(status=PowerBankStatus.RENTED.value, modified_at=utcnow())
        )
        return bool(getattr(result, "rowcount", 0))

    async def release_bank(self, bank_id: uuid.UUID) -> None:
        """Undo a reservation: RENTED → AVAILABLE (an operator-held status is left alone)."""
        table = table_of(PowerBank)
        await self.session.execute(
            update(table)
            .where(table.c.id == bank_id, table.c.status == PowerBankStatus.RENTED.value)
            .values(status=PowerBankStatus.AVAILABLE.value, modified_at=utcnow())
        )

    async def take_out_of_slot(self, bank_id: uuid.UUID) -> None:
        """The bank left its slot with a renter: slot empty, bank rented and nowhere."""
        slots = table_of(StationSlot)
        banks = table_of(PowerBank)
        now = utcnow()
        await self.session.execute(
            update(slots)
            .where(slots.c.power_bank_id == bank_id)
            .values(power_bank_id=None, status=SlotStatus.AVAILABLE.value, battery_level=0, modified_at=now)
        )
        await self.session.execute(
            update(banks)
            .where(banks.c.id == bank_id)
            .values(
                status=PowerBankStatus.RENTED.value,
                current_station_id=None,
                current_slot_number=None,
                total_rentals=banks.c.total_rentals + 1,
                modified_at=now,
            )
        )

    async def insert(self, rental: Rental) -> None:
        """Insert inside a savepoint so that a unique-index conflict leaves the transaction usable."""
        try:
            async with self.session.begin_nested():
                self.session.add(rental)
        except IntegrityError as exc:
            text = str(exc.orig).lower()
            raise OpenRentalConflict("user" if "open_user" in text or "user_id" in text else "bank") from exc

    # ------------------------------------------------------------------ transitions

    async def transition(
        self, rental_id: uuid.UUID, from_statuses: Sequence[str], values: dict[str, Any]
    ) -> bool:
        """Compare-and-set on the status: True for the one caller that moved it."""
        table = table_of(Rental)
        result = await self.session.execute(
            update(table)
            .where(table.c.id == rental_id, table.c.status.in_(list(from_statuses)))
            .values(**values, modified_at=utcnow())
        )
        return bool(getattr(result, "rowcount", 0))

    async def mark_overdue(self, now: datetime) -> int:
        """ACTIVE past due → OVERDUE in one statement (idempotent; safe with several replicas)."""
        table = table_of(Rental)
        result = await self.session.execute(
            update(table)
            .where(table.c.status == RentalStatus.ACTIVE.value, table.c.due_at < now)
            .values(status=RentalStatus.OVERDUE.value, modified_at=now)
        )
        return int(getattr(result, "rowcount", 0) or 0)

    async def claim_batch(self, condition: Any, *, limit: int) -> list[Rental]:
        """Rentals matching ``condition`` that no other replica is working on (SKIP LOCKED on PostgreSQL)."""
        query = (
            select(Rental)
            .where(condition)
            .order_by(Rental.id)
            .limit(limit)
            .execution_options(populate_existing=True)
        )
        if self._is_postgres:
            query = query.with_for_update(skip_locked=True)
        return list((await self.session.execute(query)).scalars())

    async def add_extension(self, extension: RentalExtension) -> None:
        self.session.add(extension)

    async def add_audit(self, entry: RentalAuditEntry) -> None:
        self.session.add(entry)

    async def extensions(self, rental_id: uuid.UUID) -> list[RentalExtension]:
        rows = await self.session.execute(
            select(RentalExtension)
            .where(RentalExtension.rental_id == rental_id)
            .order_by(RentalExtension.created_at)
        )
        return list(rows.scalars())
