"""The rentals domain's implementations of the station-event seams of :mod:`chargeghar_core.iot.hooks`.

Each runs inside the event's transaction with the event's session (flush only), so a rental is closed
exactly when the event is applied, and never again for a duplicate or replayed event.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from chargeghar_protocol.contract import CommandResultEvent
from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.iot.hooks import IotHooks, RentalReturnOutcome, ReturnContext
from chargeghar_core.rentals.runtime import RentalRuntime
from chargeghar_core.rentals.service import RentalService, ReturnPlace, rupees


class RentalEventHooks:
    """One object for the three seams (returns, snapshot reconciliation, late command results).

    Settings are read from the runtime at each call, so configuring the app after it was created works.
    """

    def __init__(self, runtime: RentalRuntime) -> None:
        self.runtime = runtime

    def _service(self, session: AsyncSession) -> RentalService:
        return RentalService(session, self.runtime.settings, currency=self.runtime.payment_settings.currency)

    async def complete_open_rental(
        self, session: AsyncSession, context: ReturnContext
    ) -> RentalReturnOutcome | None:
        place = ReturnPlace(context.station_id, context.slot_number, context.battery_level)
        service = self._service(session)
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
        self,
        session: AsyncSession,
        *,
        station_id: uuid.UUID,
        bank_serials: Sequence[str],
        observed_at: datetime,
        event_key: str,
    ) -> int:
        return await self._service(session).reconcile_snapshot(station_id, bank_serials, observed_at)

    async def settle(
        self, session: AsyncSession, event: CommandResultEvent, station_id: uuid.UUID | None
    ) -> dict[str, Any] | None:
        return await self._service(session).settle_command_result(
            command_id=event.command_id,
            cmd=event.cmd,
            outcome=event.outcome,
            reply=event.reply,
            station_id=station_id,
            observed_at=event.observed_at,
        )


def rental_iot_hooks(runtime: RentalRuntime) -> IotHooks:
    hooks = RentalEventHooks(runtime)
    return IotHooks(returns=hooks, snapshot_returns=hooks, command_results=hooks)
