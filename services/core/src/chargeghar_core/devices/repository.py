"""Queries of the device registry."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.devices.models import Device
from chargeghar_core.kit.db import insert_for, table_of


class DeviceRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, imei: str, *, for_update: bool = False) -> Device | None:
        query = select(Device).where(Device.imei == imei)
        if for_update:
            query = query.with_for_update()
        return (await self.session.execute(query)).scalar_one_or_none()

    async def insert_if_absent(self, imei: str, status: str, now: datetime, *, seen: bool) -> bool:
        """Add a row unless the IMEI has one (concurrent connects of one new station race here)."""
        statement = (
            insert_for(self.session, table_of(Device))
            .values(
                id=uuid.uuid4(),
                imei=imei,
                status=status,
                first_seen_at=now if seen else None,
                last_seen_at=now if seen else None,
                approved_at=now if status == "approved" else None,
                created_at=now,
            )
            .on_conflict_do_nothing(index_elements=["imei"])
        )
        result = await self.session.execute(statement)
        return bool(getattr(result, "rowcount", 0))

    async def mark_seen(self, imei: str, now: datetime) -> None:
        await self.session.execute(
            update(Device)
            .where(Device.imei == imei)
            .values(last_seen_at=now, first_seen_at=func.coalesce(Device.first_seen_at, now))
            .execution_options(synchronize_session=False)
        )

    async def search(self, *, status: str | None, limit: int, offset: int) -> tuple[Sequence[Device], int]:
        query = select(Device)
        count = select(func.count()).select_from(Device)
        if status is not None:
            query = query.where(Device.status == status)
            count = count.where(Device.status == status)
        rows = await self.session.execute(
            query.order_by(Device.created_at.desc(), Device.imei).limit(limit).offset(offset)
        )
        total = (await self.session.execute(count)).scalar_one()
        return rows.scalars().all(), int(total)
