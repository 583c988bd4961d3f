"""One virtual cabinet speaking the real device protocol over real HTTP and MQTT.

Lifecycle (protocol.md §2): HTTP connect → MQTT session with the returned credentials (subscribed to its
``/user/get`` and ``/user/heart`` topics) → heartbeats whose broker echo it watches → periodic 0x10 uploads
→ JSON commands answered with binary frames on ``/user/update``. Two missed heartbeat echoes in a row make it
"reboot": drop the session, connect over HTTP again and open a new session, as the firmware does.

Simulated time runs ``speed`` times faster than real time: a cabinet at speed 60 uploads every 20 s and sends
a heartbeat every ~9.5 s. Every loop is bounded by the task that runs it; stop a cabinet by cancelling
:meth:`VirtualCabinet.run` (the fleet does this). A cancellation always wins: no loop goes round again, and no
session reconnects, once its task was asked to stop, even when aiomqtt's ``wait_for`` dropped the request
(see :mod:`chargeghar_ingest.simulator.stopping`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import aiomqtt
import httpx
from chargeghar_protocol.signing import device_sign

from chargeghar_ingest.simulator import frames
from chargeghar_ingest.simulator.cabinet import CabinetState, EjectOutcome, PowerBank, Slot
from chargeghar_ingest.simulator.faults import Fault, FaultPlan
from chargeghar_ingest.simulator.stopping import (
    cancel_and_wait,
    raise_if_cancel_requested,
    run_until_first_exit,
)

__all__ = [
    "CabinetConfig",
    "CabinetOffline",
    "CabinetStats",
    "ConnectRejected",
    "MqttCredentials",
    "ReturnChannel",
    "SentFrame",
    "VirtualCabinet",
    "device_topics",
]

logger = logging.getLogger(__name__)

ReturnChannel = Literal["mqtt", "http", "both"]
UploadChannel = Literal["http", "mqtt"]

# Device timing in *simulated* seconds (protocol.md §2.3, §2.4).
UPLOAD_PERIOD_S = 20 * 60.0
FIRST_UPLOAD_DELAY_S = 60.0
HEARTBEAT_PERIOD_RANGE_S = (9 * 60.0, 10 * 60.0)

CONNECT_PATH = "/api/iot/client/con"
UPLOAD_PATH = "/api/rentbox/upload/data"
RETURN_PATH = "/api/rentbox/order/return"
HARDWARE_VERSION = "V6086"
SOFTWARE_VERSION = "20240904-RBMG-3.0.0.0"
WIFI_NETWORKS = ("ChargeGhar-Guest", "Cafe-Himalaya")


class CabinetOffline(Exception):
    """An MQTT publish was asked for while the cabinet has no broker session."""


class ConnectRejected(Exception):
    """The connect endpoint answered, but not with usable MQTT credentials."""


@dataclass(frozen=True)
class MqttCredentials:
    """The seven comma-joined fields of the connect answer (protocol.md §2.6a)."""

    client_id: str
    product_key: str
    host: str
    port: int
    username: str
    password: str
    timestamp_ms: int

    @classmethod
    def parse(cls, data: str) -> MqttCredentials:
        fields = data.split(",")
        if len(fields) < 6:
            raise ConnectRejected(f"connect data has {len(fields)} fields, expected 7: {data!r}")
        try:
            port = int(fields[3])
            timestamp_ms = int(fields[6]) if len(fields) > 6 and fields[6] else 0
        except ValueError as error:
            raise ConnectRejected(f"connect data has a non-numeric port or timestamp: {data!r}") from error
        return cls(fields[0], fields[1], fields[2], port, fields[4], fields[5], timestamp_ms)


@dataclass(frozen=True)
class DeviceTopics:
    get: str
    heart: str
    update: str


def device_topics(imei: str, topic_prefix: str = "", product_key: str = "powerbank") -> DeviceTopics:
    base = f"{topic_prefix}/{product_key}/{imei}/user"
    return DeviceTopics(get=f"{base}/get", heart=f"{base}/heart", update=f"{base}/update")


@dataclass(frozen=True)
class CabinetConfig:
    imei: str
    slots: int = 12
    ingest_url: str = "http://127.0.0.1:8100"
    topic_prefix: str = ""
    # Normally the broker comes from the connect answer; these override it (e.g. a test broker).
    broker_host: str | None = None
    broker_port: int | None = None
    speed: float = 1.0
    # Real-time overrides of the protocol periods (None = protocol period divided by speed).
    upload_interval_s: float | None = None
    first_upload_delay_s: float | None = None
    heartbeat_interval_s: float | None = None
    # How long to wait for a heartbeat's echo before counting it as missed (real seconds).
    echo_timeout_s: float = 10.0
    missed_echoes_before_reconnect: int = 2
    upload_channel: UploadChannel = "http"
    signal_csq: int = 27
    sim_iccid: str = ""
    # Real stations keep a persistent session; the default here does not, so test runs leave no sessions
    # behind on a shared broker.
    clean_session: bool = True
    keepalive_s: int = 60
    # Delay of a reply under Fault.SLOW_POPUP_REPLY, and the pause after Fault.DISCONNECT (real seconds).
    slow_reply_s: float = 20.0
    disconnect_pause_s: float = 1.0
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 15.0
    http_timeout_s: float = 10.0
    seed: int = 0

    @property
    def signal(self) -> str:
        return f"CSQ:{self.signal_csq}"


@dataclass
class CabinetStats:
    http_connects: int = 0
    http_connect_failures: int = 0
    mqtt_sessions: int = 0
    reboots: int = 0
    heartbeats_sent: int = 0
    heartbeat_echoes: int = 0
    missed_echoes: int = 0
    uploads_sent: int = 0
    upload_failures: int = 0
    commands_received: int = 0
    bad_commands: int = 0
    replies_sent: int = 0
    returns_sent: int = 0
    http_returns_failed: int = 0


@dataclass(frozen=True)
class SentFrame:
    """A frame the cabinet put on the wire (after fault injection), for tests and benchmarks."""

    channel: Literal["mqtt", "http"]
    target: str  # topic or URL path
    cmd: int
    frame: bytes
    sent_at: float  # time.time() just before the send
    accepted: bool = True  # False when the HTTP call failed or answered an error


class _Reboot(Exception):
    """Raised inside a session to end it and reconnect from scratch."""


@dataclass
class _Session:
    client: aiomqtt.Client
    topics: DeviceTopics
    echo_received: asyncio.Event = field(default_factory=asyncio.Event)
    last_heartbeat: bytes = b""


class VirtualCabinet:
    """A simulated station; see the module docstring for its behaviour."""

    def __init__(
        self,
        config: CabinetConfig,
        *,
        state: CabinetState | None = None,
        http: httpx.AsyncClient | None = None,
        rented_banks: dict[int, PowerBank] | None = None,
        history_size: int = 1000,
    ) -> None:
        self.config = config
        self.imei = config.imei
        self.state = state if state is not None else CabinetState.empty(config.slots)
        self.stats = CabinetStats()
        self.faults = FaultPlan()
        self.credentials: MqttCredentials | None = None
        # Banks that left a slot (rented); a fleet shares one dict so any cabinet can take a bank back.
        self.rented_banks: dict[int, PowerBank] = rented_banks if rented_banks is not None else {}
        self.sent: deque[SentFrame] = deque(maxlen=history_size)
        self.on_sent: list[Callable[[SentFrame], None]] = []
        self.rng = random.Random(f"{config.seed}:{config.imei}")
        self.topics = device_topics(config.imei, config.topic_prefix)
        self.connected = asyncio.Event()
        self._http = http
        self._owns_http = http is None
        self._session: _Session | None = None
        self._disconnect_requested = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._last_advance = time.monotonic()
        self._uploads_enabled = asyncio.Event()
        self._uploads_enabled.set()
        self._upload_lock = asyncio.Lock()

    # ------------------------------------------------------------------ public API

    async def run(self) -> None:
        """Run until cancelled: MQTT session (with reconnects) and the periodic HTTP uploads."""
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.config.http_timeout_s)
        try:
            # The loops end only by an error, which ends the cabinet.
            await run_until_first_exit(
                [
                    (f"cabinet-{self.imei}-session", self._session_loop()),
                    (f"cabinet-{self.imei}-uploads", self._upload_loop()),
                ],
                what=f"cabinet {self.imei}",
            )
        finally:
            # Command handlers started by the (now stopped) receive loop.
            await cancel_and_wait(list(self._background), what=f"cabinet {self.imei} commands")
            self.connected.clear()
            if self._owns_http and self._http is not None:
                await self._http.aclose()
                self._http = None

    async def wait_connected(self, within_s: float = 10.0) -> None:
        async with asyncio.timeout(within_s):
            await self.connected.wait()

    async def upload_now(self) -> SentFrame:
        """Send a full-cabinet 0x10 upload now, over the configured channel."""
        if self.config.upload_channel == "mqtt":
            return await self.publish_update(self.snapshot_frame())
        return await self._http_upload()

    async def pause_uploads(self) -> None:
        """Stop the periodic uploads; returns once an upload already on the wire has its answer."""
        self._uploads_enabled.clear()
        async with self._upload_lock:
            pass

    def resume_uploads(self) -> None:
        self._uploads_enabled.set()

    def snapshot_frame(self) -> bytes:
        self._advance_time()
        return frames.snapshot(self.state)

    async def return_bank(
        self, sn: int, hole: int | None = None, *, soc: int | None = None, via: ReturnChannel = "both"
    ) -> Slot:
        """Insert a bank (a rented one if known, else a new one) and report the return (protocol.md §7)."""
        if via in ("mqtt", "both") and self._session is None:
            raise CabinetOffline(f"cabinet {self.imei} cannot report a return without an MQTT session")
        bank = self.rented_banks.pop(sn, None)
        if bank is None:
            bank = PowerBank(sn=sn, charge=float(soc if soc is not None else self.rng.randint(10, 90)))
        elif soc is not None:
            bank.charge = float(soc)
        try:
            slot = self.state.insert(bank, hole)
        except Exception:
            self.rented_banks.setdefault(sn, bank)
            raise
        self.stats.returns_sent += 1
        logger.info("cabinet %s: bank %d returned to hole %d (soc %d%%)", self.imei, sn, slot.hole, bank.soc)
        if via in ("mqtt", "both"):
            await self.publish_update(frames.return_report(slot))
        if via in ("http", "both"):
            await self._http_return(sn, slot.hole)
        return slot

    def inject(self, fault: Fault | str, times: int = 1) -> None:
        """Arm a fault (see :class:`Fault`); DISCONNECT acts at once, the others on the next match."""
        fault = Fault(fault)
        logger.info("cabinet %s: fault %s armed (%d×)", self.imei, fault.value, times)
        if fault is Fault.DISCONNECT:
            self._disconnect_requested.set()
            return
        self.faults.arm(fault, times)

    async def publish_update(self, frame: bytes) -> SentFrame:
        """Publish a binary frame on this cabinet's ``/user/update`` topic."""
        return await self._publish(self.topics.update, frame)

    # ------------------------------------------------------------------ MQTT session

    async def _session_loop(self) -> None:
        backoff = self.config.reconnect_initial_s
        while True:
            # A reboot or a broker error can surface after a stop request that aiomqtt's wait_for dropped
            # (e.g. in the disconnect): then the cabinet stops instead of reconnecting for ever.
            raise_if_cancel_requested()
            try:
                credentials = await self._connect_http()
                await self._run_session(credentials)
                backoff = self.config.reconnect_initial_s
            except _Reboot as reboot:
                raise_if_cancel_requested()
                logger.info("cabinet %s: session closed (%s), reconnecting", self.imei, reboot)
                self._session = None
                self.connected.clear()
                backoff = self.config.reconnect_initial_s
                await asyncio.sleep(self.config.disconnect_pause_s)
                continue
            except (aiomqtt.MqttError, httpx.HTTPError, ConnectRejected, OSError) as error:
                raise_if_cancel_requested()
                logger.warning("cabinet %s: connection failed: %s; retry in %.1fs", self.imei, error, backoff)
            finally:
                self._session = None
                self.connected.clear()
                self._disconnect_requested.clear()
            await asyncio.sleep(backoff)
            backoff = min(self.config.reconnect_max_s, backoff * 2)

    async def _run_session(self, credentials: MqttCredentials) -> None:
        host = self.config.broker_host or credentials.host
        port = self.config.broker_port or credentials.port
        client = aiomqtt.Client(
            host,
            port,
            identifier=credentials.client_id,
            username=credentials.username or None,
            password=credentials.password or None,
            clean_session=self.config.clean_session,
            keepalive=self.config.keepalive_s,
            timeout=self.config.http_timeout_s,
        )
        async with client:
            session = _Session(client, self.topics)
            await client.subscribe(self.topics.get, qos=1)
            await client.subscribe(self.topics.heart, qos=1)
            raise_if_cancel_requested()  # connect and subscribe await aiomqtt's wait_for
            self._session = session
            self.stats.mqtt_sessions += 1
            self.connected.set()
            logger.info("cabinet %s: MQTT session open on %s:%d", self.imei, host, port)
            # Ends with the first _Reboot or MqttError of the three, or CancelledError when stopped.
            await run_until_first_exit(
                [
                    (f"cabinet-{self.imei}-receive", self._receive_loop(session)),
                    (f"cabinet-{self.imei}-heartbeat", self._heartbeat_loop(session)),
                    (f"cabinet-{self.imei}-disconnect-fault", self._watch_disconnect_fault()),
                ],
                what=f"cabinet {self.imei} session",
            )

    async def _watch_disconnect_fault(self) -> None:
        await self._disconnect_requested.wait()
        self._disconnect_requested.clear()
        self.connected.clear()
        self._session = None
        await asyncio.sleep(0)  # let the caller of inject() return before the session closes
        raise _Reboot("fault injected: disconnect")

    async def _receive_loop(self, session: _Session) -> None:
        async for message in session.client.messages:
            payload = message.payload
            body = payload if isinstance(payload, bytes | bytearray) else str(payload).encode()
            topic = message.topic.value
            if topic == session.topics.heart:
                self._on_heartbeat_echo(session, bytes(body))
            elif topic == session.topics.get:
                self._on_command(bytes(body))

    def _on_heartbeat_echo(self, session: _Session, body: bytes) -> None:
        if body != session.last_heartbeat:
            return  # someone else's frame on our topic, not our echo
        if self.faults.take(Fault.MISSING_HEARTBEAT_ECHO):
            logger.info("cabinet %s: heartbeat echo ignored (fault)", self.imei)
            return
        self.stats.heartbeat_echoes += 1
        session.echo_received.set()

    async def _heartbeat_loop(self, session: _Session) -> None:
        consecutive_misses = 0
        while True:
            frame = frames.heartbeat(self.state, self.config.signal_csq)
            session.echo_received.clear()
            session.last_heartbeat = frame
            await self._publish(session.topics.heart, frame, session=session, apply_faults=False)
            self.stats.heartbeats_sent += 1
            interval = self._heartbeat_interval()
            started = time.monotonic()
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for drops a cancellation that arrives in
                # the step the echo does, and this loop then rebooted the session of a stopped cabinet.
                async with asyncio.timeout(min(self.config.echo_timeout_s, interval)):
                    await session.echo_received.wait()
                consecutive_misses = 0
            except TimeoutError:
                consecutive_misses += 1
                self.stats.missed_echoes += 1
                logger.warning(
                    "cabinet %s: heartbeat echo missing (%d in a row)", self.imei, consecutive_misses
                )
                if consecutive_misses >= self.config.missed_echoes_before_reconnect:
                    self.stats.reboots += 1
                    raise _Reboot(f"{consecutive_misses} heartbeat echoes missed") from None
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    # ------------------------------------------------------------------ commands (protocol.md §5)

    def _on_command(self, body: bytes) -> None:
        self.stats.commands_received += 1
        try:
            command = json.loads(body)
            if not isinstance(command, dict) or not isinstance(command.get("cmd"), str):
                raise ValueError("not an object with a string 'cmd'")
        except (ValueError, UnicodeDecodeError) as error:
            self.stats.bad_commands += 1
            logger.warning("cabinet %s: unreadable command %r: %s", self.imei, body[:200], error)
            return
        task = asyncio.get_running_loop().create_task(self._handle_command(command))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _handle_command(self, command: dict[str, object]) -> None:
        name = str(command["cmd"])
        data = str(command.get("data", "") or "")
        logger.info("cabinet %s: command %s %s", self.imei, name, data)
        try:
            if name in ("check", "check_all"):
                await self.publish_update(self.snapshot_frame())
            elif name == "upload_all":
                await self._http_upload()
            elif name == "popup_sn":
                await self._popup(
                    lambda fail: self.state.eject_by_sn(_parse_int(data), fail=fail), by_sn=True
                )
            elif name == "popup":
                await self._popup(
                    lambda fail: self.state.eject_by_hole(_parse_int(data), fail=fail), by_sn=False
                )
            elif name == "getWifi":
                await self.publish_update(frames.wifi_scan(list(WIFI_NETWORKS)))
            elif name == "reboot":
                self._disconnect_requested.set()
            else:
                logger.info("cabinet %s: command %s needs no reply", self.imei, name)
        except ValueError as error:
            self.stats.bad_commands += 1
            logger.warning("cabinet %s: bad %s command: %s", self.imei, name, error)
        except CabinetOffline:
            logger.warning("cabinet %s: reply to %s lost, session closed meanwhile", self.imei, name)

    async def _popup(self, eject: Callable[[bool], EjectOutcome], *, by_sn: bool) -> None:
        outcome = eject(self.faults.take(Fault.FAILED_POPUP))
        if outcome.bank is not None:
            self.rented_banks[outcome.bank.sn] = outcome.bank
        logger.info(
            "cabinet %s: popup hole %d sn %d → state 0x%02X",
            self.imei,
            outcome.hole,
            outcome.sn,
            outcome.state,
        )
        if self.faults.take(Fault.MISSING_POPUP_REPLY):
            logger.info("cabinet %s: popup reply suppressed (fault)", self.imei)
            return
        if self.faults.take(Fault.SLOW_POPUP_REPLY):
            await asyncio.sleep(self.config.slow_reply_s)
        frame = frames.popup_by_sn_result(outcome) if by_sn else frames.popup_by_hole_result(outcome)
        await self.publish_update(frame)

    # ------------------------------------------------------------------ transport helpers

    async def _publish(
        self, topic: str, frame: bytes, *, session: _Session | None = None, apply_faults: bool = True
    ) -> SentFrame:
        session = session or self._session
        if session is None:
            raise CabinetOffline(f"cabinet {self.imei} has no MQTT session")
        wire = self.faults.apply_frame_faults(frame) if apply_faults else frame
        record = SentFrame("mqtt", topic, frame[3] if len(frame) > 3 else -1, wire, time.time())
        await session.client.publish(topic, wire, qos=1)
        raise_if_cancel_requested()  # the QoS 1 publish awaits aiomqtt's wait_for
        if topic != self.topics.heart:
            self.stats.replies_sent += 1
        self._record(record)
        return record

    def _record(self, record: SentFrame) -> None:
        self.sent.append(record)
        for callback in self.on_sent:
            callback(record)

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.config.http_timeout_s)
        return self._http

    def _url(self, path: str) -> str:
        return self.config.ingest_url.rstrip("/") + path

    async def _connect_http(self) -> MqttCredentials:
        params: dict[str, str] = {
            "uuid": self.imei,
            "deviceId": "0",
            "simUUID": self.config.sim_iccid,
            "simMobile": "",
        }
        params["sign"] = device_sign(params)
        body = f"hardware={HARDWARE_VERSION}&software={SOFTWARE_VERSION}"
        try:
            response = await self._client().post(
                self._url(CONNECT_PATH), params=params, content=body, headers={"Content-Type": "text/plain"}
            )
            response.raise_for_status()
            envelope = response.json()
            if not isinstance(envelope, dict) or envelope.get("code") != 200:
                raise ConnectRejected(f"connect answered {response.text[:200]!r}")
            credentials = MqttCredentials.parse(str(envelope.get("data") or ""))
        except (httpx.HTTPError, ConnectRejected, ValueError) as error:
            self.stats.http_connect_failures += 1
            if self.credentials is None:
                raise ConnectRejected(f"connect failed: {error}") from error
            # Like a device after a power cut: the broker may be fine while the HTTP side is not.
            logger.warning(
                "cabinet %s: connect failed (%s), using the previous credentials", self.imei, error
            )
            return self.credentials
        self.stats.http_connects += 1
        self.credentials = credentials
        return credentials

    async def _http_upload(self) -> SentFrame:
        frame = self.snapshot_frame()
        wire = self.faults.apply_frame_faults(frame)
        params = {"rentboxSN": self.imei, "signal": self.config.signal}
        params["sign"] = device_sign(params)
        sent_at = time.time()
        accepted = False
        try:
            response = await self._client().post(
                self._url(UPLOAD_PATH), params=params, content=wire, headers={"Content-Type": "text/plain"}
            )
            accepted = response.status_code == 200
            if not accepted:
                logger.warning("cabinet %s: upload answered %d", self.imei, response.status_code)
        except httpx.HTTPError as error:
            logger.warning("cabinet %s: upload failed: %s", self.imei, error)
        if accepted:
            self.stats.uploads_sent += 1
        else:
            self.stats.upload_failures += 1
        record = SentFrame("http", UPLOAD_PATH, frame[3], wire, sent_at, accepted)
        self._record(record)
        return record

    async def _http_return(self, sn: int, hole: int) -> None:
        params = {"rentboxSN": self.imei, "singleSN": str(sn), "hole": str(hole)}
        params["sign"] = device_sign(params)
        try:
            response = await self._client().post(self._url(RETURN_PATH), params=params)
            if response.status_code != 200:
                self.stats.http_returns_failed += 1
                logger.warning("cabinet %s: return call answered %d", self.imei, response.status_code)
        except httpx.HTTPError as error:
            self.stats.http_returns_failed += 1
            logger.warning("cabinet %s: return call failed: %s", self.imei, error)

    # ------------------------------------------------------------------ scheduling

    async def _upload_loop(self) -> None:
        await asyncio.sleep(self._scaled(self.config.first_upload_delay_s, FIRST_UPLOAD_DELAY_S))
        while True:
            await self._uploads_enabled.wait()
            async with self._upload_lock:
                if self._uploads_enabled.is_set():
                    try:
                        await self.upload_now()
                    except CabinetOffline:
                        logger.info("cabinet %s: upload skipped, no MQTT session", self.imei)
            raise_if_cancel_requested()
            await asyncio.sleep(self._scaled(self.config.upload_interval_s, UPLOAD_PERIOD_S))

    def _heartbeat_interval(self) -> float:
        if self.config.heartbeat_interval_s is not None:
            return self.config.heartbeat_interval_s
        return self.rng.uniform(*HEARTBEAT_PERIOD_RANGE_S) / self.config.speed

    def _scaled(self, override: float | None, simulated_s: float) -> float:
        return override if override is not None else simulated_s / self.config.speed

    def _advance_time(self) -> None:
        now = time.monotonic()
        self.state.advance((now - self._last_advance) * self.config.speed, self.rng)
        self._last_advance = now


def _parse_int(text: str) -> int:
    value = int(text.strip())
    if value < 0:
        raise ValueError(f"negative number {text!r}")
    return value
