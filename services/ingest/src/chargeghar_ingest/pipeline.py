"""Turning observations into spooled events: ids, observation times, presence transitions, return dedupe.

Both entry points (device HTTP and the MQTT consumer) go through :class:`EventRecorder`, so an event is
built the same way whichever road it came by, and it is committed to the spool before the caller answers
the device or moves on to the next MQTT message.

Device strings are screened at the edges (:func:`plausible_station_id` refuses a bad identity,
:func:`clean_device_text` cleans informational fields) and, as a last guard, every event the recorder
spools is stripped of control characters: PostgreSQL refuses NUL in text, and one event core can never
store must not reach it.
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import structlog
from chargeghar_protocol.codec import CabinetSnapshot, Frame, FrameError, decode_frame
from chargeghar_protocol.contract import (
    CommandAuditEvent,
    CommandResultEvent,
    DeviceHardwareInfo,
    FullEvent,
    ReturnedEvent,
    ReturnFailedEvent,
    SlotEvent,
    StationStatus,
    StatusDeviceInfo,
    StatusEvent,
)
from chargeghar_protocol.events import snapshot_to_full_event
from redis.exceptions import RedisError

from chargeghar_ingest.metrics import Metrics
from chargeghar_ingest.presence import CHANNELS, Channel, PresenceStore
from chargeghar_ingest.spool import Spool

log = structlog.get_logger(__name__)

# What a presence store raises when its backend (Redis) is unreachable or slow.
PRESENCE_STORE_ERRORS = (RedisError, OSError, TimeoutError)

# Namespace of content-derived return ids: the same return gets the same id on every replica, so core's
# X-Event-Id dedupe catches the rare duplicate two replicas both spooled.
RETURN_ID_NAMESPACE = uuid.UUID("6f1b2c1e-8a53-4d35-9a0e-2f1f7f0c2b11")


# Every contract event model carries the extension fields event_id and observed_at.
SpoolableEvent = (
    FullEvent
    | ReturnedEvent
    | StatusEvent
    | CommandResultEvent
    | SlotEvent
    | ReturnFailedEvent
    | CommandAuditEvent
)


def utc_now() -> datetime:
    return datetime.now(UTC)


# A station id (IMEI, or the alphanumeric id of a test cabinet): the same rule as the command API's.
STATION_ID_MAX_CHARS = 32
_STATION_ID = re.compile(rf"[A-Za-z0-9]{{1,{STATION_ID_MAX_CHARS}}}")
# C0 control characters and DEL: never meaningful in a device string; NUL breaks PostgreSQL text.
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# A control character as serialised JSON text: \u0000-\u001f escapes, the short escapes, a raw DEL. May
# match an escaped backslash followed by a letter: then the slow path below simply changes nothing.
_CONTROL_IN_JSON = re.compile(r"\\u00[01][0-9a-fA-F]|\\[btnfr]|\x7f")


def plausible_station_id(value: str | None) -> bool:
    """An identity we accept from a device: ASCII letters and digits, 1-32 characters."""
    return value is not None and _STATION_ID.fullmatch(value) is not None


def clean_device_text(value: str | None, max_chars: int) -> tuple[str | None, bool]:
    """An informational device string without control characters, cut to ``max_chars``.

    Returns ``(cleaned, changed)``."""
    if value is None:
        return None, False
    cleaned = _CONTROL_CHARS.sub("", value)[:max_chars]
    return cleaned, cleaned != value


def _strip_controls(value: Any) -> Any:
    if isinstance(value, str):
        return _CONTROL_CHARS.sub("", value)
    if isinstance(value, dict):
        return {key: _strip_controls(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_strip_controls(item) for item in value]
    return value


def without_control_chars(body_json: str) -> str | None:
    """The event text with every control character removed from its strings, or None when it has none
    (the common case costs one regex scan)."""
    if _CONTROL_IN_JSON.search(body_json) is None:
        return None
    parsed = json.loads(body_json)
    stripped = _strip_controls(parsed)
    if stripped == parsed:
        return None
    return json.dumps(stripped, separators=(",", ":"), ensure_ascii=False)


def decode_device_frame(payload: bytes, *, accept_bad_checksum: bool) -> Frame:
    """A device frame as both roads (device HTTP, MQTT) read it: decoded, and a checksum mismatch refused
    (:class:`FrameError`) unless the policy accepts it (``device.accept_bad_checksum``)."""
    frame = decode_frame(payload)
    if not frame.checksum_valid and not accept_bad_checksum:
        raise FrameError("checksum mismatch", offset=len(payload) - 1)
    return frame


def snapshot_event(
    frame: CabinetSnapshot,
    *,
    station: str,
    received_at: datetime,
    channel: Channel,
    signal: str | None = None,
    wifi_ssid: str | None = None,
) -> FullEvent:
    """The ``full`` event of a 0x10 snapshot, the same whichever road it came by, except what the road
    itself says: an MQTT snapshot carries no signal (a "0" would overwrite the heartbeat's real one) and
    proves the MQTT link alive (ONLINE); an HTTP upload has the station's ``signal``/``ssid`` parameters and
    says nothing about the MQTT link commands need, so it leaves the station's status to presence."""
    event = snapshot_to_full_event(
        frame, imei=station, signal=signal, wifi_ssid=wifi_ssid, received_at=received_at
    )
    if channel == "mqtt":
        event.device.signal_strength = None
    else:
        event.device.status = None
    return event


class _RandomIds:
    """Random (version 4) UUIDs cut from one larger ``os.urandom`` read: the same randomness as
    ``uuid.uuid4`` without a system call per event (each one also hands the GIL to the spool's threads)."""

    CHUNK_IDS = 256

    def __init__(self) -> None:
        self._pool = b""
        self._offset = 0
        self._lock = threading.Lock()

    def new(self) -> str:
        with self._lock:
            if self._offset >= len(self._pool):
                self._pool = os.urandom(16 * self.CHUNK_IDS)
                self._offset = 0
            raw = self._pool[self._offset : self._offset + 16]
            self._offset += 16
        return str(uuid.UUID(bytes=raw, version=4))


_random_ids = _RandomIds()


def new_event_id() -> str:
    return _random_ids.new()


class EventRecorder:
    def __init__(
        self,
        spool: Spool,
        presence: PresenceStore,
        metrics: Metrics,
        *,
        return_dedupe_window_s: float = 90.0,
    ) -> None:
        self._spool = spool
        self._presence = presence
        self._metrics = metrics
        self._return_window_s = return_dedupe_window_s

    async def record(self, event: SpoolableEvent, *, station: str, correlation_id: str | None = None) -> str:
        """Give the event an id and observation time (unless it has them) and commit it to the spool."""
        if event.event_id is None:
            event.event_id = new_event_id()
        if event.observed_at is None:
            event.observed_at = utc_now()
        if event.correlation_id is None:
            # Every event carries its own correlation id to core's logs (one per event, even in a batch).
            event.correlation_id = correlation_id or event.event_id
        # Serialised once, by pydantic's JSON encoder; the forwarder sends these very bytes.
        body_json = event.to_wire_json().decode()
        cleaned = without_control_chars(body_json)
        if cleaned is not None:
            self._metrics.inc("device_strings_cleaned_total")
            log.warning("event.control_chars_removed", event_type=event.type, station_id=station)
            body_json = cleaned
        await self._spool.enqueue_serialized(
            event_id=event.event_id,
            event_type=event.type,
            body_json=body_json,
            station=station,
            correlation_id=correlation_id,
        )
        self._metrics.inc("events_spooled_total")
        log.info("event.spooled", event_type=event.type, event_id=event.event_id, station_id=station)
        return event.event_id

    async def record_return(
        self, event: ReturnedEvent, *, station: str, observed_at: datetime, correlation_id: str | None = None
    ) -> tuple[str, bool]:
        """Spool a return once: the same (station, bank, slot) within the window is the same return.

        Returns ``(event_id, duplicate)``.
        """
        serial = event.return_event.power_bank_serial
        slot = event.return_event.slot_number
        ts = observed_at.timestamp()
        window = self._return_window_s
        # A successful eject of this bank (or from this slot) since an earlier report means the bank went
        # out again (a re-rent): a report after it is a new return, never a duplicate of the earlier one.
        ejected_at = await self._last_eject(station, serial, slot)
        generation = ""
        if ejected_at is not None and ts - ejected_at < window:
            window = max(ts - ejected_at - 0.001, 0.001)
            generation = f"|e{ejected_at:.3f}"
        bucket = int(ts // self._return_window_s)
        event.event_id = str(
            uuid.uuid5(RETURN_ID_NAMESPACE, f"{station}|{serial}|{slot}|{bucket}{generation}")
        )
        event.observed_at = observed_at
        if event.correlation_id is None:
            event.correlation_id = correlation_id or event.event_id
        wire = event.to_wire()
        cleaned = _strip_controls(wire)
        if cleaned != wire:
            self._metrics.inc("device_strings_cleaned_total")
            log.warning("event.control_chars_removed", event_type="returned", station_id=station)
        spooled = await self._spool.enqueue_return(
            cleaned,
            station=station,
            power_bank_serial=serial,
            slot_number=slot,
            observed_ts=ts,
            dedupe_window_s=window,
            correlation_id=correlation_id,
            source=event.return_event.source,
        )
        event_id, duplicate = spooled.event_id, spooled.duplicate
        if spooled.corroborated:
            # An MQTT 0x40 confirmed a return claimed over device HTTP only: upgraded in place while the
            # claim waited in the spool, else a new `returned` event (source mqtt) follows the claim to core.
            self._metrics.inc("returns_corroborated_total")
            log.info(
                "event.return_corroborated",
                event_id=event_id,
                in_place=duplicate,
                station_id=station,
                power_bank=serial,
                slot=slot,
            )
        if duplicate:
            self._metrics.inc("returns_deduplicated_total")
            log.info(
                "event.return_duplicate", event_id=event_id, station_id=station, power_bank=serial, slot=slot
            )
        else:
            self._metrics.inc("events_spooled_total")
            log.info("event.spooled", event_type="returned", event_id=event_id, station_id=station)
        return event_id, duplicate

    async def _last_eject(self, station: str, serial: str, slot: int) -> float | None:
        try:
            return await self._presence.last_eject(station, [f"sn:{serial}", f"hole:{slot}"])
        except PRESENCE_STORE_ERRORS as exc:
            self._metrics.inc("presence_store_errors_total")
            log.warning("presence.store_unavailable", station_id=station, error=repr(exc))
            return None

    async def ejected(self, station: str, *, serial: str | None, slot: int | None, at: datetime) -> None:
        """A bank left the cabinet by a successful eject: later returns of it are new returns."""
        keys = ([f"sn:{serial}"] if serial else []) + ([f"hole:{slot}"] if slot is not None else [])
        try:
            for key in keys:
                await self._presence.record_eject(station, key, at.timestamp())
        except PRESENCE_STORE_ERRORS as exc:
            self._metrics.inc("presence_store_errors_total")
            log.warning("presence.store_unavailable", station_id=station, error=repr(exc))

    async def seen(
        self,
        station: str,
        *,
        observed_at: datetime | None = None,
        signal_strength: int | None = None,
        backup_power: int | None = None,
        channel: Channel = "mqtt",
    ) -> None:
        """A message from the station on ``channel``: refresh its last-seen; emit a status event when that
        channel comes (back) online or the heartbeat's signal changed."""
        observed = observed_at or utc_now()
        try:
            came_online = await self._presence.touch(station, observed.timestamp(), channel)
            signal_changed = False
            if signal_strength is not None or backup_power is not None:
                signal_changed = await self._presence.record_signal(
                    station, f"{signal_strength}|{backup_power}"
                )
            mqtt_online = channel == "mqtt" or await self._mqtt_alive(station, observed.timestamp())
        except PRESENCE_STORE_ERRORS as exc:
            # Presence is best effort: a Redis outage must not cost the device its answer or the event.
            self._metrics.inc("presence_store_errors_total")
            log.warning("presence.store_unavailable", station_id=station, error=repr(exc))
            return
        if not (came_online or signal_changed):
            return
        if came_online:
            self._metrics.inc("presence_online_total")
            log.info("presence.online", station_id=station, channel=channel)
        hardware = (
            DeviceHardwareInfo(signal_strength=signal_strength, backup_power=backup_power)
            if signal_strength is not None or backup_power is not None
            else None
        )
        status = StatusEvent(
            timestamp=int(observed.timestamp()),
            device=StatusDeviceInfo(
                serial_number=station,
                imei=station,
                # The station's status is its MQTT liveness: HTTP life alone never makes it ONLINE.
                status=StationStatus.ONLINE if mqtt_online else StationStatus.OFFLINE,
                hardware_info=hardware,
            ),
            channel=channel if came_online else None,
            channels={channel: StationStatus.ONLINE} if came_online else None,
            observed_at=observed,
        )
        await self.record(status, station=station)

    # Set by the app from the presence settings; used to judge the MQTT channel when HTTP changes.
    offline_after_s: float = 1500.0

    async def _mqtt_alive(self, station: str, now: float) -> bool:
        if await self._presence.is_marked_offline(station, "mqtt"):
            return False
        last_seen = await self._presence.last_seen(station, "mqtt")
        return last_seen is not None and now - last_seen < self.offline_after_s

    async def sweep(self, offline_after_s: float, *, now: datetime | None = None) -> list[str]:
        """Emit a status event for every station whose channel fell silent longer than the threshold (once
        per silence). The MQTT channel going silent makes the station OFFLINE; the HTTP one is recorded."""
        current = now or utc_now()
        self.offline_after_s = offline_after_s
        gone_mqtt: list[str] = []
        for channel in CHANNELS:
            gone = await self._presence.sweep(current.timestamp(), offline_after_s, channel)
            for station in gone:
                await self._channel_offline(station, channel, current, reason="silence")
            if channel == "mqtt":
                gone_mqtt = gone
        return gone_mqtt

    async def broker_event(self, station: str, *, connected: bool, at: datetime, reason: str | None) -> bool:
        """The broker's client connected/disconnected event for a station (EMQX webhook). Returns True when
        it changed the station's MQTT presence."""
        if connected:
            before = await self._presence.is_marked_offline(station, "mqtt")
            known = await self._presence.last_seen(station, "mqtt")
            await self.seen(station, observed_at=at, channel="mqtt")
            return before or known is None
        last_seen = await self._presence.last_seen(station, "mqtt")
        if last_seen is not None and last_seen > at.timestamp():
            return False  # a message arrived after this disconnect: the station is back already
        if not await self._presence.mark_offline(station, "mqtt"):
            return False
        await self._channel_offline(station, "mqtt", at, reason=reason or "disconnected")
        return True

    async def _channel_offline(self, station: str, channel: Channel, at: datetime, *, reason: str) -> None:
        last_seen = await self._presence.last_seen(station, channel)
        mqtt_online = channel != "mqtt" and await self._mqtt_alive(station, at.timestamp())
        status = StatusEvent(
            timestamp=int(at.timestamp()),
            device=StatusDeviceInfo(
                serial_number=station,
                imei=station,
                status=StationStatus.ONLINE if mqtt_online else StationStatus.OFFLINE,
                last_heartbeat=datetime.fromtimestamp(last_seen, UTC) if last_seen else None,
            ),
            channel=channel,
            channels={channel: StationStatus.OFFLINE},
            reason=reason[:200],
            observed_at=at,
        )
        await self.record(status, station=station)
        self._metrics.inc("presence_offline_total")
        log.info(
            "presence.offline",
            station_id=station,
            channel=channel,
            reason=reason,
            silent_s=round(at.timestamp() - (last_seen or 0)),
        )

    async def is_online(self, station: str, offline_after_s: float) -> bool:
        """Whether a command can reach the station: its MQTT channel is alive (HTTP life is not enough)."""
        if await self._presence.is_marked_offline(station, "mqtt"):
            return False
        last_seen = await self._presence.last_seen(station, "mqtt")
        return last_seen is not None and utc_now().timestamp() - last_seen < offline_after_s
