"""Device provisioning end to end: the REAL core (served over HTTP on the session database) keeps the
registry, the REAL ingest asks it at connect and at the broker's login check.

- `registry` policy (the production default): an unknown IMEI gets no credentials and is pending in core;
  once approved it gets them; once revoked it loses them and /api/emqx/auth refuses its login.
- core unreachable: a cached approval keeps working, an unknown IMEI gets nothing (fail closed).
- `open` policy (development/test): credentials at once, the station is approved in core in the background.
- takeovers (two sessions fighting over one client id) are counted.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
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
from chargeghar_ingest.credentials import derive_credentials
from chargeghar_ingest.settings import IngestSettings
from chargeghar_protocol.signing import device_sign, signed_headers
from fastapi import FastAPI
from ingest_fake_core import HMAC_SECRET, SERVICE_PASSWORD
from ingest_harness import free_tcp_port, make_settings, running_ingest

pytestmark = pytest.mark.postgres

CREDENTIAL_SECRET = "test-credential-secret"


def new_imei() -> str:
    return f"86{random.randrange(10**12, 10**13)}"


def connect_params(imei: str) -> dict[str, str]:
    params = {"uuid": imei, "deviceId": "0", "simUUID": "", "simMobile": ""}
    return {**params, "sign": device_sign(params)}


@dataclass
class RunningCore:
    app: FastAPI
    url: str
    admin: httpx.AsyncClient  # ASGI client with a staff token (statuses checked against the OpenAPI)
    service_email: str

    async def devices(self, status: str | None = None) -> dict[str, dict[str, Any]]:
        params = {"page_size": "200", **({"status": status} if status else {})}
        answer = await self.admin.get("/api/admin/devices", params=params)
        assert answer.status_code == 200, answer.text
        return {item["imei"]: item for item in answer.json()["data"]["items"]}


@asynccontextmanager
async def running_core(database_url: str) -> AsyncIterator[RunningCore]:
    await migrate(DatabaseSettings(url=database_url))
    settings = Settings(
        environment="test",
        log_level="WARNING",
        db=DatabaseSettings(url=database_url),
        jwt=JwtSettings(secret="registry-jwt-secret"),
        hmac=HmacSettings(secret=HMAC_SECRET),
        internal=InternalSettings(rate_limit_per_minute=0),
        redis=RedisSettings(url=None),
        retention=RetentionSettings(enabled=False),
    )
    service_email = f"ingest-{uuid.uuid4().hex[:8]}@test.local"
    await create_account(settings, service_email, SERVICE_PASSWORD, Role.SERVICE)
    app = create_core_app(settings)
    async with app.router.lifespan_context(app):
        port = free_tcp_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        )
        task = asyncio.create_task(server.serve())
        deadline = time.monotonic() + 10
        while not server.started:
            assert not task.done() and time.monotonic() < deadline, "core did not start"
            await asyncio.sleep(0.02)
        staff = app.state.tokens.issue_pair(
            user_id=uuid.uuid4(), role=Role.ADMIN, email="admin@test.local", generation=0
        )
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(
                transport=transport,
                base_url="http://core.test",
                headers={"Authorization": f"Bearer {staff.access_token}"},
            ) as admin:
                yield RunningCore(app, f"http://127.0.0.1:{port}", admin, service_email)
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 10)


@pytest.fixture
async def core(database_url: str) -> AsyncIterator[RunningCore]:
    async with running_core(database_url) as running:
        yield running


def ingest_settings(tmp_path: Path, core: RunningCore | None, **device: Any) -> IngestSettings:
    core_overrides = {"base_url": core.url, "email": core.service_email} if core else {}
    return make_settings(tmp_path, core=core_overrides, device=device)


async def connect(client: httpx.AsyncClient, imei: str) -> dict[str, Any]:
    answer = await client.get("/api/iot/client/con", params=connect_params(imei))
    body: dict[str, Any] = answer.json()
    assert answer.status_code == body["code"]
    return body


async def broker_login(client: httpx.AsyncClient, imei: str) -> str:
    credentials = derive_credentials(CREDENTIAL_SECRET, imei)
    answer = await client.post(
        "/api/emqx/auth",
        json={"clientid": imei, "username": credentials.username, "password": credentials.password},
    )
    assert answer.status_code == 200
    return str(answer.json()["result"])


# ----------------------------------------------------------------------------------------------- policy


def test_production_defaults_to_the_registry_and_development_to_open() -> None:
    strong = "k3Jd9vQ2xZ7mP4tR8wY1nB6cF0hL5sGa"
    production = IngestSettings.model_validate(
        {
            "environment": "production",
            "core": {"password": strong + "1", "hmac_secret": strong + "2"},
            "device": {"credential_secret": strong + "3"},
        }
    )
    assert production.device.provisioning == "registry"
    assert IngestSettings.model_validate({"environment": "development"}).device.provisioning == "open"
    assert IngestSettings.model_validate({"environment": "test"}).device.provisioning == "open"
    explicit = IngestSettings.model_validate({"environment": "test", "device": {"provisioning": "registry"}})
    assert explicit.device.provisioning == "registry"


# --------------------------------------------------------------------------------------------- registry


async def test_unknown_imei_gets_no_credentials_and_is_pending_until_approved_then_revoked(
    tmp_path: Path, core: RunningCore
) -> None:
    imei = new_imei()
    # TTL 0: every connect and login asks core, so the admin's decisions show at once.
    settings = ingest_settings(tmp_path, core, provisioning="registry", registry_cache_ttl_s=0)
    async with running_ingest(settings) as ingest:
        refused = await connect(ingest.client, imei)
        assert refused["code"] == 403
        assert refused["data"] is None
        assert refused["msg"] == "device not registered"
        pending = await core.devices("pending")
        assert pending[imei]["status"] == "pending"
        assert pending[imei]["first_seen_at"] is not None
        # Even with correctly derived credentials (a leaked secret), the broker refuses the login.
        assert await broker_login(ingest.client, imei) == "deny"

        approved = await core.admin.post(f"/api/admin/devices/{imei}/approve", json={"note": "site 7"})
        assert approved.status_code == 200, approved.text
        assert approved.json()["data"]["approved_by"] is not None
        granted = await connect(ingest.client, imei)
        assert granted["code"] == 200
        fields = granted["data"].split(",")
        expected = derive_credentials(CREDENTIAL_SECRET, imei)
        assert fields[0] == imei and fields[4:6] == [expected.username, expected.password]
        assert await broker_login(ingest.client, imei) == "allow"

        revoked = await core.admin.post(f"/api/admin/devices/{imei}/revoke", json={"note": "stolen"})
        assert revoked.status_code == 200, revoked.text
        lost = await connect(ingest.client, imei)
        assert lost["code"] == 403 and lost["data"] is None
        assert await broker_login(ingest.client, imei) == "deny"
        assert (await core.devices("revoked"))[imei]["revoked_at"] is not None
        counters = ingest.runtime.metrics.counters
        assert counters["device_connect_refused_total"] == 2
        assert counters["broker_auth_unregistered_total"] == 2


async def test_registered_imei_connects_at_first_try(tmp_path: Path, core: RunningCore) -> None:
    imei = new_imei()
    created = await core.admin.post("/api/admin/devices", json={"imei": imei, "note": "pre-registered"})
    assert created.status_code == 201, created.text
    assert created.json()["data"]["status"] == "approved"
    again = await core.admin.post("/api/admin/devices", json={"imei": imei})
    assert again.status_code == 409 and again.json()["error"] == "DEVICE_EXISTS"
    settings = ingest_settings(tmp_path, core, provisioning="registry")
    async with running_ingest(settings) as ingest:
        assert (await connect(ingest.client, imei))["code"] == 200
        assert await broker_login(ingest.client, imei) == "allow"
    assert (await core.devices("approved"))[imei]["last_seen_at"] is not None


async def test_core_unreachable_keeps_cached_approvals_and_fails_closed_for_others(
    tmp_path: Path, core: RunningCore
) -> None:
    known, unknown = new_imei(), new_imei()
    assert (await core.admin.post("/api/admin/devices", json={"imei": known})).status_code == 201
    settings = ingest_settings(tmp_path, core, provisioning="registry", registry_cache_ttl_s=0)
    async with running_ingest(settings) as ingest:
        assert (await connect(ingest.client, known))["code"] == 200
        ingest.runtime.settings.core.base_url = "http://127.0.0.1:9"  # core goes away
        assert (await connect(ingest.client, known))["code"] == 200
        assert await broker_login(ingest.client, known) == "allow"
        refused = await connect(ingest.client, unknown)
        assert refused["code"] == 403 and refused["msg"] == "device registry unavailable"
        assert await broker_login(ingest.client, unknown) == "deny"
        assert ingest.runtime.metrics.counters["device_registry_unavailable_total"] >= 4


@pytest.mark.redis
async def test_the_registry_cache_is_shared_through_redis(
    tmp_path: Path, core: RunningCore, redis_url: str, isolated_redis_prefix: str
) -> None:
    imei = new_imei()
    assert (await core.admin.post("/api/admin/devices", json={"imei": imei})).status_code == 201
    redis = {"url": redis_url, "key_prefix": isolated_redis_prefix}
    first = ingest_settings(tmp_path / "a", core, provisioning="registry")
    first = first.model_copy(update={"redis": first.redis.model_copy(update=redis)})
    async with running_ingest(first) as ingest:
        assert (await connect(ingest.client, imei))["code"] == 200
    # Another replica (or a restart) with core down still knows the approval.
    second = ingest_settings(tmp_path / "b", None, provisioning="registry")
    second = second.model_copy(update={"redis": second.redis.model_copy(update=redis)})
    async with running_ingest(second) as ingest:
        assert await broker_login(ingest.client, imei) == "allow"
        assert await broker_login(ingest.client, new_imei()) == "deny"


# ------------------------------------------------------------------------------------------------- open


async def test_open_policy_hands_out_credentials_and_approves_in_core(
    tmp_path: Path, core: RunningCore
) -> None:
    imei = new_imei()
    async with running_ingest(ingest_settings(tmp_path, core)) as ingest:
        assert ingest.runtime.settings.device.provisioning == "open"
        assert (await connect(ingest.client, imei))["code"] == 200
        deadline = time.monotonic() + 10
        while imei not in await core.devices("approved"):
            assert time.monotonic() < deadline, "the open policy did not register the station in core"
            await asyncio.sleep(0.05)
        assert await broker_login(ingest.client, imei) == "allow"


async def test_open_policy_works_without_core(tmp_path: Path) -> None:
    async with running_ingest(ingest_settings(tmp_path, None)) as ingest:
        assert (await connect(ingest.client, new_imei()))["code"] == 200


# -------------------------------------------------------------------------------------------- takeovers


async def test_client_id_takeovers_are_counted(tmp_path: Path) -> None:
    imei, other = new_imei(), new_imei()
    settings = ingest_settings(tmp_path, None, takeover_window_s=30)
    async with running_ingest(settings) as ingest:
        assert await broker_login(ingest.client, imei) == "allow"
        assert await broker_login(ingest.client, other) == "allow"
        assert ingest.runtime.metrics.counters["emqx_client_takeovers_total"] == 0
        # The same client id logs in again while the first session may still be up: the broker kicks one.
        assert await broker_login(ingest.client, imei) == "allow"
        assert await broker_login(ingest.client, imei) == "allow"
        assert ingest.runtime.metrics.counters["emqx_client_takeovers_total"] == 2
        metrics = await ingest.client.get("/metrics")
        assert "chargeghar_ingest_emqx_client_takeovers_total 2" in metrics.text


# ------------------------------------------------------------------------------------------ core's API


async def test_admin_device_endpoints_validate_and_page(core: RunningCore) -> None:
    missing = await core.admin.post(f"/api/admin/devices/{new_imei()}/approve")
    assert missing.status_code == 404 and missing.json()["error"] == "DEVICE_NOT_FOUND"
    assert (await core.admin.post("/api/admin/devices/bad-imei!/revoke")).status_code == 400
    bad = await core.admin.post("/api/admin/devices", json={"imei": "x" * 33})
    assert bad.status_code == 400 and bad.json()["error"] == "VALIDATION_ERROR"
    assert (await core.admin.get("/api/admin/devices", params={"page_size": 201})).status_code == 400
    assert (await core.admin.get("/api/admin/devices", params={"status": "nope"})).status_code == 400
    for _ in range(3):
        assert (await core.admin.post("/api/admin/devices", json={"imei": new_imei()})).status_code == 201
    page = (await core.admin.get("/api/admin/devices", params={"page_size": 2})).json()["data"]
    assert len(page["items"]) == 2 and page["total"] >= 3
    anonymous = await core.admin.get("/api/admin/devices", headers={"Authorization": ""})
    assert anonymous.status_code == 401


async def test_internal_connect_needs_the_signature(core: RunningCore) -> None:
    imei = new_imei()
    path = f"/api/internal/devices/{imei}/connect"
    service = core.app.state.tokens.issue_pair(
        user_id=uuid.uuid4(), role=Role.SERVICE, email="svc@test.local", generation=0
    )
    bearer = {"Authorization": f"Bearer {service.access_token}", "Content-Type": "application/json"}
    body = b'{"approve":false}'
    unsigned = await core.admin.post(path, content=body, headers=bearer)
    assert unsigned.status_code == 403
    wrong = await core.admin.post(path, content=body, headers={**bearer, **signed_headers("wrong", body)})
    assert wrong.status_code == 403
    assert imei not in await core.devices()
    signed = await core.admin.post(
        path, content=body, headers={**bearer, **signed_headers(HMAC_SECRET, body)}
    )
    assert signed.status_code == 200, signed.text
    assert signed.json()["data"] == {"imei": imei, "status": "pending", "created": True}
    bad_body = b'{"approve":"maybe"}'
    refused = await core.admin.post(
        path, content=bad_body, headers={**bearer, **signed_headers(HMAC_SECRET, bad_body)}
    )
    assert refused.status_code == 400
    # A revoked device stays revoked even when an `open` ingest asks to approve it.
    assert (await core.admin.post(f"/api/admin/devices/{imei}/revoke")).status_code == 200
    approve = b'{"approve":true}'
    again = await core.admin.post(
        path, content=approve, headers={**bearer, **signed_headers(HMAC_SECRET, approve)}
    )
    assert again.json()["data"]["status"] == "revoked"


async def test_approvals_are_cached_for_the_ttl_and_refusals_briefly(
    tmp_path: Path, core: RunningCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import chargeghar_ingest.provisioning as provisioning

    monkeypatch.setattr(provisioning, "NEGATIVE_TTL_S", 0.0)
    imei = new_imei()
    settings = ingest_settings(tmp_path, core, provisioning="registry", registry_cache_ttl_s=300)
    async with running_ingest(settings) as ingest:
        assert (await connect(ingest.client, imei))["code"] == 403
        assert (await core.admin.post(f"/api/admin/devices/{imei}/approve")).status_code == 200
        # The refusal was not kept: the approval counts at the station's next connect.
        assert (await connect(ingest.client, imei))["code"] == 200
        # An approval is trusted for the TTL (documented: a revocation bites within it).
        assert (await core.admin.post(f"/api/admin/devices/{imei}/revoke")).status_code == 200
        assert (await connect(ingest.client, imei))["code"] == 200
