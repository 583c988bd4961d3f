"""Delivery of spooled events to core (contract.md §1–§2): login, HMAC signing, retries, batching.

Nothing leaves the spool until core answers 2xx for it. Failure handling per answer:

- 401 → log in again and resend at once (once per attempt);
- 403 and client errors that can never succeed (400, 404, 409, 410, 413, 422) → dead-letter + alert log;
- 5xx, 408, 429, timeouts, refused connections → retry later, exponential backoff with jitter.

No station is ever frozen by one event (poison isolation):

- a *strike* is an answer in which core itself failed this very event (a 5xx other than 502/503/504, for
  the event alone or for its item of a batch) while core accepted other events in the same answer or since
  the event's previous try. After ``core.max_attempts`` strikes the event is *parked*: moved to the
  dead-letter table (reason ``parked``), counted, alerted, re-drivable (``chargeghar ingest-redrive``,
  ``POST /internal/ops/redrive``); the station's later events flow again. Refused connections, timeouts,
  401/408/429, 502/503/504 (a proxy or a dependency down, or ``PRECEDING_EVENT_FAILED``) and answers while
  core accepts nothing at all never strike, so an outage of core parks nothing;
- a batch answered 5xx as a whole is resent event by event at once, so the one bad event is found and the
  others are applied (given up after three failures without one success: then core is down, not an event).

Per-station order: a station is offered only when its oldest event is due, its events go in spool order
within a batch (core applies them in order and stops that station at its first failure worth retrying), and
batches in flight at the same time never share a station. So a later event never overtakes one that is
waiting for its retry.

Throughput: up to ``batch_size`` events per request from many stations, several per station, and
``batches_in_flight`` requests at once, so the ingest keeps core busy while it records the previous answer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx
import structlog
from chargeghar_protocol.signing import signed_headers

from chargeghar_ingest.metrics import Metrics
from chargeghar_ingest.settings import CoreSettings
from chargeghar_ingest.spool import PARKED, Spool, SpooledEvent

log = structlog.get_logger(__name__)

DATA_PATH = "/api/internal/stations/data"
BATCH_PATH = "/api/internal/stations/data/batch"
LOGIN_PATH = "/api/admin/login"
REFRESH_PATH = "/api/auth/refresh"

# Client errors that resending the same bytes can never fix.
PERMANENT_STATUSES = frozenset({400, 403, 404, 405, 409, 410, 413, 415, 422})
# Server errors that say "not available" (proxy, overload, a preceding event of the station failed), not
# "this event failed": they never count as a strike against the event.
UNAVAILABLE_STATUSES = frozenset({502, 503, 504})
# Item errors of a batch answer without a status: core's processing failures of that very event.
PROCESSING_ERRORS = frozenset({"SYNC_ERROR", "RETURN_ERROR", "STATUS_ERROR"})
# Sending a failed batch event by event stops after this many failures without one success (core is down).
SOLO_GIVE_UP_FAILURES = 3


class CoreLoginError(RuntimeError):
    """Core refused the service credentials or answered something unusable."""


@dataclass(slots=True)
class Delivery:
    """What happened to one event in one attempt."""

    event: SpooledEvent
    outcome: str  # "delivered" | "retry" | "dead"
    detail: str = ""
    # What core answered for this event (its batch item's status); None when core gave no answer for it.
    status: int | None = None


class CoreClient:
    """Talks to core with a bearer token kept in memory and refreshed before it expires."""

    def __init__(self, http: httpx.AsyncClient, settings: CoreSettings, metrics: Metrics) -> None:
        self._http = http
        self._settings = settings
        self._metrics = metrics
        self._access_token: str | None = None
        self._refresh_token: str | None = None
        self._expires_at = 0.0
        self._login_lock = asyncio.Lock()

    def _url(self, path: str) -> str:
        return self._settings.base_url.rstrip("/") + path

    async def token(self) -> str:
        if (
            self._access_token is None
            or time.time() >= self._expires_at - self._settings.token_refresh_margin_s
        ):
            await self.login(force=False)
        assert self._access_token is not None
        return self._access_token

    async def login(self, *, force: bool, stale_token: str | None = None) -> None:
        async with self._login_lock:
            # Another task may have logged in while this one waited for the lock.
            if (
                not force
                and self._access_token
                and time.time() < self._expires_at - self._settings.token_refresh_margin_s
            ):
                return
            if force and stale_token is not None and self._access_token not in (None, stale_token):
                return
            if self._refresh_token and not force and await self._try_refresh():
                return
            response = await self._http.post(
                self._url(LOGIN_PATH),
                json={"email": self._settings.email, "password": self._settings.password.get_secret_value()},
            )
            self._metrics.inc("core_logins_total")
            if response.status_code != 200:
                raise CoreLoginError(f"login answered HTTP {response.status_code}")
            self._store_tokens(response)
            log.info("core.logged_in", expires_in_s=round(self._expires_at - time.time()))

    async def _try_refresh(self) -> bool:
        try:
            response = await self._http.post(self._url(REFRESH_PATH), json={"refresh": self._refresh_token})
        except httpx.HTTPError:
            return False
        if response.status_code != 200:
            return False
        try:
            self._store_tokens(response)
        except CoreLoginError:
            return False
        self._metrics.inc("core_logins_total")
        return True

    def _store_tokens(self, response: httpx.Response) -> None:
        try:
            data = response.json()["data"]
            access = str(data["access_token"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CoreLoginError("login answer has no data.access_token") from exc
        self._access_token = access
        self._refresh_token = data.get("refresh_token")
        self._expires_at = _jwt_expiry(access) or time.time() + self._settings.token_assumed_lifetime_s

    async def post_signed(
        self, path: str, body: bytes, *, event_id: str | None, correlation_id: str | None
    ) -> httpx.Response:
        """POST a signed body; on 401 log in again and resend once with a fresh token and signature."""
        token = await self.token()
        response = await self._http.post(
            self._url(path), content=body, headers=self._headers(token, body, event_id, correlation_id)
        )
        if response.status_code == 401:
            log.info("core.unauthorized_relogin", path=path)
            await self.login(force=True, stale_token=token)
            token = await self.token()
            response = await self._http.post(
                self._url(path), content=body, headers=self._headers(token, body, event_id, correlation_id)
            )
        return response

    def _headers(
        self, token: str, body: bytes, event_id: str | None, correlation_id: str | None
    ) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            **signed_headers(self._settings.hmac_secret.get_secret_value(), body),
        }
        if event_id:
            headers["X-Event-Id"] = event_id
        if correlation_id:
            headers["X-Correlation-Id"] = correlation_id
        return headers


class Forwarder:
    """Background task: drains the spool into core, forever, until cancelled."""

    # Pause after a batch whose outcome could not be recorded (spool trouble), so it is not resent hot.
    RECORD_FAILURE_PAUSE_S = 1.0

    def __init__(self, spool: Spool, core: CoreClient, settings: CoreSettings, metrics: Metrics) -> None:
        self._spool = spool
        self._core = core
        self._settings = settings
        self._metrics = metrics
        # Stations with a batch in flight: no other batch may carry their events until it is recorded.
        self._in_flight: set[str] = set()
        # Events core accepted since start, and its value at each waiting event's last failure (by seq):
        # a failure counts as a strike only if core accepted something else meanwhile (core is healthy).
        self._delivered_total = 0
        self._delivered_at_failure: dict[int, int] = {}

    async def run(self) -> None:
        slots = asyncio.Semaphore(max(1, self._settings.batches_in_flight))
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                await slots.acquire()
                try:
                    batch = await self._take_due()
                    while not batch:
                        await self._wait_for_work()
                        batch = await self._take_due()
                except BaseException:
                    slots.release()
                    raise
                stations = {event.station for event in batch}
                self._in_flight |= stations
                task = asyncio.create_task(self._send_and_record(batch, stations, slots))
                running.add(task)
                task.add_done_callback(running.discard)
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def run_once(self, idle_wait_s: float = 5.0) -> int:
        """Send one batch if any event is due, else wait for a new event or the next retry time."""
        batch = await self._take_due()
        if not batch:
            await self._wait_for_work(idle_wait_s)
            return 0
        deliveries = await self.deliver(batch)
        await self._record(deliveries)
        return len(deliveries)

    async def _take_due(self) -> list[SpooledEvent]:
        # Cleared before the query so an enqueue racing with it still wakes the next wait.
        self._spool.new_event.clear()
        return await self._spool.due_batch(
            now=time.time(),
            limit=self._settings.batch_size,
            per_station=self._settings.batch_events_per_station,
            exclude=sorted(self._in_flight),
        )

    async def _wait_for_work(self, idle_wait_s: float = 5.0) -> None:
        """Until an event is spooled, a batch in flight is recorded, or the next retry time comes."""
        now = time.time()
        next_at = await self._spool.next_retry_at(exclude=sorted(self._in_flight))
        wait = idle_wait_s if next_at is None else min(idle_wait_s, max(0.01, next_at - now))
        # asyncio.timeout, not wait_for: no extra task per idle wait, and a cancellation of the forwarder
        # is never mistaken for the timeout.
        try:
            async with asyncio.timeout(wait):
                await self._spool.new_event.wait()
        except TimeoutError:
            pass

    async def _send_and_record(
        self, batch: list[SpooledEvent], stations: set[str], slots: asyncio.Semaphore
    ) -> None:
        try:
            deliveries = await self.deliver(batch)
            await self._record(deliveries)
        except Exception:
            log.exception("forwarder.batch_failed", events=len(batch))
            await asyncio.sleep(self.RECORD_FAILURE_PAUSE_S)
        finally:
            # Only now may the stations' next events go: their previous ones are acked or rescheduled.
            self._in_flight -= stations
            slots.release()
            self._spool.new_event.set()

    async def deliver(self, events: list[SpooledEvent]) -> list[Delivery]:
        try:
            if len(events) == 1:
                return [await self._send_one(events[0])]
            return await self._send_batch(events)
        except (httpx.HTTPError, CoreLoginError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
            return [Delivery(e, "retry", detail) for e in events]

    async def _send_one(self, event: SpooledEvent) -> Delivery:
        body = event.body_json.encode()
        response = await self._core.post_signed(
            DATA_PATH, body, event_id=event.event_id, correlation_id=event.correlation_id or event.event_id
        )
        return Delivery(event, _classify(response.status_code), _describe(response), response.status_code)

    async def _send_batch(self, events: list[SpooledEvent]) -> list[Delivery]:
        # The stored JSON texts joined as they are: no decode/encode round per event.
        body = ('{"events":[' + ",".join(e.body_json for e in events) + "]}").encode()
        response = await self._core.post_signed(
            BATCH_PATH, body, event_id=None, correlation_id=events[0].correlation_id or events[0].event_id
        )
        if response.status_code // 100 != 2:
            if _core_failed(response.status_code):
                # One bad event can fail a whole batch (a core without per-event isolation): find it by
                # sending alone, rather than holding every station of the batch behind it.
                log.warning(
                    "forwarder.batch_failed_sending_alone", status=response.status_code, events=len(events)
                )
                return await self._send_alone(events)
            outcome = _classify(response.status_code)
            return [Delivery(e, outcome, _describe(response)) for e in events]
        results = _batch_results(response)
        if results is None or len(results) != len(events):
            # An answer we cannot map to events proves nothing about any of them: send again later.
            return [Delivery(e, "retry", "unreadable batch answer") for e in events]
        return [
            Delivery(e, _classify_item(item), json.dumps(item)[:500], _item_status(item))
            for e, item in zip(events, results, strict=True)
        ]

    async def _send_alone(self, events: list[SpooledEvent]) -> list[Delivery]:
        """Each event in its own request, in order; a station stops at its first failure (order)."""
        deliveries: list[Delivery] = []
        stopped: set[str] = set()
        successes = failures = 0
        for index, event in enumerate(events):
            if event.station in stopped:
                deliveries.append(Delivery(event, "retry", "held back behind a failed event of its station"))
                continue
            if failures >= SOLO_GIVE_UP_FAILURES and successes == 0:
                # Core fails everything: an outage, not one bad event. No more requests into it now.
                rest = events[index:]
                deliveries += [
                    Delivery(e, "retry", "not sent: core failed every event sent alone") for e in rest
                ]
                break
            try:
                delivery = await self._send_one(event)
            except (httpx.HTTPError, CoreLoginError) as exc:
                detail = f"{type(exc).__name__}: {exc}"
                deliveries += [Delivery(e, "retry", detail) for e in events[index:]]
                break
            deliveries.append(delivery)
            if delivery.outcome == "delivered":
                successes += 1
            elif delivery.outcome == "retry":
                failures += 1
                stopped.add(event.station)
        return deliveries

    async def _record(self, deliveries: list[Delivery]) -> None:
        delivered = [d.event for d in deliveries if d.outcome == "delivered"]
        await self._spool.ack(delivered)  # by seq and id: a row changed while in flight stays
        self._metrics.inc("events_delivered_total", len(delivered))
        delivered_before = self._delivered_total
        self._delivered_total += len(delivered)
        retries: list[tuple[int, float, str]] = []
        strikes: list[int] = []
        now = time.time()
        for d in deliveries:
            if d.outcome != "retry":
                self._delivered_at_failure.pop(d.event.seq, None)
            if d.outcome == "retry":
                if self._is_strike(d, delivered_in_answer=bool(delivered), delivered_before=delivered_before):
                    if d.event.strikes + 1 >= self._settings.max_attempts:
                        await self._park(d)
                        continue
                    strikes.append(d.event.seq)
                attempts = d.event.attempts + 1
                retries.append((d.event.seq, now + self.backoff_s(attempts), d.detail))
                if attempts >= self._settings.alert_after_attempts:
                    log.error(
                        "forwarder.delivery_keeps_failing",
                        event_id=d.event.event_id,
                        station_id=d.event.station,
                        attempts=attempts,
                        detail=d.detail,
                    )
                else:
                    log.warning(
                        "forwarder.retry",
                        event_id=d.event.event_id,
                        station_id=d.event.station,
                        attempts=attempts,
                        detail=d.detail,
                    )
            elif d.outcome == "dead":
                await self._spool.move_to_dead_letter(d.event, reason="core_refused", detail=d.detail)
                self._metrics.inc("events_dead_lettered_total")
                self._metrics.inc("dead_letters_total")
                # ALERT: an event core will never accept (bad signature config, schema drift, …).
                log.error(
                    "forwarder.dead_lettered",
                    alert=True,
                    event_id=d.event.event_id,
                    station_id=d.event.station,
                    event_type=d.event.type,
                    detail=d.detail,
                )
        await self._spool.schedule_retries(retries, strikes=strikes)
        self._metrics.inc("events_retried_total", len(retries))
        if strikes:
            self._metrics.inc("events_struck_total", len(strikes))

    def _is_strike(self, d: Delivery, *, delivered_in_answer: bool, delivered_before: int) -> bool:
        """Core failed this very event while it was accepting others (see the module docstring)."""
        if d.status is None or not _core_failed(d.status):
            return False
        seq = d.event.seq
        previous = self._delivered_at_failure.get(seq)
        self._delivered_at_failure[seq] = self._delivered_total
        return delivered_in_answer or (previous is not None and previous < delivered_before)

    async def _park(self, d: Delivery) -> None:
        detail = f"parked after {d.event.strikes + 1} strikes ({d.event.attempts + 1} attempts): {d.detail}"
        await self._spool.move_to_dead_letter(d.event, reason=PARKED, detail=detail)
        self._delivered_at_failure.pop(d.event.seq, None)
        self._metrics.inc("events_struck_total")
        self._metrics.inc("events_parked_total")
        self._metrics.inc("dead_letters_total")
        # ALERT: core keeps failing this event while it applies others; the station's later events now
        # go ahead of it. Re-drive it once core is fixed (chargeghar ingest-redrive).
        log.error(
            "forwarder.event_parked",
            alert=True,
            event_id=d.event.event_id,
            station_id=d.event.station,
            event_type=d.event.type,
            strikes=d.event.strikes + 1,
            attempts=d.event.attempts + 1,
            detail=d.detail,
        )

    def backoff_s(self, attempts: int) -> float:
        ceiling = min(self._settings.retry_max_s, self._settings.retry_initial_s * 2 ** min(attempts - 1, 30))
        # Jitter in [ceiling/2, ceiling]: spreads replicas and stations, keeps the exponential growth.
        return ceiling / 2 + random.uniform(0, ceiling / 2)


def _classify(status: int) -> str:
    if 200 <= status < 300:
        return "delivered"
    if status in PERMANENT_STATUSES:
        return "dead"
    return "retry"


def _core_failed(status: int) -> bool:
    """Core itself failed the request/event (not: unavailable, overloaded, held back)."""
    return 500 <= status < 600 and status not in UNAVAILABLE_STATUSES


def _item_status(item: dict[str, Any]) -> int | None:
    status = item.get("status_code", item.get("status"))
    if isinstance(status, int):
        return status
    if item.get("success") is not True and str(item.get("error", "")) in PROCESSING_ERRORS:
        return 500
    return None


def _classify_item(item: dict[str, Any]) -> str:
    status = item.get("status_code", item.get("status"))
    if isinstance(status, int):
        return _classify(status)
    if item.get("success") is True:
        return "delivered"
    # A failed item without a status: a processing error (SYNC_ERROR …) is worth another try.
    error = str(item.get("error", ""))
    return "dead" if error in {"VALIDATION_ERROR", "INVALID_TYPE", "INVALID_JSON", "FORBIDDEN"} else "retry"


def _batch_results(response: httpx.Response) -> list[dict[str, Any]] | None:
    try:
        payload = response.json()
    except ValueError:
        return None
    data = payload.get("data", payload) if isinstance(payload, dict) else payload
    results = data.get("results") if isinstance(data, dict) else data
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        return None
    return results


def _describe(response: httpx.Response) -> str:
    return f"HTTP {response.status_code}: {response.text[:300]}"


def _jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim, read without verifying (core verifies; the ingest only needs the time)."""
    try:
        payload_part = token.split(".")[1]
        padded = payload_part + "=" * (-len(payload_part) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None
