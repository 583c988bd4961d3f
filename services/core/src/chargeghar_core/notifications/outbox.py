"""Writing notifications: one outbox row per (event, renter, channel), in the caller's transaction.

The row commits or rolls back with the state change that caused it (style rule 12); a second write of the
same notification (a retried request, two replicas running the same reminder scan) inserts nothing.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.kit.db import insert_for, table_of, utcnow
from chargeghar_core.notifications.models import Channel, Language, NotificationOutbox, NotificationPreference
from chargeghar_core.notifications.templates import EVENT_CHANNELS, MANDATORY_EVENTS, Event

MAX_KEY_LENGTH = 200


def idempotency_key(event: Event, key: str, user_id: uuid.UUID | None, channel: Channel) -> str:
    return f"{event.value}:{key}:{user_id.hex if user_id else '-'}:{channel.value}"[:MAX_KEY_LENGTH]


async def preferences(session: AsyncSession, user_id: uuid.UUID) -> NotificationPreference:
    """The renter's preferences; the defaults (English, every channel on) when never set."""
    found = await session.get(NotificationPreference, user_id)
    return found or NotificationPreference(
        user_id=user_id,
        language=Language.ENGLISH.value,
        push_enabled=True,
        sms_enabled=True,
        email_enabled=True,
    )


def channel_enabled(prefs: NotificationPreference, channel: Channel) -> bool:
    return {
        Channel.PUSH: prefs.push_enabled,
        Channel.SMS: prefs.sms_enabled,
        Channel.EMAIL: prefs.email_enabled,
    }[channel]


async def notify(
    session: AsyncSession,
    event: Event,
    user_id: uuid.UUID,
    *,
    key: str,
    payload: dict[str, Any] | None = None,
    destinations: dict[Channel, str] | None = None,
) -> int:
    """Record ``event`` for the renter on each of its channels the renter has not switched off.

    ``key`` names the occurrence (a rental id, a payment id); ``destinations`` fixes the address per
    channel instead of looking the renter's up at delivery (used when the account is about to change).
    Returns the number of rows written (0 when every one existed already)."""
    prefs = await preferences(session, user_id)
    channels = [
        channel
        for channel in EVENT_CHANNELS[event]
        if event in MANDATORY_EVENTS or channel_enabled(prefs, channel)
    ]
    if destinations is not None:
        channels = [channel for channel in channels if destinations.get(channel)]
    rows = [
        {
            "id": uuid.uuid4(),
            "idempotency_key": idempotency_key(event, key, user_id, channel),
            "event": event.value,
            "user_id": user_id,
            "channel": channel.value,
            "destination": (destinations or {}).get(channel),
            "language": prefs.language,
            "payload": payload or {},
        }
        for channel in channels
    ]
    return await _insert(session, rows)


async def notify_login_code(
    session: AsyncSession,
    *,
    challenge_id: uuid.UUID,
    channel: Channel,
    destination: str,
    sealed_code: str,
    language: str,
    minutes: int,
    user_id: uuid.UUID | None,
) -> int:
    """A login code to a phone or e-mail address, which may not belong to any account yet."""
    row = {
        "id": uuid.uuid4(),
        "idempotency_key": idempotency_key(Event.OTP_CODE, challenge_id.hex, None, channel),
        "event": Event.OTP_CODE.value,
        "user_id": user_id,
        "channel": channel.value,
        "destination": destination,
        "language": language,
        "payload": {"minutes": minutes},
        "sealed_secret": sealed_code,
    }
    return await _insert(session, [row])


async def _insert(session: AsyncSession, rows: list[dict[str, Any]]) -> int:
    if not rows:
        return 0
    now = utcnow()
    for row in rows:
        row.setdefault("sealed_secret", None)
        row.update(status="PENDING", attempts=0, next_attempt_at=now, created_at=now)
    statement = (
        insert_for(session, table_of(NotificationOutbox))
        .values(rows)
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
    )
    result = await session.execute(statement)
    return int(getattr(result, "rowcount", 0) or 0)


async def pending_for(session: AsyncSession, user_id: uuid.UUID) -> list[NotificationOutbox]:
    rows = await session.scalars(
        select(NotificationOutbox).where(
            NotificationOutbox.user_id == user_id, NotificationOutbox.status == "PENDING"
        )
    )
    return list(rows)
