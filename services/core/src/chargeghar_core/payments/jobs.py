"""Re-checking pending eSewa/Khalti top-ups: the renter's redirect may never reach us (closed tab, lost
network), so a job asks the provider about top-ups still CREATED after ``topup_recheck_after_s`` and settles
them like a redirect would (credit once on COMPLETE, fail, or expire after ``topup_expire_after_s``).

Each payment is settled in its own transaction; one provider error does not stop the round. Safe with
several replicas: settling is a compare-and-set, and crediting is keyed by the payment.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chargeghar_core.kit.db import utcnow
from chargeghar_core.kit.errors import CoreError
from chargeghar_core.payments.models import PaymentStatus
from chargeghar_core.payments.providers import PaymentProviders
from chargeghar_core.payments.repository import PaymentRepository
from chargeghar_core.payments.service import LOOKUP_PROVIDERS, PaymentService
from chargeghar_core.rentals.settings import PaymentSettings

logger = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PaymentJobReport:
    checked: int
    captured: int
    failed: int
    expired: int
    errors: int


class PaymentJobs:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        providers: PaymentProviders,
        settings: PaymentSettings,
    ) -> None:
        self.sessions = sessions
        self.providers = providers
        self.settings = settings

    async def run_once(self) -> PaymentJobReport:
        names = [name for name in self.providers.names() if name in LOOKUP_PROVIDERS]
        if not names:
            return PaymentJobReport(0, 0, 0, 0, 0)
        now = utcnow()
        age = timedelta(seconds=self.settings.topup_recheck_after_s)
        async with self.sessions() as session:
            due = await PaymentRepository(session).due_for_lookup(
                names,
                created_before=now - age,
                checked_before=now - age,
                limit=self.settings.payment_job_batch_size,
            )
        counts = {status: 0 for status in PaymentStatus}
        errors = 0
        for payment_id in due:
            try:
                async with self.sessions() as session:
                    payment = await PaymentRepository(session).get(payment_id)
                    if payment is None:
                        continue
                    provider = self.providers.get(payment.provider)
                    settled = await PaymentService(session, self.settings).settle_by_lookup(payment, provider)
                    await session.commit()
                    counts[PaymentStatus(settled.status)] += 1
            except CoreError as exc:  # provider down, amount mismatch: logged, retried next round
                errors += 1
                logger.warning("topup_recheck_failed", payment_id=str(payment_id), error=exc.code)
        report = PaymentJobReport(
            len(due),
            counts[PaymentStatus.CAPTURED],
            counts[PaymentStatus.FAILED],
            counts[PaymentStatus.EXPIRED],
            errors,
        )
        if due:
            logger.info("payment_jobs_ran", **{k: getattr(report, k) for k in report.__slots__})
        return report

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.payment_job_interval_s)
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("payment_jobs_failed")
