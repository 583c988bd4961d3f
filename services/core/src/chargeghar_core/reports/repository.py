"""Queries of the operations views: ledger rows and payments across renters, revenue sums, the fleet sync log.

Every sum is taken from the wallet ledger (the record of money that moved), so the revenue report reconciles
with it by construction; rentals are only joined to name the station and the package.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Date, Select, case, cast, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from chargeghar_core.auth.models import User
from chargeghar_core.payments.models import LedgerEntry, LedgerKind, Payment
from chargeghar_core.pricing.models import RentalPackage
from chargeghar_core.rentals.models import Rental
from chargeghar_core.reports.schemas import GroupBy
from chargeghar_core.stations.models import Station, SyncLog

REVENUE_KINDS = (LedgerKind.RENTAL_CHARGE.value, LedgerKind.LATE_FEE.value, LedgerKind.REFUND.value)


@dataclass(frozen=True, slots=True)
class TransactionFilter:
    user_id: uuid.UUID | None = None
    kind: str | None = None
    status: str | None = None
    rental_id: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class SyncLogFilter:
    outcome: str | None = None
    event_type: str | None = None
    station_id: uuid.UUID | None = None
    station_key: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class RevenueSums:
    key: str
    label: str
    rental_charges_paisa: int
    late_fees_paisa: int
    refunds_paisa: int
    rentals: int


def _sum_of(kind: LedgerKind) -> ColumnElement[Any]:
    return func.coalesce(
        func.sum(case((LedgerEntry.kind == kind.value, LedgerEntry.amount_paisa), else_=0)), 0
    )


class ReportsRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # ------------------------------------------------------------------ transactions

    def _ledger_query(self, where: TransactionFilter) -> Select[LedgerEntry, str, str | None]:
        query = (
            select(LedgerEntry, User.email, Payment.provider)
            .join(User, User.id == LedgerEntry.user_id)
            .outerjoin(Payment, Payment.id == LedgerEntry.payment_id)
        )
        if where.user_id is not None:
            query = query.where(LedgerEntry.user_id == where.user_id)
        if where.kind is not None:
            query = query.where(LedgerEntry.kind == where.kind)
        if where.rental_id is not None:
            query = query.where(LedgerEntry.rental_id == where.rental_id)
        if where.since is not None:
            query = query.where(LedgerEntry.created_at >= where.since)
        if where.until is not None:
            query = query.where(LedgerEntry.created_at < where.until)
        return query

    async def ledger_page(
        self, where: TransactionFilter, *, limit: int, offset: int
    ) -> tuple[list[tuple[LedgerEntry, str, str | None]], int, int, int]:
        """Rows newest first, the total count and the sums of credits and debits over all matches."""
        query = self._ledger_query(where)
        rows = await self.session.execute(
            query.order_by(LedgerEntry.created_at.desc(), LedgerEntry.id).limit(limit).offset(offset)
        )
        matched = query.with_only_columns(LedgerEntry.amount_paisa).order_by(None).subquery()
        count, credits, debits = (
            await self.session.execute(
                select(
                    func.count(),
                    func.coalesce(
                        func.sum(case((matched.c.amount_paisa > 0, matched.c.amount_paisa), else_=0)), 0
                    ),
                    func.coalesce(
                        func.sum(case((matched.c.amount_paisa < 0, matched.c.amount_paisa), else_=0)), 0
                    ),
                ).select_from(matched)
            )
        ).one()
        return [(row[0], row[1], row[2]) for row in rows.all()], int(count), int(credits), int(debits)

    async def payment_page(
        self, where: TransactionFilter, *, limit: int, offset: int
    ) -> tuple[list[tuple[Payment, str]], int, int]:
        query = select(Payment, User.email).join(User, User.id == Payment.user_id)
        if where.user_id is not None:
            query = query.where(Payment.user_id == where.user_id)
        if where.status is not None:
            query = query.where(Payment.status == where.status)
        if where.since is not None:
            query = query.where(Payment.created_at >= where.since)
        if where.until is not None:
            query = query.where(Payment.created_at < where.until)
        rows = await self.session.execute(
            query.order_by(Payment.created_at.desc(), Payment.id).limit(limit).offset(offset)
        )
        matched = query.with_only_columns(Payment.amount_paisa).order_by(None).subquery()
        count, amount = (
            await self.session.execute(
                select(func.count(), func.coalesce(func.sum(matched.c.amount_paisa), 0)).select_from(matched)
            )
        ).one()
        return [(row[0], row[1]) for row in rows.all()], int(count), int(amount)

    # ------------------------------------------------------------------ revenue

    def _day(self) -> ColumnElement[Any]:
        if self.session.get_bind().dialect.name == "postgresql":
            return cast(func.timezone("UTC", LedgerEntry.created_at), Date)
        return func.date(LedgerEntry.created_at)

    async def revenue(self, since: datetime, until: datetime, group_by: GroupBy) -> list[RevenueSums]:
        """Sums of RENTAL_CHARGE, LATE_FEE and REFUND rows created in [since, until), per group."""
        if group_by is GroupBy.DAY:
            key: Any = self._day()
            label: Any = key
        elif group_by is GroupBy.STATION:
            key, label = (
                Rental.station_id,
                func.min(Station.name + literal(" (") + Station.serial_number + ")"),
            )
        else:
            key, label = Rental.package_id, func.min(RentalPackage.name)
        query = (
            select(
                key.label("key"),
                label.label("label") if group_by is not GroupBy.DAY else key.label("label"),
                _sum_of(LedgerKind.RENTAL_CHARGE),
                _sum_of(LedgerKind.LATE_FEE),
                _sum_of(LedgerKind.REFUND),
                func.count(func.distinct(LedgerEntry.rental_id)),
            )
            .select_from(LedgerEntry)
            .outerjoin(Rental, Rental.id == LedgerEntry.rental_id)
            .where(
                LedgerEntry.kind.in_(REVENUE_KINDS),
                LedgerEntry.created_at >= since,
                LedgerEntry.created_at < until,
            )
            .group_by(key)
            .order_by(key)
        )
        if group_by is GroupBy.STATION:
            query = query.outerjoin(Station, Station.id == Rental.station_id)
        elif group_by is GroupBy.PACKAGE:
            query = query.outerjoin(RentalPackage, RentalPackage.id == Rental.package_id)
        rows = (await self.session.execute(query)).all()
        return [
            RevenueSums(
                key="none" if row[0] is None else str(row[0]),
                label="(no rental)" if row[1] is None else str(row[1]),
                rental_charges_paisa=-int(row[2]),
                late_fees_paisa=-int(row[3]),
                refunds_paisa=int(row[4]),
                rentals=int(row[5]),
            )
            for row in rows
        ]

    async def kind_sums(self, since: datetime, until: datetime) -> dict[str, int]:
        """Signed sum per ledger kind over [since, until) (every kind, for the report's totals)."""
        rows = await self.session.execute(
            select(LedgerEntry.kind, func.sum(LedgerEntry.amount_paisa))
            .where(LedgerEntry.created_at >= since, LedgerEntry.created_at < until)
            .group_by(LedgerEntry.kind)
        )
        return {kind: int(total) for kind, total in rows.all()}

    async def revenue_rentals(self, since: datetime, until: datetime) -> int:
        return int(
            await self.session.scalar(
                select(func.count(func.distinct(LedgerEntry.rental_id))).where(
                    LedgerEntry.kind.in_(REVENUE_KINDS),
                    LedgerEntry.created_at >= since,
                    LedgerEntry.created_at < until,
                )
            )
            or 0
        )

    # ------------------------------------------------------------------ fleet sync log

    async def sync_logs(
        self, where: SyncLogFilter, *, limit: int, offset: int
    ) -> tuple[Sequence[tuple[SyncLog, str | None]], int]:
        query = select(SyncLog, Station.serial_number).outerjoin(Station, Station.id == SyncLog.station_id)
        if where.outcome is not None:
            query = query.where(SyncLog.outcome == where.outcome)
        if where.event_type is not None:
            query = query.where(SyncLog.event_type == where.event_type)
        if where.station_id is not None:
            query = query.where(SyncLog.station_id == where.station_id)
        if where.station_key is not None:
            query = query.where(SyncLog.station_key == where.station_key)
        if where.since is not None:
            query = query.where(SyncLog.created_at >= where.since)
        if where.until is not None:
            query = query.where(SyncLog.created_at < where.until)
        total = await self.session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
        rows = await self.session.execute(
            query.order_by(SyncLog.created_at.desc(), SyncLog.id).limit(limit).offset(offset)
        )
        return [(row[0], row[1]) for row in rows.all()], int(total or 0)
