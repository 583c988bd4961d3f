"""Delivering the outbox: claim rows, call the channel's adapter, record the outcome.

Delivery semantics — **at most once per idempotency key**. A row moves PENDING → CLAIMED (a batch leased by
one worker) → SENDING (committed just *before* its adapter call) → SENT / PENDING (retry with back-off) /
FAILED / SKIPPED. A lease older than ``stale_sending_s`` goes back to PENDING (its adapter was never
called). If the worker dies between SENDING and recording the outcome, nobody knows whether the provider
accepted the message; such a row becomes UNCERTAIN and is never sent again.
We chose this over at-least-once because a duplicated SMS costs money and a duplicated "overdue" alarm
confuses renters, while a lost one is repaired by the next reminder; the key is passed to the provider
(Idempotency-Key header, FCM data, e-mail Message-ID) so a provider that deduplicates could make a future
at-least-once mode safe. Retries after a provider's *answer* (timeouts excluded) are the only re-sends.

Several replicas: on PostgreSQL rows are claimed with ``FOR UPDATE SKIP LOCKED``; on SQLite (one replica)
each claim is a compare-and-set ``UPDATE … WHERE status = 'PENDING'``. No transaction is held open while an
adapter is called.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chargeghar_core.auth.models import User
from chargeghar_core.kit.db import utcnow
from chargeghar_core.notifications.models import Channel, NotificationOutbox, OutboxStatus
from chargeghar_core.notifications.providers import DeliveryError, OutgoingMessage, Providers
from chargeghar_core.notifications.reminders import ReminderScan
from chargeghar_core.notifications.sealing import OtpKeys, mask_destination
from chargeghar_core.notifications.templates import Event, render
from chargeghar_core.renters.models import RenterProfile, RenterSession
from chargeghar_core.settings import Settings

logger = structlog.get_logger(__name__)

REMINDER_EVERY_S = 30.0


@dataclass(slots=True)
class DeliveryReport:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    skipped: int = 0
    uncertain: int = 0
    claimed: list[uuid.UUID] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Job:
    row_id: uuid.UUID
    attempts: int
    messages: list[OutgoingMessage]
    skip_reason: str | None = None


class OutboxWorker:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        providers: Providers,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.providers = providers
        self.settings = settings.notifications
        self.keys = OtpKeys(settings)
        self.clock = clock
        self.reminders = ReminderScan(sessionmaker, settings.notifications, clock=clock)
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        self._wakeup.set()

    async def run_once(self) -> DeliveryReport:
        report = DeliveryReport()
        report.uncertain = await self._give_up_stale_claims()
        claimed = await self._claim()
        report.claimed = [row_id for row_id, _ in claimed]
        for row_id, attempts in claimed:
            outcome = await self._deliver(row_id, attempts)
            setattr(report, outcome, getattr(report, outcome) + 1)
        return report

    async def run_forever(self) -> None:
        last_scan = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                if loop.time() - last_scan >= REMINDER_EVERY_S:
                    last_scan = loop.time()
                    await self.reminders.run_once()
                report = await self.run_once()
                if report.claimed or report.uncertain:
                    logger.info(
                        "notifications_delivered",
                        sent=report.sent,
                        retried=report.retried,
                        failed=report.failed,
                        skipped=report.skipped,
                        uncertain=report.uncertain,
                    )
                if len(report.claimed) >= self.settings.batch_size:
                    continue  # more waiting: no pause
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("notification_worker_failed")
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=self.settings.poll_interval_s)
            except TimeoutError:
                pass

    # ------------------------------------------------------------------------------------------ claiming

    async def _give_up_stale_claims(self) -> int:
        cutoff = self.clock() - timedelta(seconds=self.settings.stale_sending_s)
        async with self.sessionmaker() as session:
            # Leased but never handed to an adapter: safe to send.
            await session.execute(
                update(NotificationOutbox)
                .where(
                    NotificationOutbox.status == OutboxStatus.CLAIMED.value,
                    NotificationOutbox.claimed_at < cutoff,
                )
                .values(status=OutboxStatus.PENDING.value)
            )
            result = await session.execute(
                update(NotificationOutbox)
                .where(
                    NotificationOutbox.status == OutboxStatus.SENDING.value,
                    NotificationOutbox.claimed_at < cutoff,
                )
                .values(
                    status=OutboxStatus.UNCERTAIN.value,
                    destination=None,
                    sealed_secret=None,
                    last_error="worker stopped during delivery; not re-sent (at-most-once)",
                )
            )
            await session.commit()
        count = int(getattr(result, "rowcount", 0) or 0)
        if count:
            logger.warning("notifications_uncertain", count=count)
        return count

    async def _claim(self) -> list[tuple[uuid.UUID, int]]:
        now = self.clock()
        async with self.sessionmaker() as session:
            postgres = session.get_bind().dialect.name == "postgresql"
            query = (
                select(NotificationOutbox.id, NotificationOutbox.attempts)
                .where(
                    NotificationOutbox.status == OutboxStatus.PENDING.value,
                    NotificationOutbox.next_attempt_at <= now,
                )
                .order_by(NotificationOutbox.next_attempt_at, NotificationOutbox.id)
                .limit(self.settings.batch_size)
            )
            if postgres:
                query = query.with_for_update(skip_locked=True)
            candidates = [(row_id, attempts) for row_id, attempts in await session.execute(query)]
            claimed: list[tuple[uuid.UUID, int]] = []
            for row_id, attempts in candidates:
                # Compare-and-set: on SQLite this is what keeps a row from being claimed twice.
                result = await session.execute(
                    update(NotificationOutbox)
                    .where(
                        NotificationOutbox.id == row_id,
                        NotificationOutbox.status == OutboxStatus.PENDING.value,
                    )
                    .values(status=OutboxStatus.CLAIMED.value, claimed_at=now)
                )
                if getattr(result, "rowcount", 0) == 1:
                    claimed.append((row_id, attempts + 1))
            await session.commit()
        return claimed

    # ------------------------------------------------------------------------------------------ delivery

    async def _prepare(self, row_id: uuid.UUID, attempts: int) -> _Job:
        async with self.sessionmaker() as session:
            row = await session.get(NotificationOutbox, row_id)
            assert row is not None
            channel = Channel(row.channel)
            code: str | None = None
            if row.sealed_secret is not None:
                code = self.keys.unseal(row.sealed_secret)
                if code is None:
                    return _Job(row_id, attempts, [], "sealed code unreadable (secret rotated)")
            targets = await self._targets(session, row, channel)
            if not targets:
                return _Job(row_id, attempts, [], "no destination")
            rendered = render(row.event, row.language, row.payload, code=code)
            data = {key: str(value) for key, value in row.payload.items() if value is not None}
            messages = [
                OutgoingMessage(
                    idempotency_key=row.idempotency_key,
                    event=row.event,
                    channel=channel,
                    destination=target,
                    title=rendered.title,
                    body=rendered.body,
                    data=data,
                    contains_secret=code is not None,
                )
                for target in targets
            ]
            return _Job(row_id, attempts, messages)

    async def _targets(self, session: AsyncSession, row: NotificationOutbox, channel: Channel) -> list[str]:
        if row.destination:
            return [row.destination]
        if row.user_id is None:
            return []
        profile = await session.get(RenterProfile, row.user_id)
        if profile is None or profile.deleted_at is not None:
            return []
        if channel is Channel.PUSH:
            tokens = await session.scalars(
                select(RenterSession.push_token).where(
                    RenterSession.user_id == row.user_id,
                    RenterSession.revoked_at.is_(None),
                    RenterSession.push_token.is_not(None),
                )
            )
            return sorted({token for token in tokens if token})
        if channel is Channel.SMS:
            return [profile.phone] if profile.phone else []
        user = await session.get(User, row.user_id)
        if user is None or user.email.endswith(".invalid"):
            return []
        return [user.email]

    async def _deliver(self, row_id: uuid.UUID, attempts: int) -> str:
        job = await self._prepare(row_id, attempts)
        if job.skip_reason is not None:
            await self._finish(row_id, OutboxStatus.SKIPPED, error=job.skip_reason)
            return "skipped"
        provider = self.providers.for_channel(job.messages[0].channel)
        if provider.name == "none":
            await self._finish(row_id, OutboxStatus.SKIPPED, error="channel disabled")
            return "skipped"
        if not await self._mark_sending(row_id, attempts):
            return "skipped"  # the lease expired and another worker took the row
        delivered = 0
        errors: list[DeliveryError] = []
        for message in job.messages:
            try:
                await provider.send(message)
                delivered += 1
            except DeliveryError as exc:
                errors.append(exc)
                if exc.bad_destination and message.channel is Channel.PUSH:
                    await self._forget_push_token(message.destination)
            except Exception as exc:  # an adapter bug must not stop the worker; retried like an outage
                logger.exception("notification_adapter_crashed", provider=provider.name)
                errors.append(DeliveryError(f"adapter error: {type(exc).__name__}"))
        first = job.messages[0]
        log = logger.bind(
            notification=first.event,
            channel=first.channel.value,
            provider=provider.name,
            destination=mask_destination(first.destination),
            idempotency_key=first.idempotency_key,
            attempt=attempts,
        )
        if delivered:
            await self._finish(row_id, OutboxStatus.SENT)
            log.info("notification_sent", devices=delivered)
            return "sent"
        reason = "; ".join(error.reason for error in errors)[:500]
        if all(error.permanent for error in errors) or attempts >= self.settings.max_attempts:
            await self._finish(row_id, OutboxStatus.FAILED, error=reason)
            log.warning("notification_failed", reason=reason)
            return "failed"
        delay = self.settings.retry_base_s * 2 ** (attempts - 1)
        await self._finish(
            row_id,
            OutboxStatus.PENDING,
            error=reason,
            next_attempt_at=self.clock() + timedelta(seconds=delay),
        )
        log.info("notification_retry", reason=reason, retry_in_s=delay)
        return "retried"

    async def _finish(
        self,
        row_id: uuid.UUID,
        status: OutboxStatus,
        *,
        error: str | None = None,
        next_attempt_at: datetime | None = None,
    ) -> None:
        values: dict[str, object] = {"status": status.value, "last_error": error}
        if status is OutboxStatus.SENT:
            values["sent_at"] = self.clock()
        if status is OutboxStatus.PENDING:
            values["next_attempt_at"] = next_attempt_at
        else:
            # Done: the address and the sealed code are not needed any more.
            values.update(destination=None, sealed_secret=None)
        async with self.sessionmaker() as session:
            await session.execute(
                update(NotificationOutbox)
                .where(
                    NotificationOutbox.id == row_id,
                    NotificationOutbox.status.in_([OutboxStatus.CLAIMED.value, OutboxStatus.SENDING.value]),
                )
                .values(**values)
            )
            await session.commit()

    async def _mark_sending(self, row_id: uuid.UUID, attempts: int) -> bool:
        """Committed before the adapter call: from here on a crash makes the row UNCERTAIN."""
        async with self.sessionmaker() as session:
            result = await session.execute(
                update(NotificationOutbox)
                .where(
                    NotificationOutbox.id == row_id, NotificationOutbox.status == OutboxStatus.CLAIMED.value
                )
                .values(status=OutboxStatus.SENDING.value, claimed_at=self.clock(), attempts=attempts)
            )
            await session.commit()
        return getattr(result, "rowcount", 0) == 1

    async def _forget_push_token(self, token: str) -> None:
        async with self.sessionmaker() as session:
            await session.execute(
                update(RenterSession).where(RenterSession.push_token == token).values(push_token=None)
            )
            await session.commit()


def event_of(row: NotificationOutbox) -> Event:
    return Event(row.event)
