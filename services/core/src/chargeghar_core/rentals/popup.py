"""Flow 3 of design.md: reserve and commit, THEN ask the station to eject, THEN settle.

No database transaction is open while the station is being asked: phase 1 commits the PENDING_POPUP
rental (the reservation is the "outbox" record of the eject), phase 2 talks to the ingest, phase 3 settles
in a new short transaction. If the process dies between phases, the pending-popup job re-checks the rental.
"""

from __future__ import annotations

import asyncio
import uuid

import structlog
from chargeghar_protocol.contract import CommandRequest
from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.kit.metrics import METRICS
from chargeghar_core.rentals.models import Rental, RentalStatus
from chargeghar_core.rentals.runtime import RentalRuntime
from chargeghar_core.rentals.service import RentalService, StartRequest

logger = structlog.get_logger(__name__)


class RentalStarter:
    def __init__(self, runtime: RentalRuntime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings

    def _service(self, session: AsyncSession) -> RentalService:
        return RentalService(session, self.settings, currency=self.runtime.payment_settings.currency)

    async def start(self, user_id: uuid.UUID, request: StartRequest) -> Rental:
        """Reserve, then pop within the bounded wait. The returned rental is ACTIVE, CANCELLED, or still
        PENDING_POPUP when the wait ran out (its settlement goes on in the background)."""
        async with self.runtime.sessions()() as session:
            try:
                rental = await self._service(session).reserve(user_id, request)
                await session.commit()
            except BaseException as exc:
                await session.rollback()
                METRICS.rental_failed(str(getattr(exc, "code", None) or type(exc).__name__))
                raise
        task = self.runtime.spawn(self.pop_and_settle(rental), name=f"popup:{rental.id}")
        # Shielded: the settlement goes on after the wait. asyncio.timeout, not wait_for: on Python 3.11
        # wait_for drops a cancellation of the request that arrives in the step the settlement ends.
        try:
            async with asyncio.timeout(self.settings.start_wait_s):
                return await asyncio.shield(task)
        except TimeoutError:
            return rental

    async def pop_and_settle(self, rental: Rental) -> Rental:
        commands = self.runtime.device_commands()
        popup = CommandRequest(
            cmd="popup_sn",
            data=rental.power_bank_serial,
            command_id=rental.popup_command_id,
            timeout_s=self.settings.popup_timeout_s,
        )
        attempt = await commands.send(rental.station_imei, popup)
        METRICS.popup_outcome(attempt.status)
        async with self.runtime.sessions()() as session:
            settled, needs_check = await self._service(session).apply_popup_attempt(rental.id, attempt)
            await session.commit()
        if not needs_check:
            return settled
        return await self.check_and_settle(settled)

    async def check_and_settle(self, rental: Rental) -> Rental:
        """Ask the station which banks it holds; settle the pending rental by the answer."""
        if rental.status != RentalStatus.PENDING_POPUP.value or rental.check_command_id is None:
            return rental
        check = CommandRequest(
            cmd="check", command_id=rental.check_command_id, timeout_s=self.settings.check_timeout_s
        )
        attempt = await self.runtime.device_commands().send(rental.station_imei, check)
        async with self.runtime.sessions()() as session:
            settled = await self._service(session).apply_check_attempt(rental.id, attempt)
            await session.commit()
        return settled

    async def recheck(self, rental_id: uuid.UUID) -> Rental | None:
        """For the job: a rental pending for too long gets a (new) check."""
        async with self.runtime.sessions()() as session:
            rental = await self._service(session).ensure_check_id(rental_id)
            await session.commit()
        if rental is None:
            return None
        return await self.check_and_settle(rental)
