"""Delivery of spooled events to core (contract.md §1–§2): login, HMAC signing, retries, batching.

Nothing leaves the spool until core answers 2xx for it. Failure handling per answer:

- 401 → log in again and resend at once (once per attempt);
- 403 and client errors that can never succeed (400, 404, 409, 410, 413, 422) → dead-letter + alert log;
- 5xx, 408, 429, timeouts, refused connections → retry later, exponential backoff with jitter.

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
from chargeghar_ingest.spool import Spool, SpooledEvent

log = structlog.get_logger(__name__)

DATA_PATH = "/api/internal/stations/data"
BATCH_PATH = "/api/internal/stations/data/batch"
LOGIN_PATH = "/api/admin/login"
REFRESH_PATH = "/api/auth/refresh"

# Client errors that resending the same bytes can never fix.
PERMANENT_STATUSES = frozenset({400, 403, 404, 405, 409, 410, 413, 415, 422})


class CoreLoginError(RuntimeError):
    """Core refused the service credentials or answered something unusable."""


@dataclass(slots=True)
class Delivery:
    """What happened to one event in one attempt."""

    event: SpooledEvent
    outcome: str  # "delivered" | "retry" | "dead"
    detail: str = ""


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
        try:
            await asyncio.wait_for(self._spool.new_event.wait(), wait)
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
        return Delivery(event, _classify(response.status_code), _describe(response))

    async def _send_batch(self, events: list[SpooledEvent]) -> list[Delivery]:
        # The stored JSON texts joined as they are: no decode/encode round per event.
        body = ('{"events":[' + ",".join(e.body_json for e in events) + "]}").encode()
        response = await self._core.post_signed(
            BATCH_PATH, body, event_id=None, correlation_id=events[0].correlation_id or events[0].event_id
        )
        if response.status_code // 100 != 2:
            outcome = _classify(response.status_code)
            return [Delivery(e, outcome, _describe(response)) for e in events]
        results = _batch_results(response)
        if results is None or len(results) != len(events):
            # An answer we cannot map to events proves nothing about any of them: send again later.
            return [Delivery(e, "retry", "unreadable batch answer") for e in events]
        return [
            Delivery(e, _classify_item(item), json.dumps(item)[:500])
            for e, item in zip(events, results, strict=True)
        ]

    async def _record(self, deliveries: list[Delivery]) -> None:
        delivered = [d.event.seq for d in deliveries if d.outcome == "delivered"]
        await self._spool.ack(delivered)
        self._metrics.inc("events_delivered_total", len(delivered))
        retries: list[tuple[int, float, str]] = []
        now = time.time()
        for d in deliveries:
            if d.outcome == "retry":
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
        await self._spool.schedule_retries(retries)
        self._metrics.inc("events_retried_total", len(retries))

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
