"""The staff audit log: every staff action (who, what, which target, outcome), newest first, with filters.

The query is ``AuditRepository.search``, the one of ``GET /api/admin/audit-log``; secrets were masked when
the rows were written. Read-only: viewers see it like everyone else.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query, Response

from chargeghar_core.audit.repository import AuditRepository
from chargeghar_core.audit.schemas import AuditEntryView
from chargeghar_core.console.context import ConsoleError, Page
from chargeghar_core.console.pages import inputs
from chargeghar_core.console.pagination import PageNumber, Pager

router = APIRouter(prefix="/console", include_in_schema=False)

# The API's pattern for action and target names (a dotted prefix such as "rental" matches "rental.refund…").
NAME = re.compile(r"^[a-z0-9_.]+$")


def _name(value: str | None, field: str) -> str | None:
    picked = inputs.text(value)
    if picked is not None and not NAME.fullmatch(picked):
        raise inputs.InputError(f"{field}: lower-case letters, digits, '_' and '.' only")
    return picked


@router.get("/audit")
async def audit_log(
    ctx: Page,
    actor: Annotated[str | None, Query(max_length=254)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    target_type: Annotated[str | None, Query(max_length=32)] = None,
    target_id: Annotated[str | None, Query(max_length=128)] = None,
    from_day: Annotated[str | None, Query(alias="from", max_length=10)] = None,
    to_day: Annotated[str | None, Query(alias="to", max_length=10)] = None,
    page: PageNumber = 1,
) -> Response:
    try:
        since, until = inputs.nepal_days(inputs.day(from_day, "from"), inputs.day(to_day, "to"))
        action_name = _name(action, "action")
        target_name = _name(target_type, "target type")
    except inputs.InputError as exc:
        raise ConsoleError(400, str(exc)) from exc
    actor_text = inputs.text(actor)
    actor_id = inputs.identifier(actor_text)
    size = ctx.settings.page_size
    rows, total = await AuditRepository(ctx.db).search(
        actor_id=actor_id,
        actor_email=actor_text if actor_id is None else None,
        station_id=None,
        action=action_name,
        target_type=target_name,
        target_id=inputs.text(target_id),
        since=since,
        until=until,
        limit=size,
        offset=(page - 1) * size,
    )
    return ctx.render(
        "pages/audit_list.html",
        {
            "entries": [AuditEntryView.model_validate(row) for row in rows],
            "pager": Pager(page=page, page_size=size, total=total, url=ctx.request.url),
            "filters": {
                "actor": actor_text or "",
                "action": action_name or "",
                "target_type": target_name or "",
                "target_id": inputs.text(target_id) or "",
                "from": inputs.text(from_day) or "",
                "to": inputs.text(to_day) or "",
            },
        },
    )
