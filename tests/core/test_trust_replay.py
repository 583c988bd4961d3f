"""Replay protection of the internal endpoint: the signature is accepted once, whatever X-Event-Id says."""

from __future__ import annotations

import json
import uuid

from chargeghar_core.stations.models import Station, StationSlot, SyncLog
from chargeghar_protocol.signing import signed_headers
from core_support import HMAC_SECRET, INTERNAL_DATA, CoreClient, full_event, new_bank_serial, new_imei
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession


async def test_one_signed_request_with_three_event_ids_is_applied_once(
    client: CoreClient, session: AsyncSession
) -> None:
    imei = new_imei()
    bank = new_bank_serial()
    raw = json.dumps(full_event(imei, {1: bank, 2: None}), separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", **client.auth(), **signed_headers(HMAC_SECRET, raw)}
    event_ids = [uuid.uuid4().hex for _ in range(3)]
    answers = []
    for event_id in event_ids:
        answers.append(
            await client.http.post(INTERNAL_DATA, content=raw, headers={**headers, "X-Event-Id": event_id})
        )

    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert answers[0].json()["data"].get("duplicate") is None
    assert answers[1].json()["data"]["duplicate"] is True
    assert answers[2].json()["data"]["duplicate"] is True
    outcomes = (
        await session.execute(
            select(SyncLog.event_id, SyncLog.outcome).where(SyncLog.event_id.in_(event_ids))
        )
    ).all()
    assert sorted(outcome for _, outcome in outcomes) == ["DUPLICATE", "DUPLICATE", "SUCCESS"]
    station = (await session.execute(select(Station).where(Station.imei == imei))).scalar_one()
    slots = (
        await session.execute(
            select(func.count()).select_from(StationSlot).where(StationSlot.station_id == station.id)
        )
    ).scalar_one()
    assert slots == 2


async def test_a_failed_event_does_not_burn_its_signature(client: CoreClient) -> None:
    """The signature claim is part of the event's transaction: an event that is refused can be resent."""
    imei = new_imei()
    event = full_event(imei, {1: None})
    event["observed_at"] = "2999-01-01T00:00:00Z"  # refused (future), nothing applied
    raw = json.dumps(event, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", **client.auth(), **signed_headers(HMAC_SECRET, raw)}
    first = await client.http.post(INTERNAL_DATA, content=raw, headers={**headers, "X-Event-Id": "a1"})
    assert first.status_code == 400
    legit = full_event(new_imei(), {1: None})
    answer = await client.sync(legit)
    assert answer.status_code == 200 and answer.json()["data"].get("duplicate") is None


async def test_legacy_caller_without_event_id_still_deduplicates_on_its_signature(client: CoreClient) -> None:
    raw = json.dumps(full_event(new_imei(), {1: None}), separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", **client.auth(), **signed_headers(HMAC_SECRET, raw)}
    first = await client.http.post(INTERNAL_DATA, content=raw, headers=headers)
    second = await client.http.post(INTERNAL_DATA, content=raw, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.json()["data"].get("duplicate") is None
    assert second.json()["data"]["duplicate"] is True
