"""Periodic work of the rentals domain, safe with several core replicas.

- overdue: ACTIVE past due → OVERDUE in one idempotent UPDATE (the late fee is computed live from the due
  time and charged once, when the rental ends — so no minute is ever charged twice);
- lost: rentals overdue for ``lost_after_hours`` are closed by the lost-bank policy, each claimed with
  ``FOR UPDATE SKIP LOCKED`` (PostgreSQL) so two replicas never process the same one;
- pending popups: a rental still PENDING_POPUP long after its eject (the process died, or the `check`
  could not reach the station) gets a new `check`; the answer settles it (compare-and-set, exactly once).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import asdict, dataclass

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.kit.db import utcnow
from chargeghar_core.rentals.popup import RentalStarter
from chargeghar_core.rentals.runtime import RentalRuntime
from chargeghar_core.rentals.service import RentalService

logger = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class JobReport:
    marked_overdue: int
    marked_lost: int
    pending_rechecked: int


class RentalJobs:
    def __init__(self, runtime: RentalRuntime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings

    def _service(self, session: AsyncSession) -> RentalService:
        return RentalService(session, self.settings, currency=self.runtime.payment_settings.currency)

    async def run_once(self) -> JobReport:
        now = utcnow()
        async with self.runtime.sessions()() as session:
            overdue = await self._service(session).mark_overdue(now)
            lost = await self._service(session).apply_lost_policy(now, self.settings.job_batch_size)
            pending = await self._service(session).pending_to_recheck(now, self.settings.job_batch_size)
            pending_ids = [rental.id for rental in pending]
            await session.commit()
        starter = RentalStarter(self.runtime)
        for rental_id in pending_ids:
            await starter.recheck(rental_id)
        report = JobReport(overdue, lost, len(pending_ids))
        if overdue or lost or pending_ids:
            logger.info("rental_jobs_ran", **asdict(report))
        return report

    async def run_forever(self) -> None:
        while True:
            # Sleep first: a process that starts and stops at once (tests, CLI) never runs a round.
            await asyncio.sleep(self.settings.overdue_job_interval_s)
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                # One failed round (database restart, network) must not end the loop.
                logger.exception("rental_jobs_failed")


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
