"""Every query of the pricing domain."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.pricing.models import LateFeePolicy, RentalPackage, StationDiscount


class PricingRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def package(self, package_id: uuid.UUID) -> RentalPackage | None:
        return await self.session.get(RentalPackage, package_id)

    async def packages(self, *, active_only: bool) -> list[RentalPackage]:
        query = select(RentalPackage)
        if active_only:
            query = query.where(RentalPackage.is_active.is_(True))
        rows = await self.session.execute(query.order_by(RentalPackage.duration_minutes, RentalPackage.name))
        return list(rows.scalars())

    async def policy(self, policy_id: uuid.UUID) -> LateFeePolicy | None:
        return await self.session.get(LateFeePolicy, policy_id)

    async def default_policy(self) -> LateFeePolicy | None:
        rows = await self.session.execute(select(LateFeePolicy).where(LateFeePolicy.is_default.is_(True)))
        return rows.scalar_one_or_none()

    async def policies(self) -> list[LateFeePolicy]:
        rows = await self.session.execute(select(LateFeePolicy).order_by(LateFeePolicy.name))
        return list(rows.scalars())

    async def clear_default_policy(self) -> None:
        await self.session.execute(
            update(LateFeePolicy).where(LateFeePolicy.is_default.is_(True)).values(is_default=False)
        )

    async def discount_for_station(self, station_id: uuid.UUID, at: datetime) -> StationDiscount | None:
        rows = await self.session.execute(
            select(StationDiscount).where(
                StationDiscount.station_id == station_id,
                StationDiscount.is_active.is_(True),
                or_(StationDiscount.valid_until.is_(None), StationDiscount.valid_until > at),
            )
        )
        return rows.scalar_one_or_none()

    async def station_discount(self, station_id: uuid.UUID) -> StationDiscount | None:
        rows = await self.session.execute(
            select(StationDiscount).where(StationDiscount.station_id == station_id)
        )
        return rows.scalar_one_or_none()

    async def discounts(self) -> list[StationDiscount]:
        rows = await self.session.execute(select(StationDiscount).order_by(StationDiscount.created_at))
        return list(rows.scalars())

    async def add(self, row: RentalPackage | LateFeePolicy | StationDiscount) -> None:
        self.session.add(row)
        await self.session.flush()

    async def delete(self, row: StationDiscount) -> None:
        await self.session.delete(row)
        await self.session.flush()
