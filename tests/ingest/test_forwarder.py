"""Forwarding spooled events to a real HTTP peer that checks tokens and HMAC signatures like core."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from chargeghar_protocol.signing import device_sign
from ingest_fake_core import FakeCore
from ingest_harness import STATION, UPLOAD_FRAME, make_settings, running_ingest, wait_until


def status_event(station: str, n: int) -> dict[str, Any]:
    return {
        "type": "status",
        "timestamp": 1_762_928_776 + n,
        "device": {"serial_number": station, "imei": station, "status": "ONLINE"},
        "event_id": str(uuid.uuid4()),
        "observed_at": "2025-11-12T06:26:16Z",
    }


def forwarding(tmp_path: Path, core: FakeCore, **core_overrides: Any) -> Any:
    return make_settings(tmp_path, forwarder_enabled=True, core={"base_url": core.base_url, **core_overrides})


async def test_upload_reaches_core_signed_with_event_id_and_correlation(
    tmp_path: Path, fake_core: FakeCore
) -> None:
    params = {"rentboxSN": STATION, "signal": "CSQ:31"}
    params["sign"] = device_sign(params)
    # One event per request: an upload spools its status and full events together, and whether the
    # forwarder finds them in one batch (no X-Event-Id, one body for both) or one by one is a race. This
    # test is about the single-event request; the batch path has its own tests.
    async with running_ingest(forwarding(tmp_path, fake_core, batch_size=1)) as ingest:
        response = await ingest.client.post(
            "/api/rentbox/upload/data",
            params=params,
            content=UPLOAD_FRAME,
            headers={"X-Correlation-Id": "corr-42"},
        )
        assert response.json()["code"] == 200
        assert response.headers["x-correlation-id"] == "corr-42"

        async def drained() -> bool:
            return await ingest.runtime.spool.pending_count() == 0

        await wait_until(drained)
    assert [e["type"] for e in fake_core.accepted] == ["status", "full"]
    assert [r.path for r in fake_core.requests] == ["/api/internal/stations/data"] * 2
    full_event = fake_core.accepted[1]
    full_request = next(r for r in fake_core.requests if r.body.get("event_id") == full_event["event_id"])
    # The signature was checked by the peer; the extension headers are there too.
    assert full_request.headers["x-event-id"] == full_event["event_id"]
    assert full_request.headers["x-correlation-id"] == "corr-42"
    assert full_request.headers["authorization"].startswith("Bearer ")
    assert fake_core.logins == 1


async def test_token_is_refreshed_before_it_expires(tmp_path: Path, fake_core: FakeCore) -> None:
    fake_core.token_lifetime_s = 3
    async with running_ingest(forwarding(tmp_path, fake_core, token_refresh_margin_s=2.5)) as ingest:
        for n in range(3):
            await ingest.runtime.spool.enqueue(status_event("S1", n), station="S1")

            async def drained() -> bool:
                return await ingest.runtime.spool.pending_count() == 0

            await wait_until(drained)
            await asyncio.sleep(0.6)
    assert len(fake_core.accepted) == 3
    assert fake_core.logins == 1 and fake_core.refreshes >= 1


async def test_5xx_and_timeouts_are_retried_until_core_accepts(tmp_path: Path, fake_core: FakeCore) -> None:
    fake_core.scripted_statuses.extend([500, 503, 502])
    async with running_ingest(forwarding(tmp_path, fake_core)) as ingest:
        event = status_event("S1", 1)
        await ingest.runtime.spool.enqueue(event, station="S1")

        async def accepted_and_acked() -> bool:
            # Core's 2xx comes first; the spool forgets the event a commit later.
            return (
                fake_core.accepted_ids == [event["event_id"]]
                and await ingest.runtime.spool.pending_count() == 0
            )

        await wait_until(accepted_and_acked)
        assert ingest.runtime.metrics.counters["events_retried_total"] == 3


async def test_read_timeout_is_retried(tmp_path: Path, fake_core: FakeCore) -> None:
    fake_core.delay_s = 1.5
    async with running_ingest(forwarding(tmp_path, fake_core, read_timeout_s=0.3)) as ingest:
        event = status_event("S1", 1)
        await ingest.runtime.spool.enqueue(event, station="S1")

        async def retried() -> bool:
            return ingest.runtime.metrics.counters["events_retried_total"] >= 1

        await wait_until(retried)
        fake_core.delay_s = 0

        async def drained() -> bool:
            return await ingest.runtime.spool.pending_count() == 0

        await wait_until(drained)
    # Core may have applied the slow first attempt too; the event id makes the resend harmless.
    assert fake_core.accepted_ids == [event["event_id"]]


async def test_401_logs_in_again_and_resends(tmp_path: Path, fake_core: FakeCore) -> None:
    async with running_ingest(forwarding(tmp_path, fake_core)) as ingest:
        first = status_event("S1", 1)
        await ingest.runtime.spool.enqueue(first, station="S1")

        async def got_first() -> bool:
            return len(fake_core.accepted) == 1

        await wait_until(got_first)
        fake_core.revoke_tokens()  # e.g. core restarted with a new key
        second = status_event("S1", 2)
        await ingest.runtime.spool.enqueue(second, station="S1")

        async def got_second() -> bool:
            return len(fake_core.accepted) == 2

        await wait_until(got_second)
        assert fake_core.logins == 2
        assert ingest.runtime.metrics.counters["events_retried_total"] == 0


async def test_403_goes_to_dead_letter_and_the_station_moves_on(tmp_path: Path, fake_core: FakeCore) -> None:
    fake_core.scripted_statuses.append(403)
    async with running_ingest(forwarding(tmp_path, fake_core)) as ingest:
        refused, after = status_event("S1", 1), status_event("S1", 2)
        await ingest.runtime.spool.enqueue(refused, station="S1")

        async def dead() -> bool:
            return await ingest.runtime.spool.dead_letter_count() == 1

        await wait_until(dead)
        await ingest.runtime.spool.enqueue(after, station="S1")

        async def delivered() -> bool:
            return fake_core.accepted_ids == [after["event_id"]]

        await wait_until(delivered)
        letter = (await ingest.runtime.spool.dead_letters())[0]
        assert letter.event_id == refused["event_id"] and letter.body == refused
        assert letter.detail is not None and letter.detail.startswith("HTTP 403")
        # 403 is never retried (the legacy bridge wasted three attempts on it, protocol.md §10.26).
        assert ingest.runtime.metrics.counters["events_retried_total"] == 0


async def test_wrong_hmac_secret_is_refused_by_core_and_dead_lettered(
    tmp_path: Path, fake_core: FakeCore
) -> None:
    settings = forwarding(tmp_path, fake_core, hmac_secret="not-the-shared-secret")
    async with running_ingest(settings) as ingest:
        await ingest.runtime.spool.enqueue(status_event("S1", 1), station="S1")

        async def dead() -> bool:
            return await ingest.runtime.spool.dead_letter_count() == 1

        await wait_until(dead)
    assert fake_core.accepted == []


async def test_backlog_goes_in_batches_with_per_event_results(tmp_path: Path, fake_core: FakeCore) -> None:
    stations = [f"86000000000{n:04d}" for n in range(30)]
    events = {s: [status_event(s, n) for n in range(3)] for s in stations}
    # Core is "down" while the backlog builds up: the forwarder is not running yet.
    path_settings = make_settings(tmp_path, core={"base_url": fake_core.base_url})
    async with running_ingest(path_settings) as ingest:
        for n in range(3):
            for s in stations:
                await ingest.runtime.spool.enqueue(events[s][n], station=s)
    retry_me = events[stations[4]][0]["event_id"]
    refuse_me = events[stations[7]][1]["event_id"]
    fake_core.scripted_item_statuses[retry_me] = 500
    fake_core.scripted_item_statuses[refuse_me] = 422

    # Restart with the forwarder on: it resumes from the spool file.
    async with running_ingest(forwarding(tmp_path, fake_core, batch_size=50)) as ingest:

        async def drained() -> bool:
            return await ingest.runtime.spool.pending_count() == 0

        await wait_until(drained)
        letters = await ingest.runtime.spool.dead_letters()
        assert [d.event_id for d in letters] == [refuse_me]
    batch_requests = [r for r in fake_core.requests if r.path.endswith("/batch")]
    assert batch_requests, "a backlog must be sent in batches"
    # Up to batch_size events per request, several of one station (in spool order) among them.
    first = batch_requests[0].body["events"]
    assert len(first) == 50
    assert len({e["device"]["imei"] for e in first}) < len(first)
    assert len(fake_core.accepted) == 30 * 3 - 1
    # Per-station order survives the retry of station 4's first event.
    for s in stations:
        expected = [e["event_id"] for e in events[s] if e["event_id"] != refuse_me]
        assert [e["event_id"] for e in fake_core.accepted if e["device"]["imei"] == s] == expected


async def test_core_unreachable_keeps_events_until_it_is_back(tmp_path: Path, fake_core: FakeCore) -> None:
    settings = make_settings(tmp_path, forwarder_enabled=True, core={"base_url": "http://127.0.0.1:9"})
    event = status_event("S1", 1)
    async with running_ingest(settings) as ingest:
        await ingest.runtime.spool.enqueue(event, station="S1")

        async def failing() -> bool:
            return ingest.runtime.metrics.counters["events_retried_total"] >= 2

        await wait_until(failing)
        assert await ingest.runtime.spool.pending_count() == 1
    async with running_ingest(forwarding(tmp_path, fake_core)):

        async def delivered() -> bool:
            return fake_core.accepted_ids == [event["event_id"]]

        await wait_until(delivered)
