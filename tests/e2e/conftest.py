"""End-to-end fixtures: core and ingest as child processes on the test database and the test broker.

The simulator (in the test process) talks to them over real HTTP and MQTT; assertions read core's public
and admin APIs and its ``sync_logs`` table (one row per inbound event, written whatever happened to it).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from chargeghar_ingest.simulator.stack import LocalStack, StackError
from e2e_support import new_stack
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

ADMIN_PASSWORD = "e2e-admin-password"


@pytest.fixture(scope="session")
def e2e_database_url(database_url: str) -> str:
    """The session's database: PostgreSQL when reachable (always in CI), otherwise SQLite."""
    return database_url


@pytest.fixture(scope="module")
def running_stack(
    e2e_database_url: str,
    mqtt_broker: tuple[str, int],
    tmp_path_factory: pytest.TempPathFactory,
    repo_root: Path,
) -> Iterator[LocalStack]:
    """One core + ingest pair for a test module (the slow tests start their own)."""
    stack = new_stack(e2e_database_url, mqtt_broker, tmp_path_factory.mktemp("e2e"), repo_root)
    try:
        stack.prepare()
        stack.start()
    except StackError:
        stack.stop()
        raise
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def admin_token(running_stack: LocalStack) -> str:
    email = f"admin-{uuid.uuid4().hex[:8]}@e2e.local"
    running_stack.create_account(email, ADMIN_PASSWORD, kind="create-admin")
    response = httpx.post(
        f"{running_stack.config.core_url}/api/admin/login", json={"email": email, "password": ADMIN_PASSWORD}
    )
    response.raise_for_status()
    return str(response.json()["data"]["access_token"])


@pytest.fixture(scope="module")
async def events_db(e2e_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(e2e_database_url)
    try:
        yield engine
    finally:
        await engine.dispose()
