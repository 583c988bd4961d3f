"""The ingest FastAPI app. One lifespan owns every long-lived part: the spool, Redis, the httpx client,
the MQTT connection and consumer, the forwarder, the presence sweeper, and the reply listener."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import structlog
from fastapi import FastAPI, Request, Response
from redis.asyncio import Redis
from redis.exceptions import RedisError

from chargeghar_ingest import command_api, device_api, ops_api
from chargeghar_ingest.commands import CommandService
from chargeghar_ingest.consumer import DeviceMessageRouter, device_subscriptions, parse_device_topic
from chargeghar_ingest.forwarder import CoreClient, Forwarder
from chargeghar_ingest.locks import MemoryStationLock, RedisStationLock, StationLock
from chargeghar_ingest.metrics import Metrics
from chargeghar_ingest.openapi import install_openapi, serve_docs_locally
from chargeghar_ingest.pipeline import EventRecorder
from chargeghar_ingest.presence import MemoryPresenceStore, PresenceStore, RedisPresenceStore
from chargeghar_ingest.provisioning import DeviceRegistryClient
from chargeghar_ingest.replies import MemoryReplyBroker, RedisReplyBroker, ReplyBroker, ReplyCallback
from chargeghar_ingest.runtime import IngestRuntime
from chargeghar_ingest.settings import IngestSettings
from chargeghar_ingest.spool import Spool
from chargeghar_ingest.transport import InboundMessage, MqttConnection, MqttNotConnectedError, MqttTransport

log = structlog.get_logger(__name__)

CORRELATION_HEADER = "X-Correlation-Id"
SHUTDOWN_TASK_TIMEOUT_S = 10.0
# A background loop that dies unexpectedly is restarted after this pause (it must never stay down).
SUPERVISOR_RESTART_S = 1.0


async def supervise(name: str, run: Callable[[], Awaitable[None]]) -> None:
    while True:
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background_task.crashed", task=name)
            await asyncio.sleep(SUPERVISOR_RESTART_S)


async def presence_sweeper(runtime: IngestRuntime) -> None:
    presence = runtime.settings.presence
    while True:
        await asyncio.sleep(presence.sweep_interval_s)
        await runtime.recorder.sweep(presence.offline_after_s)


async def prune_once(runtime: IngestRuntime, *, now: float | None = None) -> dict[str, int]:
    """One retention pass: dead letters, parked events and command audit rows older than their settings."""
    spool_settings = runtime.settings.spool
    current = time.time() if now is None else now
    day = 86400.0
    removed = await runtime.spool.prune(
        dead_letters_before=current - spool_settings.dead_letter_retention_days * day,
        parked_before=current - spool_settings.parked_retention_days * day,
        audit_before=current - spool_settings.command_audit_retention_days * day,
    )
    total = sum(removed.values())
    if total:
        runtime.metrics.inc("retention_pruned_total", total)
        log.info("retention.pruned", **removed)
    return removed


async def retention_loop(runtime: IngestRuntime) -> None:
    # First pass at start: a replica restarted after a long time frees its disk at once.
    while True:
        await prune_once(runtime)
        await asyncio.sleep(runtime.settings.spool.retention_interval_s)


def build_runtime(settings: IngestSettings) -> IngestRuntime:
    """Wire the parts together (nothing is connected or opened yet; the lifespan does that)."""
    replica = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    metrics = Metrics()
    spool = Spool(
        settings.spool.path,
        synchronous=settings.spool.synchronous,
        max_jobs_per_commit=settings.spool.max_jobs_per_commit,
        dead_letter_raw_max_bytes=settings.spool.dead_letter_raw_max_bytes,
    )
    redis: Redis | None = None
    presence: PresenceStore
    lock: StationLock
    prefix = settings.redis.key_prefix
    if settings.redis.url:
        redis = Redis.from_url(
            settings.redis.url,
            socket_timeout=settings.redis.socket_timeout_s,
            socket_connect_timeout=settings.redis.socket_timeout_s,
        )
        presence = RedisPresenceStore(redis, prefix)
        lock = RedisStationLock(redis, prefix)
    else:
        presence = MemoryPresenceStore()
        lock = MemoryStationLock()

    def broker_factory(on_reply: ReplyCallback) -> ReplyBroker:
        if redis is not None:
            return RedisReplyBroker(redis, prefix, replica, on_reply)
        return MemoryReplyBroker(on_reply)

    recorder = EventRecorder(
        spool, presence, metrics, return_dedupe_window_s=settings.device.return_dedupe_window_s
    )
    transport: MqttTransport | None = None

    async def publish(topic: str, payload: str, *, qos: int) -> None:
        if transport is None:
            raise MqttNotConnectedError("the MQTT consumer is disabled in this process")
        await transport.publish(topic, payload, qos=qos)

    commands = CommandService(
        lock=lock,
        broker_factory=broker_factory,
        recorder=recorder,
        spool=spool,
        metrics=metrics,
        publish=publish,
        topic_prefix=settings.mqtt.topic_prefix,
        replica=replica,
        offline_after_s=settings.presence.offline_after_s,
        late_reply_window_s=settings.commands.late_reply_window_s,
        max_timeout_s=settings.commands.max_timeout_s,
        forward_audit=settings.commands.forward_audit,
    )
    router = DeviceMessageRouter(
        recorder=recorder,
        commands=commands,
        spool=spool,
        metrics=metrics,
        topic_prefix=settings.mqtt.topic_prefix,
        accept_bad_checksum=settings.device.accept_bad_checksum,
    )

    async def handle(message: InboundMessage) -> None:
        await router.handle(message)

    def station_of_topic(topic: str) -> str:
        # A station's update and heart messages are handled in order; anything else by its topic.
        parsed = parse_device_topic(topic, settings.mqtt.topic_prefix)
        return parsed.station if parsed is not None else topic

    if settings.mqtt_enabled:
        mqtt = settings.mqtt
        transport = MqttTransport(
            MqttConnection(
                host=mqtt.host,
                port=mqtt.port,
                client_id=mqtt.client_id,
                username=mqtt.username,
                password=mqtt.password.get_secret_value() if mqtt.password else None,
                protocol=mqtt.protocol,
                keepalive_s=mqtt.keepalive_s,
                persistent_session=mqtt.persistent_session,
                session_expiry_s=mqtt.session_expiry_s,
            ),
            subscriptions=[
                (t, mqtt.subscribe_qos) for t in device_subscriptions(mqtt.topic_prefix, mqtt.shared_group)
            ],
            handler=handle,
            reconnect_initial_s=mqtt.reconnect_initial_s,
            reconnect_max_s=mqtt.reconnect_max_s,
            workers=mqtt.handler_workers,
            worker_queue_size=mqtt.handler_queue_size,
            ordering_key=station_of_topic,
        )
    core = settings.core
    http = httpx.AsyncClient(
        timeout=httpx.Timeout(
            connect=core.connect_timeout_s, read=core.read_timeout_s, write=10.0, pool=10.0
        ),
        limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
    )
    core_client = CoreClient(http, core, metrics)
    forwarder = Forwarder(spool, core_client, core, metrics)
    return IngestRuntime(
        settings=settings,
        replica=replica,
        metrics=metrics,
        spool=spool,
        recorder=recorder,
        commands=commands,
        http=http,
        core=core_client,
        forwarder=forwarder,
        devices=DeviceRegistryClient(settings, core_client, http, metrics, redis),
        redis=redis,
        transport=transport,
    )


@asynccontextmanager
async def run_runtime(runtime: IngestRuntime) -> AsyncIterator[IngestRuntime]:
    """Open/connect everything, start the background loops, and undo it all on exit."""
    await runtime.spool.open()
    runtime.started_at = time.time()
    tasks: list[asyncio.Task[None]] = []

    def start(name: str, run: Callable[[], Awaitable[None]]) -> None:
        tasks.append(asyncio.create_task(supervise(name, run), name=f"ingest:{name}"))
        runtime.background.append(name)

    try:
        if runtime.redis is not None:
            try:
                await runtime.redis.ping()
            except (RedisError, OSError) as exc:
                # Start anyway: devices must still get answers and events still get spooled; presence
                # updates are skipped and commands answer 503 until Redis is back.
                log.error("redis.unavailable_at_start", error=repr(exc))
            start("replies", runtime.commands.broker.run)
        if runtime.transport is not None:
            start("mqtt", runtime.transport.run)
        if runtime.settings.forwarder_enabled:
            start("forwarder", runtime.forwarder.run)
        start("presence_sweeper", lambda: presence_sweeper(runtime))
        start("retention", lambda: retention_loop(runtime))
        log.info("ingest.started", replica=runtime.replica, pending=await runtime.spool.pending_count())
        yield runtime
    finally:
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a library that swallows a cancellation must not keep the process alive forever.
            _, still_running = await asyncio.wait(tasks, timeout=SHUTDOWN_TASK_TIMEOUT_S)
            for task in still_running:
                log.error("background_task.did_not_stop", task=task.get_name())
        await runtime.devices.close()
        await runtime.http.aclose()
        if runtime.redis is not None:
            await runtime.redis.aclose()
        await runtime.spool.close()
        log.info("ingest.stopped", replica=runtime.replica)


def create_app(settings: IngestSettings | None = None) -> FastAPI:
    resolved = settings or IngestSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = build_runtime(resolved)
        async with run_runtime(runtime):
            app.state.runtime = runtime
            yield

    openapi_url = "/openapi.json"
    app = FastAPI(
        title="ChargeGhar ingest",
        version="0.1.0",
        description=(
            "Device HTTP endpoints (answered at once in the vendor envelope, events spooled and forwarded to "
            "core), the command API core uses to reach stations (HMAC-signed, contract.md §3), and the "
            "operations endpoints."
        ),
        openapi_tags=[
            {"name": "devices", "description": "Called by the cabinets' firmware and by EMQX."},
            {"name": "commands", "description": "Core → station commands (signed)."},
            {"name": "operations", "description": "Health, metrics, dead letters and re-drive (signed)."},
        ],
        lifespan=lifespan,
        # Served by serve_docs_locally instead: FastAPI's pages load Swagger UI / ReDoc from a CDN.
        docs_url=None,
        redoc_url=None,
        openapi_url=openapi_url,
    )

    @app.middleware("http")
    async def correlation(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # One id per request, taken from the caller when it sends one; bound to every log line and passed
        # on to core with the events this request produced.
        correlation_id = request.headers.get(CORRELATION_HEADER) or uuid.uuid4().hex
        request.state.correlation_id = correlation_id
        with structlog.contextvars.bound_contextvars(correlation_id=correlation_id):
            response = await call_next(request)
        response.headers[CORRELATION_HEADER] = correlation_id
        return response

    app.include_router(device_api.router, tags=["devices"])
    app.include_router(command_api.router, tags=["commands"])
    app.include_router(ops_api.router, tags=["operations"])
    install_openapi(app)
    serve_docs_locally(app, openapi_url=openapi_url)
    return app
