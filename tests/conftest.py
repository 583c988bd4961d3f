"""Shared test fixtures: real PostgreSQL, Redis and MQTT broker when reachable.

Outside CI a test that needs a server that is not running is *skipped* with a reason. With
``CHARGEGHAR_REQUIRE_SERVICES=1`` (set by ``.ci/run``) the same situation is a *failure*, so CI can never
go green by skipping the real-service tests.

Server locations (override with environment variables):
- ``TEST_POSTGRES_ADMIN_URL``  default ``postgresql://postgres@127.0.0.1:5432/postgres``
- ``TEST_REDIS_URL``           default ``redis://127.0.0.1:6379/0``
- ``TEST_MQTT_HOST`` / ``TEST_MQTT_PORT`` default ``127.0.0.1`` / ``1883``

Fixtures:
- ``postgres_url``: an async SQLAlchemy URL of a fresh database created for this test session (dropped at
  the end); skips/fails without PostgreSQL.
- ``database_url``: ``postgres_url`` when PostgreSQL is there, otherwise a SQLite file (the embedded default
  of design.md). Never skips.
- ``redis_url`` + ``redis_prefix``: Redis and a key prefix unique to the test.
- ``mqtt_broker``: ``(host, port)`` of a reachable broker; without Mosquitto (outside CI) an embedded amqtt
  broker is started for the session, as a child process that dies with pytest (even a SIGKILLed one).
  ``mqtt_is_embedded`` tells which.
- ``topic_prefix``: a unique MQTT topic prefix per test (prepend it to the device topics).
- (automatic) uvicorn servers started inside the test process leave Ctrl-C / SIGTERM to pytest.
- ``documented_statuses`` (automatic): every status core or the ingest answered must be in its OpenAPI.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import uvicorn
from api_statuses import StatusRecorder
from chargeghar_core.kit.db import create_engine
from chargeghar_core.kit.migrate import migrate
from chargeghar_core.settings import DatabaseSettings
from chargeghar_ingest.simulator.stack import die_with_parent
from hypothesis import HealthCheck, settings
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

# "dev" keeps local runs quick; "ci" (selected by .ci/run) explores more examples.
settings.register_profile("dev", max_examples=150, deadline=None)
settings.register_profile("ci", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

REQUIRE_SERVICES = os.environ.get("CHARGEGHAR_REQUIRE_SERVICES", "") not in ("", "0", "false", "no")

POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
MQTT_HOST = os.environ.get("TEST_MQTT_HOST", "127.0.0.1")
MQTT_PORT = int(os.environ.get("TEST_MQTT_PORT", "1883"))


@pytest.fixture(scope="session", autouse=True)
def documented_statuses() -> Iterator[StatusRecorder]:
    """Fails the run (an error at the last teardown) when an API answered a status its OpenAPI does not
    document for that operation (see api_statuses.py)."""
    recorder = StatusRecorder()
    recorder.install()
    try:
        yield recorder
    finally:
        recorder.uninstall()
    undocumented = recorder.undocumented()
    if undocumented:
        pytest.fail("Statuses missing from the OpenAPI document:\n" + "\n".join(undocumented), pytrace=False)


def service_unavailable(name: str, detail: str) -> None:
    """Skip (developer machine) or fail (CI) because a server the test needs is not reachable."""
    message = f"{name} not reachable ({detail})"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message}; CHARGEGHAR_REQUIRE_SERVICES=1 makes this a failure", pytrace=False)
    pytest.skip(f"{message}; start it to run this test")


def tcp_reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session", autouse=True)
def signals_reach_pytest() -> Iterator[None]:
    """In-process uvicorn servers (the fake peers) must not take SIGINT/SIGTERM for themselves.

    uvicorn's ``Server.serve`` installs its own handlers while it runs: Ctrl-C then only stopped that fake
    peer, and pytest went on failing test after test instead of stopping. Services started as child
    processes keep their own handling.
    """

    def no_capture(server: uvicorn.Server) -> AbstractContextManager[None]:
        return nullcontext()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(uvicorn.Server, "capture_signals", no_capture)
        yield


# --------------------------------------------------------------------------------------------- PostgreSQL


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def _async_url(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return "postgresql+asyncpg://" + rest if scheme in ("postgresql", "postgres") else url


async def _admin_execute(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=3)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_available() -> bool:
    parts = urlsplit(POSTGRES_ADMIN_URL)
    return tcp_reachable(parts.hostname or "127.0.0.1", parts.port or 5432)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``@pytest.mark.postgres`` tests (concurrent writers, visibility across connections: what SQLite, which
    serialises writers, cannot show) skip without PostgreSQL, or fail under CHARGEGHAR_REQUIRE_SERVICES."""
    if item.get_closest_marker("postgres") is not None:
        parts = urlsplit(POSTGRES_ADMIN_URL)
        if not tcp_reachable(parts.hostname or "127.0.0.1", parts.port or 5432):
            service_unavailable("PostgreSQL", POSTGRES_ADMIN_URL)


