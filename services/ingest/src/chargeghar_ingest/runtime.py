"""Everything the lifespan builds, in one object reachable from every request (``app.state.runtime``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from redis.asyncio import Redis

from chargeghar_ingest.commands import CommandService
from chargeghar_ingest.forwarder import CoreClient, Forwarder
from chargeghar_ingest.metrics import Metrics
from chargeghar_ingest.pipeline import EventRecorder
from chargeghar_ingest.provisioning import DeviceRegistryClient
from chargeghar_ingest.settings import IngestSettings
from chargeghar_ingest.spool import Spool
from chargeghar_ingest.transport import MqttTransport


@dataclass
class IngestRuntime:
    settings: IngestSettings
    replica: str
    metrics: Metrics
    spool: Spool
    recorder: EventRecorder
    commands: CommandService
    http: httpx.AsyncClient
    core: CoreClient
    forwarder: Forwarder
    devices: DeviceRegistryClient
    redis: Redis | None = None
    transport: MqttTransport | None = None
    started_at: float = 0.0
    background: list[str] = field(default_factory=list)
