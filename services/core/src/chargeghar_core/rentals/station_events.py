"""What the rentals domain does when a station reports something: a return, a snapshot, a late command reply.

Station-event processing (``iot.service``) calls these functions directly, inside the event's transaction
with the event's session (flush only): a rental is closed exactly when the event is applied, and never again
for a duplicate or replayed event; a failure here rolls the event back with it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chargeghar_protocol.contract import CommandResultEvent
from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.rentals.service import RentalService, ReturnPlace, rupees
from chargeghar_core.settings import RentalSettings


@dataclass(frozen=True, slots=True)
class ReturnContext:
    """A bank was inserted into a slot (a ``returned`` event)."""

    station_id: uuid.UUID
    station_serial: str
    slot_number: int
    power_bank_id: uuid.UUID
    power_bank_serial: str
    battery_level: int | None
    returned_at: datetime
    condition: str
    event_key: str
    # False for a return reported only over device HTTP: recorded as a claim on the open rental instead of
    # completing it (design: "money follows corroborated facts").
    corroborated: bool = True


@dataclass(frozen=True, slots=True)
class RentalReturnOutcome:
    """What a return that found an open rental answers (contract.md §2.2)."""

    rental_id: str
    rental_code: str
    rental_status: str
    returned_on_time: bool
    amount_due: str
    extra: dict[str, Any] = field(default_factory=dict)
    # True when the return was only claimed: the rental stays out and the bank is not placed in the slot.
    claimed_only: bool = False


def _service(session: AsyncSession, settings: RentalSettings, currency: str) -> RentalService:
    return RentalService(session, settings, currency=currency)


async def complete_open_rental(
    session: AsyncSession, settings: RentalSettings, currency: str, context: ReturnContext
) -> RentalReturnOutcome | None:
    """Complete (or, uncorroborated, claim) the open rental of the returned bank; None when none is open."""
    place = ReturnPlace(context.station_id, context.slot_number, context.battery_level)
    service = _service(session, settings, currency)
    if not context.corroborated:
        claimed = await service.claim_return(context.power_bank_id, context.returned_at, place)
        if claimed is None:
            return None
        return RentalReturnOutcome(
            rental_id=str(claimed.id),
            rental_code=claimed.code,
            rental_status=claimed.status,
            returned_on_time=False,
            amount_due=rupees(claimed.amount_due_paisa),
            claimed_only=True,
        )
    rental = await service.complete_return(
        context.power_bank_id, context.returned_at, place, reason="returned"
    )
    if rental is None:
        return None
    return RentalReturnOutcome(
        rental_id=str(rental.id),
        rental_code=rental.code,
        rental_status=rental.status,
        returned_on_time=bool(rental.returned_on_time),
        amount_due=rupees(rental.amount_due_paisa),
        extra={
            "amount_due_paisa": rental.amount_due_paisa,
            "late_fee_paisa": rental.late_fee_paisa,
            "charged_paisa": rental.charged_paisa,
        },
    )


async def reconcile_snapshot(
    session: AsyncSession,
    settings: RentalSettings,
    currency: str,
    *,
    station_id: uuid.UUID,
    bank_serials: Sequence[str],
    observed_at: datetime,
    event_key: str,
) -> int:
    """A full snapshot shows these banks (each with an open rental) in the station's slots: close those
    rentals as returns at this station. Returns how many were closed. Called before the banks are written;
    only when the snapshot's claim found an open rental for one of them."""
    return await _service(session, settings, currency).reconcile_snapshot(
        station_id, bank_serials, observed_at
    )


async def settle_command_result(
    session: AsyncSession,
    settings: RentalSettings,
    currency: str,
    event: CommandResultEvent,
    station_id: uuid.UUID | None,
) -> dict[str, Any] | None:
    """A device reply that arrived after its waiter gave up: settle what it decides (a pending rental)."""
    return await _service(session, settings, currency).settle_command_result(
        command_id=event.command_id,
        cmd=event.cmd,
        outcome=event.outcome,
        reply=event.reply,
        station_id=station_id,
        observed_at=event.observed_at,
    )
