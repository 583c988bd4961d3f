"""returned / status / slot_event / command_result, batches, failures, rate limits, IP allow-list and the
constant statement count of a full sync."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from chargeghar_core.iot.endpoints import failure_answer
from chargeghar_core.kit.errors import ValidationFailed
from chargeghar_core.kit.ratelimit import InProcessRateLimiter, RedisRateLimiter
from chargeghar_core.powerbanks.models import PowerBank
from chargeghar_core.rentals.station_events import RentalReturnOutcome, ReturnContext
from chargeghar_core.settings import InternalSettings, RedisSettings
from chargeghar_core.stations.models import Station, StationSlot, StationStatusHistory, SyncLog
from core_support import (
    INTERNAL_BATCH,
    INTERNAL_DATA,
    CoreClient,
    StatementCounter,
    ask_rentals_always,
    full_event,
    new_bank_serial,
    new_imei,
    returned_event,
    status_event,
)
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

ClientFactory = Callable[..., Any]


async def _station(session: AsyncSession, imei: str) -> Station:
    row = await session.execute(
        select(Station).where(Station.imei == imei).execution_options(populate_existing=True)
    )
    return row.scalar_one()


async def _bank(session: AsyncSession, serial: str) -> PowerBank:
    row = await session.execute(
        select(PowerBank).where(PowerBank.serial_number == serial).execution_options(populate_existing=True)
    )
    return row.scalar_one()


async def _slot(session: AsyncSession, station_id: uuid.UUID, number: int) -> StationSlot:
    row = await session.execute(
        select(StationSlot)
        .where(StationSlot.station_id == station_id, StationSlot.slot_number == number)
        .execution_options(populate_existing=True)
    )
    return row.scalar_one()


async def _history(session: AsyncSession, station_id: uuid.UUID) -> list[tuple[str | None, str, str]]:
    rows = await session.execute(
        select(
            StationStatusHistory.previous_status, StationStatusHistory.status, StationStatusHistory.trigger
        )
        .where(StationStatusHistory.station_id == station_id)
        .order_by(StationStatusHistory.changed_at)
    )
    return [(previous, status, trigger) for previous, status, trigger in rows]


# ------------------------------------------------------------------------------------------- returned


async def test_return_rehomes_the_bank_with_its_reported_battery(
    client: CoreClient, session: AsyncSession
) -> None:
    imei = new_imei()
    bank = new_bank_serial()
    await client.sync(full_event(imei, {1: None, 2: None, 3: bank}, battery=40))

    response = await client.sync(returned_event(imei, bank, 1, battery=95))

    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["rehomed"] is True and data["rental_id"] is None
    assert (data["slot_number"], data["battery_level"]) == (1, 95)
    station = await _station(session, imei)
    power_bank = await _bank(session, bank)
    assert (power_bank.current_station_id, power_bank.current_slot_number, power_bank.battery_level) == (
        station.id,
        1,
        95,
    )
    new_slot, old_slot = await _slot(session, station.id, 1), await _slot(session, station.id, 3)
    assert new_slot.power_bank_id == power_bank.id and new_slot.status == "OCCUPIED"
    assert old_slot.power_bank_id is None and old_slot.status == "AVAILABLE"


async def test_return_of_an_unknown_bank_creates_it(client: CoreClient, session: AsyncSession) -> None:
    imei = new_imei()
    await client.sync(full_event(imei, {1: None, 2: None}))
    serial = new_bank_serial()
    response = await client.sync(returned_event(imei, serial, 2, battery=None))
    assert response.status_code == 200, response.text
    assert (await _bank(session, serial)).current_slot_number == 2


@pytest.mark.parametrize(
    ("known_station", "slot", "path"),
    [(False, 1, "device.imei"), (True, 9, "return_event.slot_number")],
    ids=["unknown-station", "unknown-slot"],
)
async def test_return_to_unknown_station_or_slot_is_400_and_logged(
    client: CoreClient, session: AsyncSession, known_station: bool, slot: int, path: str
) -> None:
    imei = new_imei()
    if known_station:
        await client.sync(full_event(imei, {1: None, 2: None}))
    event_id = uuid.uuid4().hex
    response = await client.sync(returned_event(imei, new_bank_serial(), slot), event_id=event_id)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "VALIDATION_ERROR" and path in body["details"]
    logs = (
        (await session.execute(select(SyncLog.outcome).where(SyncLog.event_id == event_id))).scalars().all()
    )
    assert logs == ["FAILED"]


class _RentalDesk:
    """Stands in for the rentals domain's station-event functions: one open rental for one bank."""

    def __init__(self, open_for: str) -> None:
        self.open_for = open_for
        self.completed: list[ReturnContext] = []

    async def complete_open_rental(
        self, session: AsyncSession, settings: object, currency: str, context: ReturnContext
    ) -> RentalReturnOutcome | None:
        if context.power_bank_serial != self.open_for or self.completed:
            return None
        self.completed.append(context)
        return RentalReturnOutcome("r-1", "RNT-0001", "COMPLETED", True, "0.00")

    async def reconcile_snapshot(
        self,
        session: AsyncSession,
        settings: object,
        currency: str,
        *,
        station_id: uuid.UUID,
        bank_serials: Sequence[str],
        observed_at: datetime,
        event_key: str,
    ) -> int:
        return 1 if self.open_for in bank_serials else 0


