"""A dependency that is down or frozen is a typed 503 (database) or a safe fallback (Redis rate limiter),
never a generic 500. Redis runs as a private ``redis-server`` on its own port so that it can be stopped
and frozen (SIGSTOP) without touching the shared one."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from chargeghar_core.auth.models import Role
from chargeghar_core.kit.ratelimit import FallbackRateLimiter, InProcessRateLimiter, RedisRateLimiter
from chargeghar_core.settings import DatabaseSettings, InternalSettings, RedisSettings
from chargeghar_core.stations.models import Station
from core_support import INTERNAL_BATCH, CoreClient, make_settings, new_imei, running_client, status_event
from redis.asyncio import Redis
from sqlalchemy import func, select

ClientFactory = Callable[..., Any]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tcp_reachable(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------- database


@pytest.fixture
def closed_port_database_url() -> str:
    """Nothing listens there: every connection attempt is refused at once."""
    return f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/core"


async def test_database_down_is_a_typed_503_on_every_kind_of_route(closed_port_database_url: str) -> None:
    settings = make_settings(closed_port_database_url)
    settings.db = DatabaseSettings(url=closed_port_database_url, connect_timeout_s=2)
    async with running_client(settings) as client:
        public = await client.http.get("/api/stations")
        staff = await client.http.get("/api/admin/powerbanks", headers=client.auth(Role.ADMIN))
        login = await client.http.post("/api/renters/login", json={"login": "nobody@x.io", "password": "pw"})
        event = await client.sync(status_event(new_imei(), "ONLINE"))
        batch = await client.post_signed(INTERNAL_BATCH, {"events": [status_event(new_imei(), "ONLINE")]})
    for response in (public, staff, login, event, batch):
        assert response.status_code == 503, (response.request.url, response.text)
        body = response.json()
        assert body["success"] is False
        assert body["error"] == "DATABASE_UNAVAILABLE", body
        assert response.headers["Retry-After"]


# --------------------------------------------------------------------------------------------- Redis


class PrivateRedis:
    """A redis-server of this test only (no persistence), that the test may stop, freeze and restart."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not tcp_reachable("127.0.0.1", self.port, timeout=0.2):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("private redis-server did not start")
            time.sleep(0.05)

    def freeze(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None:
            return
        self.thaw()
        self.process.terminate()
        self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server binary not installed")
    server = PrivateRedis(binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _send_wave(client: CoreClient, imeis: list[str]) -> list[int]:
    responses = await asyncio.gather(
        *(client.sync(status_event(imei, "ONLINE"), event_id=uuid.uuid4().hex) for imei in imeis)
    )
    return [response.status_code for response in responses]


@pytest.mark.redis
async def test_redis_stopped_or_frozen_under_load_never_fails_the_internal_endpoint(
    committed_database_url: str, private_redis: PrivateRedis
) -> None:
    """Concurrent requests need the app's own connection pool: a database that really commits."""
    settings = make_settings(
        committed_database_url,
        internal=InternalSettings(rate_limit_per_minute=100_000),
        redis=RedisSettings(url=private_redis.url, socket_timeout_s=0.3, outage_retry_s=0.5),
    )
    waves: dict[str, list[int]] = {}
    sent: list[str] = []
    async with running_client(settings) as client:
        limiter = client.app.state.internal_gate._limiter
        assert isinstance(limiter, FallbackRateLimiter)

        def wave() -> list[str]:
            imeis = [new_imei() for _ in range(10)]
            sent.extend(imeis)
            return imeis

        waves["up"] = await _send_wave(client, wave())
        assert limiter.fallback_hits == 0

        private_redis.freeze()
        waves["frozen"] = await _send_wave(client, wave())
        frozen_fallbacks = limiter.fallback_hits

        private_redis.stop()
        waves["stopped"] = await _send_wave(client, wave())

        private_redis.start()  # same port: the pool reconnects
        await asyncio.sleep(0.6)  # past outage_retry_s, so the next call asks Redis again
        waves["restarted"] = await _send_wave(client, wave())
        recovered = not limiter.degraded
        async with client.app.state.sessionmaker() as session:
            applied = await session.scalar(
                select(func.count()).select_from(Station).where(Station.imei.in_(sent))
            )

    assert waves == {name: [200] * 10 for name in ("up", "frozen", "stopped", "restarted")}
    assert frozen_fallbacks > 0
    assert recovered
    # Every event of every wave was applied (a station is created by its first status event).
    assert applied == len(sent)


@pytest.mark.redis
async def test_fallback_limiter_still_limits_in_process_while_redis_is_down(
    private_redis: PrivateRedis,
) -> None:
    redis = Redis.from_url(private_redis.url, socket_timeout=0.3, socket_connect_timeout=0.3)
    limiter = FallbackRateLimiter(
        RedisRateLimiter(redis, f"cgtest:{uuid.uuid4().hex[:8]}:"), InProcessRateLimiter(), retry_after_s=60
    )
    try:
        assert (await limiter.hit("caller", 2, 60)).allowed
        private_redis.stop()
        decisions = [await limiter.hit("caller", 2, 60) for _ in range(3)]
    finally:
        await redis.aclose()
    # Redis counted the first hit; the in-process counter starts afresh and still refuses past the limit.
    assert [decision.allowed for decision in decisions] == [True, True, False]
    assert limiter.degraded and limiter.fallback_hits == 3


async def test_a_redis_error_elsewhere_on_a_request_path_is_a_typed_503(
    client_factory: ClientFactory,
) -> None:
    port = free_port()
    async with client_factory() as client:
        # Health readiness reports its own state; any other route that meets a dead Redis answers 503.
        client.app.state.redis = Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=0.3)

        @client.app.get("/_test/redis")
        async def _uses_redis() -> dict[str, Any]:
            await client.app.state.redis.ping()
            return {}

        try:
            response = await client.http.get("/_test/redis")
        finally:
            await client.app.state.redis.aclose()
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "REDIS_UNAVAILABLE"
