"""Queries of the staff audit log."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.audit.models import StaffAuditEntry


class AuditRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def search(
        self,
        *,
        actor_id: uuid.UUID | None,
        actor_email: str | None,
        station_id: uuid.UUID | None,
        action: str | None,
        target_type: str | None,
        target_id: str | None,
        since: datetime | None,
        until: datetime | None,
        limit: int,
        offset: int,
    ) -> tuple[list[StaffAuditEntry], int]:
        query = select(StaffAuditEntry)
        if actor_id is not None:
            query = query.where(StaffAuditEntry.actor_id == actor_id)
        if actor_email:
            query = query.where(func.lower(StaffAuditEntry.actor_email) == actor_email.lower())
        if station_id is not None:
            query = query.where(StaffAuditEntry.station_id == station_id)
        if action:
            # "device" matches "device.command", "device.approve", ...: a prefix of dotted names.
            prefix = StaffAuditEntry.action.startswith(action + ".", autoescape=True)
            query = query.where((StaffAuditEntry.action == action) | prefix)
        if target_type:
            query = query.where(StaffAuditEntry.target_type == target_type)
        if target_id:
            query = query.where(StaffAuditEntry.target_id == target_id)
        if since is not None:
            query = query.where(StaffAuditEntry.created_at >= since)
        if until is not None:
            query = query.where(StaffAuditEntry.created_at < until)
        total = await self.session.scalar(select(func.count()).select_from(query.subquery()))
        rows = await self.session.scalars(
            query.order_by(StaffAuditEntry.created_at.desc(), StaffAuditEntry.id).limit(limit).offset(offset)
        )
        return list(rows), int(total or 0)
