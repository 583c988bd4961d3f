"""The notifications other domains emit, one call each, from inside their own transaction."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.notifications.outbox import notify
from chargeghar_core.notifications.templates import Event
from chargeghar_core.rentals.models import Rental


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


async def rental_event(session: AsyncSession, event: Event, rental_id: uuid.UUID) -> None:
    """Notify the renter of a rental's ``event``, with the rental as it is now in this transaction.

    ``RENTAL_RETURNED`` also announces the dues it left; ``REFUND_ISSUED`` / ``EJECT_FAILED`` say nothing
    when no money went back (a free rental)."""
    await session.flush()
    rental = await session.scalar(
        select(Rental).where(Rental.id == rental_id).execution_options(populate_existing=True)
    )
    if rental is None:
        return
    payload: dict[str, Any] = {
        "rental_id": str(rental.id),
        "rental_code": rental.code,
        "due_at": _iso(rental.due_at),
        "ended_at": _iso(rental.ended_at),
        "charged_paisa": rental.charged_paisa,
        "refunded_paisa": rental.refunded_paisa,
        "due_paisa": rental.amount_due_paisa,
        "amount_paisa": rental.refunded_paisa,
    }
    if event is Event.REFUND_ISSUED and rental.refunded_paisa <= 0:
        return
    await notify(session, event, rental.user_id, key=str(rental.id), payload=payload)
    if event is Event.RENTAL_RETURNED and rental.amount_due_paisa > 0:
        await notify(session, Event.DUE_CREATED, rental.user_id, key=str(rental.id), payload=payload)


async def topup_captured(
    session: AsyncSession, *, user_id: uuid.UUID, payment_id: uuid.UUID, amount_paisa: int, provider: str
) -> None:
    payload = {"payment_id": str(payment_id), "amount_paisa": amount_paisa, "provider": provider}
    await notify(session, Event.TOPUP_CAPTURED, user_id, key=str(payment_id), payload=payload)
