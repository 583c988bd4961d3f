"""Property-based API fuzzing with schemathesis over core's and the ingest's OpenAPI documents.

Every operation gets a bounded number of generated requests (derandomized: the same cases every run),
valid and invalid ones, authenticated as staff or as a renter where the route asks for it. A response
fails the run when it is a 5xx, when its status is not documented for the operation, or when it answers
with a body (or content type) that does not match the documented schema.

Core runs with its own engine on a throwaway database (the generated writes really commit); the ingest
runs without MQTT and without a core to forward to. Bounded in time: ~10 examples per operation.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import schemathesis
from chargeghar_core.app import create_app as create_core_app
from chargeghar_core.auth.accounts import create_account
from chargeghar_core.auth.models import Role
from chargeghar_core.kit.migrate import migrate
from chargeghar_core.settings import (
    DatabaseSettings,
    HmacSettings,
    InternalSettings,
    JwtSettings,
    RedisSettings,
    RetentionSettings,
    Settings,
)
from hypothesis import HealthCheck, settings
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

pytestmark = pytest.mark.timeout(240)

EXAMPLES_PER_OPERATION = int(os.environ.get("FUZZ_EXAMPLES", "10"))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
# status_code_conformance: every status an operation answers is documented for it (OpenAPI that tells the
# truth). negative_data_rejection: input that violates the documented schema (the negative mode and the
# coverage phase, both on by default, generate it: boundary values, wrong types, missing fields) is refused
# with a 4xx. unsupported_method: a method the path does not declare answers 405.
CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    negative_data_rejection,
    unsupported_method,
    response_schema_conformance,
    content_type_conformance,
]

STAFF_EMAIL = "fuzz-admin@test.example"
STAFF_PASSWORD = "fuzz-admin-password"
RENTER_EMAIL = "fuzz-renter@test.example"
RENTER_PASSWORD = "fuzz-renter-password"


# --------------------------------------------------------------------------------------------- core


def _admin_url() -> str:
    return os.environ.get("TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _postgres_reachable() -> bool:
    parts = urlsplit(_admin_url())
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), timeout=0.5):
            return True
    except OSError:
        return False


async def _admin_execute(sql: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(_admin_url(), timeout=5)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


# The schema is collected at import time (schemathesis' lazy fixture loader does not work with this pytest),
# so the app object and the URL of its database are fixed here; the database is created by a fixture
# before the first request starts the app's lifespan.
_FUZZ_DB_NAME = f"cg_fuzz_{os.getpid()}_{uuid.uuid4().hex[:6]}"
_USE_POSTGRES = _postgres_reachable()
_FUZZ_DB_URL = (
    urlunsplit(("postgresql+asyncpg", urlsplit(_admin_url()).netloc, "/" + _FUZZ_DB_NAME, "", ""))
    if _USE_POSTGRES
    else f"sqlite+aiosqlite:///{tempfile.gettempdir()}/{_FUZZ_DB_NAME}.sqlite3"
)
CORE_SETTINGS = Settings(
    environment="test",
    log_level="CRITICAL",
    db=DatabaseSettings(url=_FUZZ_DB_URL),
    jwt=JwtSettings(secret="fuzz-jwt-secret"),
    hmac=HmacSettings(secret="fuzz-hmac-secret"),
    internal=InternalSettings(rate_limit_per_minute=0),
    redis=RedisSettings(url=None),
    retention=RetentionSettings(enabled=False),
)
CORE_APP = create_core_app(CORE_SETTINGS)
core_schema = schemathesis.openapi.from_dict(CORE_APP.openapi())
core_schema.app = CORE_APP


@pytest.fixture(scope="module")
def core_tokens() -> Iterator[dict[str, str]]:
    """A throwaway database (the generated requests commit), a staff user and a renter, their tokens."""
    if _USE_POSTGRES:
        asyncio.run(_admin_execute(f'CREATE DATABASE "{_FUZZ_DB_NAME}"'))
    try:
        asyncio.run(migrate(CORE_SETTINGS.db))
        asyncio.run(create_account(CORE_SETTINGS, STAFF_EMAIL, STAFF_PASSWORD, Role.ADMIN))
        with asgi.get_client(CORE_APP) as client:
            staff = client.post("/api/admin/login", json={"email": STAFF_EMAIL, "password": STAFF_PASSWORD})
            assert staff.status_code == 200, staff.text
            renter = client.post(
                "/api/renters/register", json={"email": RENTER_EMAIL, "password": RENTER_PASSWORD}
            )
            assert renter.status_code in (200, 201), renter.text
        yield {
            "staff": staff.json()["data"]["access_token"],
            "renter": renter.json()["data"]["access_token"],
        }
    finally:
        asgi.shutdown_lifespans()
        if _USE_POSTGRES:
            asyncio.run(_admin_execute(f'DROP DATABASE IF EXISTS "{_FUZZ_DB_NAME}" WITH (FORCE)'))


def _bearer_for(path: str, tokens: dict[str, str]) -> dict[str, str]:
    """Staff routes and the internal endpoint get the staff token, the rest the renter's."""
    role = "staff" if path.startswith(("/api/admin", "/api/internal")) else "renter"
    return {"Authorization": f"Bearer {tokens[role]}"}


# PostgreSQL only: on SQLite a request the fuzzer abandons mid-transaction keeps the file's write lock until
# its connection is collected, and the next case sees "database is locked" (a 503) — a harness artefact.
@pytest.mark.postgres
@core_schema.parametrize()
@FUZZ_SETTINGS
def test_core_api(case: Any, core_tokens: dict[str, str]) -> None:
    headers = _bearer_for(case.path, core_tokens)
    if case.headers and "Authorization" in case.headers:
        headers = {}  # the case tests its own (generated) credentials
    case.call_and_validate(headers=headers, checks=CHECKS)


# --------------------------------------------------------------------------------------------- ingest


def _ingest_app() -> Any:
    from chargeghar_ingest.app import create_app as create_ingest_app
    from chargeghar_ingest.settings import IngestSettings

    spool = Path(tempfile.gettempdir()) / f"cg_fuzz_ingest_{os.getpid()}_{uuid.uuid4().hex[:6]}.sqlite3"
    return create_ingest_app(
        IngestSettings.model_validate(
            {
                "environment": "test",
                "log_level": "CRITICAL",
                "mqtt_enabled": False,
                "forwarder_enabled": False,
                "spool": {"path": spool},
                "core": {"base_url": "http://127.0.0.1:9", "hmac_secret": "fuzz-hmac-secret"},
                "device": {"credential_secret": "fuzz-credential-secret"},
            }
        )
    )


INGEST_APP = _ingest_app()
ingest_schema = schemathesis.openapi.from_dict(INGEST_APP.openapi())
ingest_schema.app = INGEST_APP


@ingest_schema.parametrize()
@FUZZ_SETTINGS
def test_ingest_api(case: Any) -> None:
    case.call_and_validate(checks=CHECKS)