@asynccontextmanager
async def fresh_postgres_database() -> AsyncIterator[str]:
    """Create a database for this test session and drop it afterwards; yields its async URL."""
    name = f"cg_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    await _admin_execute(f'CREATE DATABASE "{name}"')
    try:
        yield _async_url(_with_database(POSTGRES_ADMIN_URL, name))
    finally:
        await _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
async def postgres_url(postgres_available: bool) -> AsyncIterator[str]:
    if not postgres_available:
        service_unavailable("PostgreSQL", POSTGRES_ADMIN_URL)
    async with fresh_postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
async def database_url(
    postgres_available: bool, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """PostgreSQL when reachable (always in CI), otherwise a SQLite file: the embedded default."""
    if postgres_available:
        async with fresh_postgres_database() as url:
            yield url
        return
    if REQUIRE_SERVICES:
        service_unavailable("PostgreSQL", POSTGRES_ADMIN_URL)
    path = tmp_path_factory.mktemp("db") / "core.sqlite3"
    yield f"sqlite+aiosqlite:///{path}"


# ----------------------------------------------------------------------------------------- migrated database
# One database per session, migrated once with the real alembic scripts; each test runs inside an outer
# transaction that is rolled back, and sessions made by ``test_sessionmaker`` join it in savepoint mode (an
# app's commit is a RELEASE SAVEPOINT). Shared by the core, rentals and console tests.


@pytest.fixture(scope="session")
async def migrated_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    await migrate(DatabaseSettings(url=database_url))
    engine = create_engine(DatabaseSettings(url=database_url))
    yield engine
    await engine.dispose()


@pytest.fixture
async def db_connection(migrated_engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    async with migrated_engine.connect() as connection:
        outer = await connection.begin()
        try:
            yield connection
        finally:
            if outer.is_active:
                await outer.rollback()


@pytest.fixture
def test_sessionmaker(db_connection: AsyncConnection) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(
        bind=db_connection, join_transaction_mode="create_savepoint", expire_on_commit=False, autoflush=False
    )


@pytest.fixture
async def session(test_sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session for the test's own setup and assertions (same connection, same outer transaction)."""
    async with test_sessionmaker() as test_session:
        yield test_session


# --------------------------------------------------------------------------------------------- Redis


@pytest.fixture(scope="session")
def redis_url() -> str:
    parts = urlsplit(REDIS_URL)
    if not tcp_reachable(parts.hostname or "127.0.0.1", parts.port or 6379):
        service_unavailable("Redis", REDIS_URL)
    return REDIS_URL


@pytest.fixture
def redis_prefix() -> str:
    """Every key a test writes starts with this, so parallel runs never see each other's keys."""
    return f"cgtest:{uuid.uuid4().hex[:10]}:"


# --------------------------------------------------------------------------------------------- MQTT


def _start_embedded_broker(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        die_with_parent([sys.executable, "-m", "chargeghar_ingest.embedded_broker", "--port", str(port)]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if tcp_reachable("127.0.0.1", port, timeout=0.2):
            return process
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    process.wait(timeout=10)
    raise RuntimeError("embedded MQTT broker did not start")


@pytest.fixture(scope="session")
def mqtt_broker() -> Iterator[tuple[str, int]]:
    if tcp_reachable(MQTT_HOST, MQTT_PORT):
        yield (MQTT_HOST, MQTT_PORT)
        return
    if REQUIRE_SERVICES:
        service_unavailable("MQTT broker", f"{MQTT_HOST}:{MQTT_PORT}")
    port = free_port()
    process = _start_embedded_broker(port)
    try:
        yield ("127.0.0.1", port)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def mqtt_is_embedded(mqtt_broker: tuple[str, int]) -> bool:
    return mqtt_broker != (MQTT_HOST, MQTT_PORT)


@pytest.fixture
def topic_prefix() -> str:
    return f"/t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