async def test_return_with_an_open_rental_goes_through_the_rentals_service(
    client_factory: ClientFactory, session: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    bank = new_bank_serial()
    desk = _RentalDesk(open_for=bank)
    ask_rentals_always(
        monkeypatch,
        complete_open_rental=desk.complete_open_rental,
        reconcile_snapshot=desk.reconcile_snapshot,
    )
    async with client_factory() as client:
        imei = new_imei()
        first = await client.sync(full_event(imei, {1: None, 2: bank}))
        assert first.json()["data"]["returns_reconciled"] == 1
        response = await client.sync(returned_event(imei, bank, 1))
        # A second, distinct report (other battery reading, so another body and signature): no rental left.
        again = await client.sync(returned_event(imei, bank, 1, battery=90))

    data = response.json()["data"]
    assert (data["rental_code"], data["rental_status"], data["rehomed"]) == ("RNT-0001", "COMPLETED", False)
    assert again.json()["data"]["rehomed"] is True
    assert len(desk.completed) == 1
    assert (await _bank(session, bank)).current_slot_number == 1


# ------------------------------------------------------------------------------------------- status


async def test_status_changes_are_recorded_once_and_hardware_info_merged(
    client: CoreClient, session: AsyncSession
) -> None:
    imei = new_imei()
    base = datetime.now(UTC) - timedelta(minutes=10)
    await client.sync(status_event(imei, "ONLINE", observed_at=base.isoformat(), signal_strength=20))
    await client.sync(status_event(imei, "ONLINE", observed_at=(base + timedelta(minutes=1)).isoformat()))
    offline = await client.sync(
        status_event(imei, "OFFLINE", observed_at=(base + timedelta(minutes=5)).isoformat(), backup_power=2)
    )
    late = await client.sync(
        status_event(imei, "ONLINE", observed_at=(base + timedelta(minutes=4)).isoformat())
    )

    assert offline.json()["data"]["status_changed"] is True
    assert late.json()["data"]["applied"] is False
    station = await _station(session, imei)
    assert station.status == "OFFLINE" and station.is_deployed is False
    assert station.hardware_info == {"signal_strength": 20, "backup_power": 2}
    assert await _history(session, station.id) == [
        ("OFFLINE", "ONLINE", "status"),
        ("ONLINE", "OFFLINE", "status"),
    ]
    durations = (
        await session.execute(
            select(StationStatusHistory.previous_duration_s)
            .where(StationStatusHistory.station_id == station.id)
            .order_by(StationStatusHistory.changed_at)
        )
    ).scalars()
    assert list(durations) == [None, 300.0]


# ------------------------------------------------------------------------------------------- extensions


async def test_slot_event_updates_the_slot(client: CoreClient, session: AsyncSession) -> None:
    imei = new_imei()
    bank = new_bank_serial()
    await client.sync(full_event(imei, {1: bank, 2: None}))
    station = await _station(session, imei)
    event = {
        "type": "slot_event",
        "timestamp": int(time.time()),
        "device": {"imei": imei},
        "slot_number": 2,
        "state_code": 1,
        "state_name": "RETURNED",
        "slot_status": "OCCUPIED",
        "power_bank_serial": bank,
        "battery_level": 77,
        "observed_at": datetime.now(UTC).isoformat(),
    }
    response = await client.sync(event)
    assert response.status_code == 200, response.text
    assert response.json()["data"]["applied"] is True
    slot_two = await _slot(session, station.id, 2)
    assert slot_two.status == "OCCUPIED" and slot_two.battery_level == 77
    assert slot_two.slot_metadata["state_name"] == "RETURNED"
    assert (await _slot(session, station.id, 1)).power_bank_id is None
    assert (await _bank(session, bank)).current_slot_number == 2


async def test_command_result_is_accepted_and_logged(client: CoreClient, session: AsyncSession) -> None:
    event_id = uuid.uuid4().hex
    event = {
        "type": "command_result",
        "timestamp": int(time.time()),
        "device": {"imei": new_imei()},
        "command_id": "c-1",
        "cmd": "popup_sn",
        "outcome": "ok",
        "reply_cmd": "0x31",
        "reply": {"result": 1},
        "elapsed_ms": 16000,
    }
    response = await client.sync(event, event_id=event_id)
    assert response.status_code == 200
    assert response.json()["data"]["acknowledged"] is True
    logs = (
        (await session.execute(select(SyncLog.outcome).where(SyncLog.event_id == event_id))).scalars().all()
    )
    assert logs == ["SUCCESS"]


async def test_command_audit_is_recorded_in_the_sync_log_and_shown_to_staff(
    client: CoreClient, session: AsyncSession
) -> None:
    from chargeghar_core.auth.models import Role

    imei = new_imei()
    assert (await client.sync(full_event(imei, {1: None}))).status_code == 200
    station = await _station(session, imei)
    audits = [
        {"command_id": "c-busy", "outcome": "refused", "refusal_code": "DEVICE_BUSY", "refusal_status": 409},
        {"command_id": "c-ok", "outcome": "ok", "elapsed_ms": 812, "qos": 1, "reply": {"cmd": "0xcf"}},
    ]
    for audit in audits:
        event = {
            "type": "command_audit",
            "timestamp": int(time.time()),
            "device": {"imei": imei},
            "cmd": "setWifi",
            "requested_by": "admin:ops@example.com",
            "payload": {"cmd": "setWifi", "username": "cafe", "password": "***"},
            "replica": "ingest-1",
            **audit,
        }
        response = await client.sync(event, event_id=uuid.uuid4().hex)
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert data["recorded"] is True and data["station_id"] == str(station.id)
    # An audit of a station core does not know yet is recorded too (no station is created for it).
    stranger = {"type": "command_audit", "timestamp": 1, "device": {"imei": new_imei()}}
    stranger |= {"cmd": "check", "outcome": "refused", "refusal_code": "DEVICE_OFFLINE"}
    assert (await client.sync(stranger)).status_code == 200

    logs = await client.http.get(
        f"/api/admin/stations/{station.id}/sync-logs", headers=client.auth(Role.STAFF)
    )
    assert logs.status_code == 200, logs.text
    entries = [e for e in logs.json()["data"] if e["event_type"] == "command_audit"]
    assert sorted((e["payload"]["command_id"], e["payload"]["outcome"]) for e in entries) == [
        ("c-busy", "refused"),
        ("c-ok", "ok"),
    ]
    assert all(e["outcome"] == "SUCCESS" and e["payload"]["payload"]["password"] == "***" for e in entries)
    bad = {"type": "command_audit", "timestamp": 1, "device": {"imei": imei}, "cmd": "x", "outcome": "maybe"}
    answer = await client.sync(bad)
    assert answer.status_code == 400 and answer.json()["error"] == "VALIDATION_ERROR"


# ------------------------------------------------------------------------------------------- failures


async def _exploding_reconcile(session: AsyncSession, settings: object, currency: str, **kwargs: Any) -> int:
    """The rentals step of a snapshot fails after the station row was created: everything must roll back."""
    raise RuntimeError("rentals database on fire")


async def test_failing_event_answers_500_sync_error_and_rolls_back(
    client_factory: ClientFactory, session: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    imei = new_imei()
    event_id = uuid.uuid4().hex
    ask_rentals_always(monkeypatch, reconcile_snapshot=_exploding_reconcile)
    async with client_factory() as client:
        response = await client.sync(full_event(imei, {1: new_bank_serial()}), event_id=event_id)
        retry_ok = await client.sync(status_event(imei, "ONLINE"), event_id=event_id)

    assert response.status_code == 500
    assert response.json() == {
        "success": False,
        "message": "full event could not be processed",
        "error": "SYNC_ERROR",
    }
    logs = (await session.execute(select(SyncLog).where(SyncLog.event_id == event_id))).scalars().all()
    assert logs[0].outcome == "FAILED" and "rentals database on fire" in (logs[0].error or "")
    # The failed event did not claim its id: a retry with the same id is processed, not a duplicate.
    assert retry_ok.status_code == 200 and "duplicate" not in retry_ok.json()["data"]


# ------------------------------------------------------------------------------------------- batch


async def test_batch_is_all_or_nothing_per_event_with_results_in_order(
    client_factory: ClientFactory, session: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    good_imei, bad_imei = new_imei(), new_imei()
    good_bank = new_bank_serial()

    async def fail_for_one_station(
        session: AsyncSession, settings: object, currency: str, **kwargs: Any
    ) -> int:
        station = await session.get(Station, kwargs["station_id"])
        if station is not None and station.imei == bad_imei:
            await _exploding_reconcile(session, settings, currency, **kwargs)
        return 0

    ask_rentals_always(monkeypatch, reconcile_snapshot=fail_for_one_station)

    events = [
        {**status_event(good_imei, "ONLINE"), "event_id": "e-1"},
        {**full_event(bad_imei, {1: new_bank_serial()}), "event_id": "e-2"},
        {"type": "nonsense", "event_id": "e-3"},
        {**full_event(good_imei, {1: good_bank, 2: None}), "event_id": "e-4"},
        {**status_event(good_imei, "ONLINE"), "event_id": "e-1"},
    ]
    async with client_factory() as client:
        response = await client.post_signed(INTERNAL_BATCH, {"events": events})

    assert response.status_code == 200, response.text
    results = response.json()["data"]["results"]
    assert [(r["index"], r["event_id"], r["status_code"], r.get("error")) for r in results] == [
        (0, "e-1", 200, None),
        (1, "e-2", 500, "SYNC_ERROR"),
        (2, "e-3", 400, "INVALID_TYPE"),
        (3, "e-4", 200, None),
        (4, "e-1", 200, None),
    ]
    assert results[4]["data"]["duplicate"] is True
    assert (await session.scalar(select(func.count()).where(Station.imei == bad_imei))) == 0
    good = await _station(session, good_imei)
    assert (await _slot(session, good.id, 1)).power_bank_id == (await _bank(session, good_bank)).id
    outcomes = await session.execute(
        select(SyncLog.event_id, SyncLog.outcome).where(SyncLog.event_id.in_(["e-1", "e-2", "e-3", "e-4"]))
    )
    assert sorted((event_id, outcome) for event_id, outcome in outcomes) == [
        ("e-1", "DUPLICATE"),
        ("e-1", "SUCCESS"),
        ("e-2", "FAILED"),
        ("e-3", "FAILED"),
        ("e-4", "SUCCESS"),
    ]


async def test_batch_holds_back_a_station_after_its_retryable_failure(
    client_factory: ClientFactory, session: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A station's later events in a batch must not overtake one that failed and will be resent."""
    flaky_imei, steady_imei = new_imei(), new_imei()
    calls: list[str] = []

    async def fail_for_one_event(
        session: AsyncSession, settings: object, currency: str, **kwargs: Any
    ) -> int:
        calls.append(kwargs["event_key"])
        if kwargs["event_key"] == "h-2":
            raise RuntimeError("transient")
        return 0

    ask_rentals_always(monkeypatch, reconcile_snapshot=fail_for_one_event)

    events = [
        {**full_event(flaky_imei, {1: new_bank_serial()}), "event_id": "h-1"},
        {**full_event(steady_imei, {1: new_bank_serial()}), "event_id": "h-s1"},
        {**full_event(flaky_imei, {1: new_bank_serial()}), "event_id": "h-2"},
        {**full_event(steady_imei, {1: new_bank_serial()}), "event_id": "h-s2"},
        {**full_event(flaky_imei, {1: new_bank_serial()}), "event_id": "h-3"},
        {**status_event(flaky_imei, "ONLINE"), "event_id": "h-4"},
    ]
    async with client_factory() as client:
        response = await client.post_signed(INTERNAL_BATCH, {"events": events})
        assert response.status_code == 200, response.text
        results = response.json()["data"]["results"]
        assert [(r["event_id"], r["status_code"], r.get("error")) for r in results] == [
            ("h-1", 200, None),
            ("h-s1", 200, None),
            ("h-2", 500, "SYNC_ERROR"),
            ("h-s2", 200, None),
            ("h-3", 503, "PRECEDING_EVENT_FAILED"),
            ("h-4", 503, "PRECEDING_EVENT_FAILED"),
        ]
        # The one-savepoint pass ran first, then the event-by-event pass; h-3 was never attempted.
        assert "h-3" not in calls
        # Resent while h-2 still fails: h-3 and h-4 are held back again, never applied ahead of it.
        resend = await client.post_signed(INTERNAL_BATCH, {"events": events[2:3] + events[4:]})
        assert [r["status_code"] for r in resend.json()["data"]["results"]] == [500, 503, 503]
    outcomes = await session.execute(
        select(SyncLog.event_id, SyncLog.outcome).where(SyncLog.event_id.in_(["h-3", "h-4"]))
    )
    assert list(outcomes) == []  # not attempted: nothing recorded, nothing claimed


async def test_batch_without_failures_applies_every_event_once(
    client: CoreClient, session: AsyncSession
) -> None:
    imeis = [new_imei() for _ in range(5)]
    events = [
        {**full_event(imei, {1: new_bank_serial(), 2: None}), "event_id": f"ok-{n}-{imei}"}
        for n, imei in enumerate(imeis * 2)
    ]
    response = await client.post_signed(INTERNAL_BATCH, {"events": events})
    assert response.status_code == 200, response.text
    results = response.json()["data"]["results"]
    assert [r["index"] for r in results] == list(range(10))
    assert all(r["status_code"] == 200 and r["data"]["applied"] for r in results)
    logged = await session.scalar(
        select(func.count()).where(SyncLog.event_id.in_([e["event_id"] for e in events]))
    )
    assert logged == 10


async def test_batch_with_several_events_of_one_station_applies_them_in_order(
    client: CoreClient, session: AsyncSession
) -> None:
    """Within one batch a station's later event sees what its earlier one wrote (stale check, status)."""
    imei = new_imei()
    first_bank, second_bank = new_bank_serial(), new_bank_serial()
    events = [
        {
            **full_event(imei, {1: first_bank, 2: None}, observed_at="2025-01-01T00:00:10Z"),
            "event_id": f"{imei}-a",
        },
        # Observed before the first: recorded as stale, not applied.
        {**full_event(imei, {1: None, 2: None}, observed_at="2025-01-01T00:00:05Z"), "event_id": f"{imei}-b"},
        {
            **full_event(
                imei, {1: None, 2: second_bank}, observed_at="2025-01-01T00:00:20Z", status="OFFLINE"
            ),
            "event_id": f"{imei}-c",
        },
        {**full_event(imei, {1: None, 2: None}, observed_at="2025-01-01T00:00:30Z"), "event_id": f"{imei}-a"},
    ]
    response = await client.post_signed(INTERNAL_BATCH, {"events": events})
    assert response.status_code == 200, response.text
    results = response.json()["data"]["results"]
    assert [r["data"]["applied"] for r in results[:3]] == [True, False, True]
    assert results[3]["data"]["duplicate"] is True
    station = await _station(session, imei)
    assert station.status == "OFFLINE"
    assert (await _slot(session, station.id, 2)).power_bank_id == (await _bank(session, second_bank)).id
    assert (await _slot(session, station.id, 1)).power_bank_id is None
    history = await session.scalars(
        select(StationStatusHistory.status)
        .where(StationStatusHistory.station_id == station.id)
        .order_by(StationStatusHistory.changed_at)
    )
    assert list(history)[-1] == "OFFLINE"


async def test_batch_envelope_errors(client: CoreClient) -> None:
    empty = await client.post_signed(INTERNAL_BATCH, {"events": []})
    assert empty.status_code == 400 and empty.json()["error"] == "VALIDATION_ERROR"
    not_json = await client.post_signed(INTERNAL_BATCH, b"[")
    assert not_json.status_code == 400 and not_json.json()["error"] == "INVALID_JSON"


# ------------------------------------------------------------------------------------------- statement count


async def _count_full_sync(client: CoreClient, counter: StatementCounter, slot_count: int) -> int:
    imei = new_imei()
    banks = {n: (new_bank_serial() if n % 2 else None) for n in range(1, slot_count + 1)}
    # First sync creates the station and banks; the measured one is the steady state (same banks, moved).
    assert (await client.sync(full_event(imei, banks))).status_code == 200
    shifted = {n: banks.get(n - 1) for n in range(1, slot_count + 1)}
    counter.statements.clear()
    counter.active = True
    response = await client.sync(full_event(imei, shifted, battery=55))
    counter.active = False
    assert response.status_code == 200, response.text
    assert response.json()["data"]["slots_updated"] == slot_count
    return counter.count


async def test_full_sync_uses_a_constant_number_of_statements(
    client: CoreClient, statement_counter: StatementCounter
) -> None:
    small = await _count_full_sync(client, statement_counter, 4)
    large = await _count_full_sync(client, statement_counter, 24)
    assert small == large, statement_counter.statements
    # Including the test's SAVEPOINT/RELEASE pair: on PostgreSQL the station lock (inside a transaction the
    # lock comes first) and ONE statement that claims, checks and writes everything (iot.snapshots); no
    # rentals query when no bank has an open rental. SQLite runs the same steps one by one.
    postgres = client.app.state.settings.db.url.startswith("postgresql")
    assert small <= (4 if postgres else 15), statement_counter.statements


# ------------------------------------------------------------------------------------------- rate limit / IP


async def test_rate_limit_in_process_answers_429_beyond_the_limit(client_factory: ClientFactory) -> None:
    async with client_factory(internal=InternalSettings(rate_limit_per_minute=3)) as client:
        imei = new_imei()
        codes = [(await client.sync(status_event(imei, "ONLINE"))).status_code for _ in range(4)]
        limited = await client.sync(status_event(imei, "ONLINE"))
    assert codes == [200, 200, 200, 429]
    assert limited.json()["error"] == "RATE_LIMITED"
    assert int(limited.headers["Retry-After"]) >= 1


@pytest.mark.redis
async def test_rate_limit_in_redis_is_shared_by_app_instances(
    client_factory: ClientFactory, redis_url: str, redis_prefix: str
) -> None:
    settings = {
        "internal": InternalSettings(rate_limit_per_minute=2),
        "redis": RedisSettings(url=redis_url, prefix=redis_prefix),
    }
    imei = new_imei()
    async with client_factory(**settings) as first, client_factory(**settings) as second:
        # Same caller (same user id) on two "replicas".
        second.service_user_id = first.service_user_id
        codes = [
            (await first.sync(status_event(imei, "ONLINE"))).status_code,
            (await second.sync(status_event(imei, "ONLINE"))).status_code,
            (await first.sync(status_event(imei, "ONLINE"))).status_code,
        ]
    assert codes == [200, 200, 429]
    redis = Redis.from_url(redis_url)
    try:
        keys = [key async for key in redis.scan_iter(match=f"{redis_prefix}*")]
        ttls = [await redis.ttl(key) for key in keys]
        assert keys and all(0 < ttl <= 61 for ttl in ttls)
        await redis.delete(*keys)
    finally:
        await redis.aclose()


async def test_in_process_limiter_opens_a_new_window() -> None:
    now = [1000.0]
    limiter = InProcessRateLimiter(clock=lambda: now[0])
    assert [(await limiter.hit("k", 2, 60)).allowed for _ in range(3)] == [True, True, False]
    now[0] += 60
    assert (await limiter.hit("k", 2, 60)).allowed is True


@pytest.mark.redis
async def test_redis_limiter_counts_per_window(redis_url: str, redis_prefix: str) -> None:
    redis = Redis.from_url(redis_url)
    now = [1200.0]
    limiter = RedisRateLimiter(redis, redis_prefix, clock=lambda: now[0])
    try:
        decisions = [await limiter.hit("caller", 2, 60) for _ in range(3)]
        assert [d.allowed for d in decisions] == [True, True, False]
        assert decisions[2].retry_after_s == 60
        now[0] += 60
        assert (await limiter.hit("caller", 2, 60)).count == 1
    finally:
        keys = [key async for key in redis.scan_iter(match=f"{redis_prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


async def test_ip_allow_list(client_factory: ClientFactory) -> None:
    internal = InternalSettings(allowed_cidrs=["10.0.0.0/8", "192.168.1.0/24"])
    async with client_factory(internal=internal, client_host="127.0.0.1") as outside:
        refused = await outside.sync(status_event(new_imei(), "ONLINE"))
        unauthenticated = await outside.http.post(INTERNAL_DATA, json={})
    async with client_factory(internal=internal, client_host="10.1.2.3") as inside:
        accepted = await inside.sync(status_event(new_imei(), "ONLINE"))
    assert refused.status_code == 403 and refused.json()["error"] == "IP_NOT_ALLOWED"
    assert unauthenticated.status_code == 401, "the bearer token is checked before the caller IP"
    assert accepted.status_code == 200


async def _broken_rental_desk(
    session: AsyncSession, settings: object, currency: str, context: ReturnContext
) -> RentalReturnOutcome | None:
    raise RuntimeError("rentals unavailable")


async def test_failing_return_answers_500_return_error(
    client_factory: ClientFactory, session: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    imei = new_imei()
    bank = new_bank_serial()
    ask_rentals_always(monkeypatch, complete_open_rental=_broken_rental_desk)
    async with client_factory() as client:
        await client.sync(full_event(imei, {1: None, 2: bank}))
        response = await client.sync(returned_event(imei, bank, 1))
    assert response.status_code == 500
    assert response.json()["error"] == "RETURN_ERROR"
    assert (await _bank(session, bank)).current_slot_number == 2, (
        "the failed return must not re-home the bank"
    )


@pytest.mark.parametrize(
    ("event_type", "code"),
    [
        ("full", "SYNC_ERROR"),
        ("returned", "RETURN_ERROR"),
        ("status", "STATUS_ERROR"),
        ("slot_event", "SYNC_ERROR"),
    ],
)
def test_unexpected_failures_map_to_the_contract_code_per_type(event_type: str, code: str) -> None:
    answer = failure_answer(RuntimeError("boom"), event_type)
    assert (answer.status_code, answer.code) == (500, code)
    rejected = ValidationFailed("bad slot")
    assert failure_answer(rejected, event_type) is rejected
