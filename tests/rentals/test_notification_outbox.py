"""The notification outbox on a committed database (PostgreSQL when reachable): exactly one adapter call per
idempotency key across worker restarts and concurrent workers; retries; the chosen at-most-once rule."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from chargeghar_core.kit.db import create_sessionmaker, utcnow
from chargeghar_core.notifications.models import NotificationOutbox
from chargeghar_core.notifications.outbox import notify
from chargeghar_core.notifications.providers import DeliveryError, OutgoingMessage, Providers
from chargeghar_core.notifications.templates import Event
from chargeghar_core.notifications.worker import OutboxWorker
from chargeghar_core.renters.models import RenterSession
from rentals_support import add_renter, core_settings
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine


class Recording:
    name = "recording"

    def __init__(self, *, hang_on: str | None = None, fail_first: int = 0, permanent: bool = False) -> None:
        self.calls: list[OutgoingMessage] = []
        self.hang_on = hang_on
        self.fail_first = fail_first
        self.permanent = permanent

    async def send(self, message: OutgoingMessage) -> str:
        self.calls.append(message)
        if self.hang_on and message.idempotency_key.startswith(self.hang_on):
            await asyncio.Event().wait()  # the process "dies" here: cancelled below
        if self.fail_first:
            self.fail_first -= 1
            raise DeliveryError("gateway 503", permanent=self.permanent)
        return "ok"


def worker(engine: AsyncEngine, url: str, provider: Recording, *, minutes_later: int = 0) -> OutboxWorker:
    providers = Providers(push=provider, sms=provider, email=provider)
    return OutboxWorker(
        create_sessionmaker(engine),
        providers,
        core_settings(url),
        clock=lambda: utcnow() + timedelta(minutes=minutes_later),
    )


async def _renter_with_device(engine: AsyncEngine) -> uuid.UUID:
    maker = create_sessionmaker(engine)
    async with maker() as session:
        user_id = await add_renter(session, phone="+9779800" + f"{uuid.uuid4().int % 10**6:06d}")
        session.add(RenterSession(user_id=user_id, push_token=f"tok-{uuid.uuid4().hex}"))
        await session.commit()
    return user_id


async def _emit(engine: AsyncEngine, user_id: uuid.UUID, event: Event, key: str) -> None:
    async with create_sessionmaker(engine)() as session:
        await notify(session, event, user_id, key=key, payload={"rental_code": "R1", "amount_paisa": 500})
        # The same occurrence written twice (a retried request) adds nothing.
        await notify(session, event, user_id, key=key, payload={"rental_code": "R1", "amount_paisa": 500})
        await session.commit()


async def _statuses(engine: AsyncEngine, user_id: uuid.UUID) -> dict[str, str]:
    async with create_sessionmaker(engine)() as session:
        rows = await session.scalars(select(NotificationOutbox).where(NotificationOutbox.user_id == user_id))
        return {row.idempotency_key: row.status for row in rows}


async def test_a_restarted_worker_never_sends_a_key_twice(
    committed_engine: AsyncEngine, rentals_committed_url: str
) -> None:
    user_id = await _renter_with_device(committed_engine)
    await _emit(committed_engine, user_id, Event.RENTAL_STARTED, "rental-a")  # push only
    await _emit(committed_engine, user_id, Event.REFUND_ISSUED, "rental-b")  # push only
    keys = await _statuses(committed_engine, user_id)
    assert len(keys) == 2

    # Worker A calls the adapter for the first row and dies before recording the outcome.
    first = Recording(hang_on="rental_started")
    run = asyncio.create_task(worker(committed_engine, rentals_committed_url, first).run_once())

    def ours(calls: list[OutgoingMessage]) -> list[OutgoingMessage]:
        # The committed database is shared with other tests: only this renter's messages count.
        return [m for m in calls if user_id.hex in m.idempotency_key]

    for _ in range(500):
        if ours(first.calls):
            break
        await asyncio.sleep(0.01)
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
    assert [m.event for m in ours(first.calls)] == ["rental_started"]

    # Worker B starts later: the claimed row is UNCERTAIN (not re-sent); the other one is sent once.
    second = Recording()
    report = await worker(committed_engine, rentals_committed_url, second, minutes_later=10).run_once()
    assert report.uncertain >= 1
    sent_by_b = {m.idempotency_key for m in ours(second.calls)}
    statuses = await _statuses(committed_engine, user_id)
    uncertain = [key for key, status in statuses.items() if status == "UNCERTAIN"]
    assert uncertain == [ours(first.calls)[0].idempotency_key]
    assert sent_by_b == {key for key, status in statuses.items() if status == "SENT"}
    assert len(sent_by_b) == 1

    # Worker C: nothing left to send.
    third = Recording()
    await worker(committed_engine, rentals_committed_url, third, minutes_later=20).run_once()
    assert ours(third.calls) == []


@pytest.mark.postgres
async def test_concurrent_workers_deliver_each_row_exactly_once(
    committed_engine: AsyncEngine, rentals_committed_url: str
) -> None:
    user_id = await _renter_with_device(committed_engine)
    for index in range(12):
        await _emit(committed_engine, user_id, Event.RENTAL_STARTED, f"rental-{index}")
    shared = Recording()
    workers = [worker(committed_engine, rentals_committed_url, shared) for _ in range(3)]
    await asyncio.gather(*(w.run_once() for w in workers))
    await asyncio.gather(*(w.run_once() for w in workers))
    ours = [m.idempotency_key for m in shared.calls if str(user_id.hex) in m.idempotency_key]
    assert len(ours) == 12 and len(set(ours)) == 12
    assert set((await _statuses(committed_engine, user_id)).values()) == {"SENT"}


@pytest.mark.postgres
async def test_transient_errors_are_retried_with_backoff_and_permanent_ones_fail(
    committed_engine: AsyncEngine, rentals_committed_url: str
) -> None:
    user_id = await _renter_with_device(committed_engine)
    await _emit(committed_engine, user_id, Event.RENTAL_STARTED, "retry-me")
    flaky = Recording(fail_first=1)
    await worker(committed_engine, rentals_committed_url, flaky).run_once()
    assert set((await _statuses(committed_engine, user_id)).values()) == {"PENDING"}
    # Not yet due again (30 s back-off): nothing happens now; a minute later it goes out.
    await worker(committed_engine, rentals_committed_url, flaky).run_once()
    assert set((await _statuses(committed_engine, user_id)).values()) == {"PENDING"}
    await worker(committed_engine, rentals_committed_url, flaky, minutes_later=1).run_once()
    assert set((await _statuses(committed_engine, user_id)).values()) == {"SENT"}

    await _emit(committed_engine, user_id, Event.REFUND_ISSUED, "refuse-me")
    refusing = Recording(fail_first=5, permanent=True)
    await worker(committed_engine, rentals_committed_url, refusing, minutes_later=2).run_once()
    statuses = await _statuses(committed_engine, user_id)
    assert sorted(statuses.values()) == ["FAILED", "SENT"]
