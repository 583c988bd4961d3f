"""The one staff audit log (read-only; viewers may read it)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from chargeghar_core.audit.repository import AuditRepository
from chargeghar_core.audit.schemas import AuditEntryView
from chargeghar_core.auth.dependencies import StaffUser
from chargeghar_core.kit.db import DbSession
from chargeghar_core.kit.errors import ValidationFailed
from chargeghar_core.kit.schemas import Envelope, Page, PageNumber

router = APIRouter(prefix="/api/admin", tags=["admin: operations"])

NAME = r"^[a-z0-9_.]+$"


@router.get(
    "/audit-log",
    response_model=Envelope[Page[AuditEntryView]],
    summary="Every staff action, newest first (who, what, which station, outcome; secrets masked)",
    description=(
        "Filter by actor (`actor_id` or `actor_email`), `station_id`, `action` (exact or a dotted prefix: "
        "`device` matches `device.command` and `device.approve`), target, and time (`since` inclusive, "
        "`until` exclusive, ISO 8601 with offset). Values of keys such as password, secret, token, pwd and "
        "key are stored as `***`."
    ),
)
async def audit_log(
    _staff: StaffUser,
    session: DbSession,
    actor_id: uuid.UUID | None = None,
    actor_email: Annotated[str | None, Query(max_length=254)] = None,
    station_id: uuid.UUID | None = None,
    action: Annotated[str | None, Query(max_length=64, pattern=NAME)] = None,
    target_type: Annotated[str | None, Query(max_length=32, pattern=NAME)] = None,
    target_id: Annotated[str | None, Query(max_length=128)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    page: PageNumber = 1,
    page_size: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Envelope[Page[AuditEntryView]]:
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise ValidationFailed(details={name: "needs a UTC offset (e.g. 2026-12-01T10:00:00Z)"})
    rows, total = await AuditRepository(session).search(
        actor_id=actor_id,
        actor_email=actor_email,
        station_id=station_id,
        action=action,
        target_type=target_type,
        target_id=target_id,
        since=since,
        until=until,
        limit=page_size,
        offset=(page - 1) * page_size,
    )
    return Envelope(
        message="Audit log",
        data=Page(
            items=[AuditEntryView.model_validate(row) for row in rows],
            total=total,
            page=page,
            page_size=page_size,
        ),
    )
