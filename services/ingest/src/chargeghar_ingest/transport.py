"""The only module that imports the MQTT library (aiomqtt 2.5): connect, (re)subscribe, consume, publish.

aiomqtt 3 changes acknowledgements and reconnects; keeping it behind this one class means a switch
touches nothing else. The rest of the ingest sees ``InboundMessage`` and ``MqttTransport.publish``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiomqtt
import structlog
from paho.mqtt import client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class InboundMessage:
    topic: str
    payload: bytes
    qos: int


MessageHandler = Callable[[InboundMessage], Awaitable[None]]
# Which messages must be handled in order relative to each other (e.g. the station named in the topic).
OrderingKey = Callable[[str], str]


def _raise_if_cancel_was_swallowed() -> None:
    # Python 3.11's asyncio.wait_for (used inside aiomqtt's connect/subscribe) can swallow a cancellation
    # that races with its inner future completing; the task then sits in "async for message" forever
    # and shutdown hangs. The task still counts the request, so honour it here.
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class MqttNotConnectedError(RuntimeError):
    """Publishing while the broker connection is down (the caller decides whether that is fatal)."""


class MqttPublishError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class MqttConnection:
    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = None
    protocol: str = "3.1.1"
    keepalive_s: int = 60
    # Keep the broker session across reconnects/restarts (needs a stable client_id): QoS 1 messages that
    # arrive while the ingest is away are queued by the broker and delivered when it is back.
    persistent_session: bool = True
    session_expiry_s: int = 86400


class MqttTransport:
    """One broker connection used for both consuming and publishing, reconnecting forever.

    Every (re)connect subscribes again to every topic: with a clean session (or a broker that lost the
    persistent one) the broker forgets subscriptions when the connection drops (the legacy bridge's
    silent-consumer bug, protocol.md §10.23). Subscribing again to a kept session changes nothing.
    """

    def __init__(
        self,
        connection: MqttConnection,
        *,
        subscriptions: Sequence[tuple[str, int]],
        handler: MessageHandler,
        reconnect_initial_s: float = 0.5,
        reconnect_max_s: float = 5.0,
        workers: int = 1,
        worker_queue_size: int = 64,
        ordering_key: OrderingKey | None = None,
    ) -> None:
        self._connection = connection
        self._subscriptions = list(subscriptions)
        self._handler = handler
        # Messages are handled concurrently by ``workers`` tasks; all messages with one ordering key go
        # to the same worker, so they are handled (and acknowledged) in arrival order.
        self._worker_count = max(1, workers)
        self._worker_queue_size = max(1, worker_queue_size)
        self._ordering_key: OrderingKey = ordering_key or (lambda topic: topic)
        self._queues: list[asyncio.Queue[tuple[aiomqtt.Client, aiomqtt.Message]]] = []
        self._reconnect_initial_s = reconnect_initial_s
        self._reconnect_max_s = reconnect_max_s
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self.connect_count = 0
        self.handler_errors = 0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout_s: float) -> bool:
        # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow the caller's cancellation.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._connected.wait()
        return self._connected.is_set()

    def _new_client(self) -> aiomqtt.Client:
        c = self._connection
        v5 = c.protocol == "5"
        properties: Properties | None = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = c.session_expiry_s if c.persistent_session else 0
        client = aiomqtt.Client(
            c.host,
            c.port,
            username=c.username,
            password=c.password,
            identifier=c.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            keepalive=c.keepalive_s,
            timeout=10,
            clean_session=None if v5 else not c.persistent_session,
            # v5 only (paho refuses it for 3.1.1): resume the session unless it is meant to be thrown away.
            clean_start=False if v5 and c.persistent_session else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        # Acknowledge a message only after the handler committed it to the spool (PUBACK after the
        # fsync), so a crash in between makes the broker deliver it again instead of losing it. aiomqtt 2.5
        # has no public switch for this; paho's manual-ack mode is set on the wrapped client.
        client._client.manual_ack_set(True)
        return client

    async def run(self) -> None:
        """Connect, subscribe and hand every message to the handlers until cancelled."""
        self._queues = [asyncio.Queue(self._worker_queue_size) for _ in range(self._worker_count)]
        # The workers outlive a connection: what was received before a drop is still spooled (with a
        # clean session the broker would not send it again); only its acknowledgement is lost.
        workers = [
            asyncio.create_task(self._work(q), name=f"mqtt-handler-{i}") for i, q in enumerate(self._queues)
        ]
        try:
            await self._consume()
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _consume(self) -> None:
        failures = 0
        while True:
            try:
                async with self._new_client() as client:
                    _raise_if_cancel_was_swallowed()
                    for topic, qos in self._subscriptions:
                        await client.subscribe(topic, qos=qos)
                        _raise_if_cancel_was_swallowed()
                    self._client = client
                    self._connected.set()
                    self.connect_count += 1
                    failures = 0
                    log.info(
                        "mqtt.connected",
                        host=self._connection.host,
                        port=self._connection.port,
                        subscriptions=[t for t, _ in self._subscriptions],
                        connects=self.connect_count,
                    )
                    async for message in client.messages:
                        await self._enqueue(client, message)
                        _raise_if_cancel_was_swallowed()
            except aiomqtt.MqttError as exc:
                # A cancellation that raced with the failure wins: no reconnect after shutdown began.
                _raise_if_cancel_was_swallowed()
                failures += 1
                delay = self._backoff(failures)
                log.warning("mqtt.disconnected", error=str(exc), retry_in_s=round(delay, 2))
                self._connected.clear()
                self._client = None
                await asyncio.sleep(delay)
            finally:
                self._connected.clear()
                self._client = None

    def _backoff(self, failures: int) -> float:
        # Capped exponential with equal jitter (half fixed, half random), so replicas do not reconnect in
        # lockstep; the cap stays a few seconds so the ingest is back before the stations after an outage.
        ceiling = min(self._reconnect_max_s, self._reconnect_initial_s * (2 ** min(failures - 1, 20)))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    async def _enqueue(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        key = self._ordering_key(message.topic.value)
        shard = zlib.crc32(key.encode()) % len(self._queues)
        # Waits when that worker is behind: back-pressure on the reading loop, bounded memory.
        await self._queues[shard].put((client, message))

    async def _work(self, jobs: asyncio.Queue[tuple[aiomqtt.Client, aiomqtt.Message]]) -> None:
        while True:
            client, message = await jobs.get()
            await self._dispatch(client, message)

    async def _dispatch(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        payload = message.payload
        body = payload if isinstance(payload, bytes | bytearray) else str(payload or "").encode()
        inbound = InboundMessage(topic=message.topic.value, payload=bytes(body), qos=message.qos)
        try:
            await self._handler(inbound)
        except asyncio.CancelledError:
            raise  # not acknowledged: with a persistent session the broker delivers it again
        except Exception:
            # The consumer never stops because one message could not be handled.
            self.handler_errors += 1
            log.exception("mqtt.handler_failed", topic=inbound.topic, payload_hex=inbound.payload.hex())
        # Acked after a failure too: redelivering a message that breaks the handler would loop forever.
        # (On a connection that has dropped meanwhile paho only reports an error code: nothing to do.)
        client._client.ack(message.mid, message.qos)

    async def publish(self, topic: str, payload: bytes | str, *, qos: int, timeout_s: float = 10.0) -> None:
        client = self._client
        if client is None:
            raise MqttNotConnectedError("not connected to the MQTT broker")
        try:
            await client.publish(topic, payload, qos=qos, retain=False, timeout=timeout_s)
        except aiomqtt.MqttError as exc:
            raise MqttPublishError(str(exc)) from exc
