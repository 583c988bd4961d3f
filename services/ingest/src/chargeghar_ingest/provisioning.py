"""Device provisioning: which stations get MQTT credentials (core keeps the registry, design.md "Truth and
trust at the edges": known devices only).

Policy ``INGEST_DEVICE__PROVISIONING``:

- ``open`` (default in development and test): any station with a valid device sign gets its credentials at
  once; core is told in the background (``approve: true``) so the station appears there as approved.
- ``registry`` (default in production): only an IMEI core lists as ``approved`` gets credentials. Connect
  asks core (``POST /api/internal/devices/{imei}/connect``, bearer + HMAC, short timeout), which records an
  unknown IMEI as ``pending`` for an admin. ``/api/emqx/auth`` refuses a login whose IMEI is not approved.

Approvals are cached (in process, and in Redis when configured) for ``registry_cache_ttl_s``: a revocation
takes effect within that time; a refusal is reused for at most 5 s, so an approval takes effect at the
station's next connect. While core is unreachable an IMEI cached as approved keeps working for up to
``registry_stale_max_s``; any other IMEI gets nothing (fail closed) and the outage is logged.

Takeovers: two sessions fighting over one client id (a cloned IMEI, or a station reconnecting while its old
session lives) make the broker kick the older one each time; the broker's login check sees them as logins
of one client id close together. Each login within ``takeover_window_s`` of the previous one of the same id
counts in ``emqx_client_takeovers_total`` and logs ``broker_auth.takeover`` with the IMEI.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import httpx
import structlog
from chargeghar_protocol.signing import signed_headers
from redis.asyncio import Redis
from redis.exceptions import RedisError

from chargeghar_ingest.forwarder import CoreClient, CoreLoginError
from chargeghar_ingest.metrics import Metrics
from chargeghar_ingest.settings import IngestSettings

log = structlog.get_logger(__name__)

APPROVED = "approved"
CONNECT_PATH = "/api/internal/devices/{imei}/connect"
# Bounds of the in-process state (a flood of distinct IMEIs must not grow memory without end).
MAX_CACHED = 100_000
MAX_REPORTED = 100_000
MAX_BACKGROUND = 64
# How long a "not approved" answer is reused before core is asked again.
NEGATIVE_TTL_S = 5.0


class RegistryUnavailable(Exception):
    """Core could not answer (down, slow, refused the ingest's login or signature)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    # approved | pending | revoked | None (unknown: core unreachable and nothing cached)
    status: str | None
    # "open", "registry" (core answered), "cache" (fresh), "stale_cache" (core down), "unavailable"
    source: str


@dataclass(frozen=True, slots=True)
class _Entry:
    status: str
    at: float  # wall-clock seconds of core's answer


class DeviceRegistryClient:
    def __init__(
        self,
        settings: IngestSettings,
        core: CoreClient,
        http: httpx.AsyncClient,
        metrics: Metrics,
        redis: Redis | None = None,
    ) -> None:
        self._settings = settings
        self._device = settings.device
        self._core = core
        self._http = http
        self._metrics = metrics
        self._redis = redis
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._reported: OrderedDict[str, None] = OrderedDict()
        self._background: set[asyncio.Task[None]] = set()
        self._logins: OrderedDict[str, float] = OrderedDict()

    @property
    def policy(self) -> Literal["open", "registry"]:
        return self._device.provisioning or "open"

    # ----------------------------------------------------------------------------------------- decisions

    async def admit_connect(self, imei: str) -> Verdict:
        """May this station get its credentials now? Records it at core (pending or, when open, approved)."""
        if self.policy == "open":
            self._report_in_background(imei)
            return Verdict(True, None, "open")
        return await self._decide(imei)

    async def admit_login(self, imei: str) -> Verdict:
        """May this station log in to the broker? (its derived credentials are already checked)."""
        if self.policy == "open":
            return Verdict(True, None, "open")
        return await self._decide(imei)

    async def _decide(self, imei: str) -> Verdict:
        entry = await self._cached(imei)
        now = time.time()
        if entry is not None and now - entry.at < self._fresh_for(entry):
            return Verdict(entry.status == APPROVED, entry.status, "cache")
        try:
            status = await self._ask_core(imei, approve=False)
        except RegistryUnavailable as exc:
            self._metrics.inc("device_registry_unavailable_total")
            stale_ok = (
                entry is not None
                and entry.status == APPROVED
                and now - entry.at < self._device.registry_stale_max_s
            )
            log.warning(
                "device.registry_unreachable",
                station_id=imei,
                error=str(exc),
                cached_status=entry.status if entry else None,
                allowed=stale_ok,
            )
            if stale_ok:
                assert entry is not None
                return Verdict(True, entry.status, "stale_cache")
            return Verdict(False, entry.status if entry else None, "unavailable")
        await self._remember(imei, _Entry(status, now))
        return Verdict(status == APPROVED, status, "registry")

    def _fresh_for(self, entry: _Entry) -> float:
        """Approvals are trusted for the TTL; a refusal only briefly, so an admin's approval takes effect
        at the station's next connect (the brief cache absorbs a burst of retries of one station)."""
        ttl = self._device.registry_cache_ttl_s
        return ttl if entry.status == APPROVED else min(ttl, NEGATIVE_TTL_S)

    # -------------------------------------------------------------------------------------------- core

    async def _ask_core(self, imei: str, *, approve: bool) -> str:
        body = json.dumps({"approve": approve}, separators=(",", ":")).encode()
        url = self._settings.core.base_url.rstrip("/") + CONNECT_PATH.format(imei=imei)
        secret = self._settings.core.hmac_secret.get_secret_value()
        try:
            async with asyncio.timeout(self._device.registry_timeout_s):
                token = await self._core.token()
                response = await self._post(url, body, token, secret)
                if response.status_code == 401:
                    await self._core.login(force=True, stale_token=token)
                    response = await self._post(url, body, await self._core.token(), secret)
        except (TimeoutError, httpx.HTTPError, CoreLoginError) as exc:
            raise RegistryUnavailable(repr(exc)) from exc
        if response.status_code != 200:
            raise RegistryUnavailable(f"core answered HTTP {response.status_code}")
        try:
            status = str(response.json()["data"]["status"])
        except (ValueError, KeyError, TypeError) as exc:
            raise RegistryUnavailable("core's answer has no data.status") from exc
        return status

    async def _post(self, url: str, body: bytes, token: str, secret: str) -> httpx.Response:
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            **signed_headers(secret, body),
        }
        return await self._http.post(url, content=body, headers=headers)

    def _report_in_background(self, imei: str) -> None:
        """`open` policy: tell core once per process (best effort) so the station is listed as approved."""
        if imei in self._reported or len(self._background) >= MAX_BACKGROUND:
            return
        self._reported[imei] = None
        while len(self._reported) > MAX_REPORTED:
            self._reported.popitem(last=False)
        task = asyncio.create_task(self._report(imei), name=f"ingest:device-report:{imei}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _report(self, imei: str) -> None:
        try:
            status = await self._ask_core(imei, approve=True)
        except RegistryUnavailable as exc:
            self._reported.pop(imei, None)  # try again at its next connect
            log.debug("device.report_failed", station_id=imei, error=str(exc))
            return
        await self._remember(imei, _Entry(status, time.time()))

    async def close(self) -> None:
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)

    # ------------------------------------------------------------------------------------------- cache

    def _key(self, imei: str) -> str:
        return f"{self._settings.redis.key_prefix}device:{imei}"

    async def _cached(self, imei: str) -> _Entry | None:
        entry = self._cache.get(imei)
        if self._redis is not None:
            try:
                raw = await self._redis.get(self._key(imei))
            except (RedisError, OSError) as exc:
                log.warning("device.registry_cache_unavailable", error=repr(exc))
                raw = None
            if raw is not None:
                try:
                    value = json.loads(raw)
                    shared = _Entry(str(value["status"]), float(value["at"]))
                except (ValueError, KeyError, TypeError):
                    shared = None
                if shared is not None and (entry is None or shared.at > entry.at):
                    entry = shared
        return entry

    async def _remember(self, imei: str, entry: _Entry) -> None:
        self._cache[imei] = entry
        self._cache.move_to_end(imei)
        while len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)
        if self._redis is not None:
            value = json.dumps({"status": entry.status, "at": entry.at})
            expiry = max(1, int(self._device.registry_stale_max_s))
            try:
                await self._redis.set(self._key(imei), value, ex=expiry)
            except (RedisError, OSError) as exc:
                log.warning("device.registry_cache_unavailable", error=repr(exc))

    # --------------------------------------------------------------------------------------- takeovers

    def note_login(self, client_id: str) -> bool:
        """Record an accepted device login; True (counted, logged) when it looks like a takeover."""
        now = time.monotonic()
        previous = self._logins.pop(client_id, None)
        self._logins[client_id] = now
        while len(self._logins) > MAX_CACHED:
            self._logins.popitem(last=False)
        if previous is None or now - previous > self._device.takeover_window_s:
            return False
        self._metrics.inc("emqx_client_takeovers_total")
        log.warning(
            "broker_auth.takeover",
            station_id=client_id,
            seconds_since_previous_login=round(now - previous, 3),
            hint="two sessions may be fighting over this client id (a cloned IMEI?)",
        )
        return True
