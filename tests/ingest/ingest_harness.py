"""Running the real ingest app in a test: settings builder, lifespan, an ASGI client, spool helpers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from chargeghar_ingest.app import create_app
from chargeghar_ingest.runtime import IngestRuntime
from chargeghar_ingest.settings import IngestSettings
from chargeghar_ingest.spool import SpooledEvent
from fastapi import FastAPI
from ingest_fake_core import HMAC_SECRET, SERVICE_EMAIL, SERVICE_PASSWORD

# The connect-answer vector of protocol.md §9 #13 and the upload vector of §4.2 / §9 #3.
UPLOAD_FRAME_HEX = (
    "A8 00 47 10 | 01 04 00 00 04 0F"
    " | 01 00 00 00 00 00 00 00 00 00 01 00 00 00 80"
    " | 02 00 00 00 00 00 00 00 00 00 01 00 00 00 80"
    " | 03 01 00 E4 49 02 6E D5 84 64 18 32 02 19 00"
    " | 04 00 00 00 00 00 00 00 00 00 01 00 00 00 80 | 9C"
)
UPLOAD_FRAME = bytes.fromhex(UPLOAD_FRAME_HEX.replace("|", ""))
STATION = "864601069946994"


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_settings(tmp_path: Path, **overrides: Any) -> IngestSettings:
    """Test settings: a private spool file, no MQTT/forwarder unless a test turns them on."""
    base: dict[str, Any] = {
        "environment": "test",
        "mqtt_enabled": False,
        "forwarder_enabled": False,
        "spool": {"path": tmp_path / "spool.sqlite3"},
        "core": {
            "base_url": "http://127.0.0.1:9",
            "email": SERVICE_EMAIL,
            "password": SERVICE_PASSWORD,
            "hmac_secret": HMAC_SECRET,
            "retry_initial_s": 0.05,
            "retry_max_s": 0.2,
            "connect_timeout_s": 1.0,
            "read_timeout_s": 2.0,
        },
        "device": {"credential_secret": "test-credential-secret"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return IngestSettings.model_validate(base)


@dataclass
class RunningIngest:
    app: FastAPI
    runtime: IngestRuntime
    client: httpx.AsyncClient

    async def events(self, station: str | None = None) -> list[SpooledEvent]:
        return await self.runtime.spool.pending_events(station)

    async def event_bodies(self, event_type: str, station: str | None = None) -> list[dict[str, Any]]:
        return [e.body for e in await self.events(station) if e.type == event_type]


@asynccontextmanager
async def running_ingest(settings: IngestSettings) -> AsyncIterator[RunningIngest]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        runtime: IngestRuntime = app.state.runtime
        # Subscribed before the test publishes anything: a message sent earlier would simply be missed.
        if runtime.transport is not None and not await runtime.transport.wait_connected(15):
            raise AssertionError("the ingest did not connect to the MQTT broker")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            yield RunningIngest(app=app, runtime=app.state.runtime, client=client)


async def wait_until(
    condition: Callable[[], Awaitable[bool]], *, timeout_s: float = 10.0, interval_s: float = 0.05
) -> None:
    """Poll an async condition until it holds; fail the test with a clear message after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(interval_s)
