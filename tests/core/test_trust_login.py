"""Login throttling (staff and renter), forwarded-for parsing."""

from __future__ import annotations

import os
import uuid
from typing import Any

import httpx
import pytest
from chargeghar_core.auth.models import Role
from chargeghar_core.auth.repository import UserRepository
from chargeghar_core.auth.service import AuthService
from chargeghar_core.auth.tokens import TokenService
from chargeghar_core.kit.db import like_contains
from chargeghar_core.kit.netaddr import client_address, parse_networks
from chargeghar_core.settings import InternalSettings, JwtSettings, LoginSettings, RedisSettings, Settings
from core_support import JWT_SECRET, CoreClient, full_event, new_imei
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request

PASSWORD = "correct horse battery"
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def _staff(session: AsyncSession, email: str) -> None:
    service = AuthService(UserRepository(session), TokenService(JwtSettings(secret=JWT_SECRET)))
    await service.create_user(email=email, password=PASSWORD, role=Role.STAFF)
    await session.commit()


async def _staff_login(client: CoreClient, email: str, password: str, **kwargs: Any) -> httpx.Response:
    return await client.http.post("/api/admin/login", json={"email": email, "password": password}, **kwargs)


@pytest.mark.parametrize("backend", ["in-process", "redis"])
async def test_staff_login_is_throttled_per_account(
    client_factory: Any, session: AsyncSession, backend: str
) -> None:
    email = f"staff-{uuid.uuid4().hex[:8]}@example.com"
    await _staff(session, email)
    redis = RedisSettings(url=REDIS_URL, prefix=f"test:{uuid.uuid4().hex}:") if backend == "redis" else None
    overrides: dict[str, Any] = {"login": LoginSettings(max_failures_per_account=5, window_s=600)}
    if redis is not None:
        overrides["redis"] = redis
    async with client_factory(**overrides) as client:
        statuses = [(await _staff_login(client, email, "wrong")).status_code for _ in range(8)]
        assert statuses == [401] * 5 + [429] * 3
        # Even the right password is refused now: a guesser learns nothing from the lockout.
        locked = await _staff_login(client, email, PASSWORD)
        assert locked.status_code == 429
        assert locked.json()["error"] == "LOGIN_THROTTLED"
        assert 0 < int(locked.headers["Retry-After"]) <= 600
        # Another account from another address is not affected.
        other = f"staff-{uuid.uuid4().hex[:8]}@example.com"
        await _staff(session, other)
        fine = await _staff_login(client, other, PASSWORD, headers={"X-Forwarded-For": "10.9.9.9"})
        assert fine.status_code == 200


async def test_unknown_account_is_throttled_like_a_real_one(client_factory: Any) -> None:
    """No account enumeration: the same 401s, then the same 429, whether the account exists or not."""
    async with client_factory(login=LoginSettings(max_failures_per_account=3)) as client:
        ghost = [(await _staff_login(client, "ghost@example.com", "x")).status_code for _ in range(4)]
    assert ghost == [401, 401, 401, 429]


async def test_staff_login_is_throttled_per_address(client_factory: Any) -> None:
    settings = LoginSettings(max_failures_per_account=100, max_failures_per_address=10)
    async with client_factory(login=settings) as client:
        statuses = [
            (await _staff_login(client, f"user{i}@example.com", "wrong")).status_code for i in range(12)
        ]
    assert statuses == [401] * 10 + [429] * 2


async def test_success_clears_the_account_counter(client_factory: Any, session: AsyncSession) -> None:
    email = f"staff-{uuid.uuid4().hex[:8]}@example.com"
    await _staff(session, email)
    async with client_factory(login=LoginSettings(max_failures_per_account=3)) as client:
        for _ in range(2):
            assert (await _staff_login(client, email, "wrong")).status_code == 401
        assert (await _staff_login(client, email, PASSWORD)).status_code == 200
        for _ in range(2):
            assert (await _staff_login(client, email, "wrong")).status_code == 401
        assert (await _staff_login(client, email, PASSWORD)).status_code == 200


async def test_renter_login_is_throttled(client_factory: Any) -> None:
    async with client_factory(login=LoginSettings(max_failures_per_account=5)) as client:
        email = f"renter-{uuid.uuid4().hex[:8]}@example.com"
        registered = await client.http.post(
            "/api/renters/register", json={"email": email, "password": "long-enough-pass"}
        )
        assert registered.status_code == 201, registered.text
        statuses = [
            (
                await client.http.post("/api/renters/login", json={"login": email, "password": "nope-nope"})
            ).status_code
            for _ in range(7)
        ]
        assert statuses == [401] * 5 + [429] * 2
        locked = await client.http.post(
            "/api/renters/login", json={"login": email, "password": "long-enough-pass"}
        )
        assert locked.status_code == 429 and "Retry-After" in locked.headers


def _request(peer: str, forwarded: str | None) -> Request:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded is not None else []
    return Request({"type": "http", "headers": headers, "client": (peer, 1234), "method": "GET", "path": "/"})


def test_forwarded_for_trusts_only_proxy_hops() -> None:
    spoofed = "1.2.3.4, 203.0.113.7"  # the client wrote 1.2.3.4; our proxy appended what it saw
    assert client_address(_request("10.0.0.5", spoofed), trust_forwarded_for=False) == "10.0.0.5"
    # One trusted hop (the peer): the rightmost entry, never the client's leftmost one.
    assert client_address(_request("10.0.0.5", spoofed), trust_forwarded_for=True) == "203.0.113.7"
    proxies = parse_networks(["10.0.0.0/8"])
    chain = "1.2.3.4, 203.0.113.7, 10.0.0.9"
    assert (
        client_address(_request("10.0.0.5", chain), trust_forwarded_for=True, trusted_proxies=proxies)
        == "203.0.113.7"
    )
    # A request that did not come through our proxies: its header is ignored.
    assert (
        client_address(_request("198.51.100.1", chain), trust_forwarded_for=True, trusted_proxies=proxies)
        == "198.51.100.1"
    )


async def test_internal_gate_ignores_a_spoofed_leftmost_forwarded_for(client_factory: Any) -> None:
    internal = InternalSettings(
        allowed_cidrs=["127.0.0.1/32"], trust_forwarded_for=True, rate_limit_per_minute=0
    )
    async with client_factory(internal=internal, client_host="10.0.0.5") as client:
        answer = await client.http.post(
            "/api/internal/stations/data",
            json={},
            headers={**client.auth(), "X-Forwarded-For": "127.0.0.1, 203.0.113.7"},
        )
    assert answer.status_code == 403
    assert answer.json()["error"] == "IP_NOT_ALLOWED"


def test_like_patterns_escape_wildcards() -> None:
    assert like_contains("50%_off\\") == "%50\\%\\_off\\\\%"


async def test_admin_station_search_treats_wildcards_literally(client: CoreClient) -> None:
    imei = new_imei()
    assert (await client.sync(full_event(imei, {1: None}))).status_code == 200
    staff = client.auth(Role.STAFF)
    everything = await client.http.get("/api/admin/stations", params={"search": "%"}, headers=staff)
    assert everything.status_code == 200, everything.text
    assert everything.json()["data"]["total"] == 0  # no station name contains a literal "%"
    own = await client.http.get("/api/admin/stations", params={"search": imei}, headers=staff)
    assert own.json()["data"]["total"] == 1


@pytest.mark.parametrize("weak", ["dev-secret", "x", "CHANGE-ME", "replace-with-32+-random-characters!!"])
@pytest.mark.parametrize("name", ["jwt", "hmac", "previous"])
def test_core_production_refuses_each_weak_secret(name: str, weak: str) -> None:
    strong = "k3Jd9vQ2xZ7mP4tR8wY1nB6cF0hL5sGa"
    values: dict[str, Any] = {
        "environment": "production",
        "jwt": {"secret": strong + "1"},
        "hmac": {"secret": strong + "2", "previous_secrets": [strong + "3"]},
        "payments": {"sandbox_enabled": False},
    }
    Settings.model_validate(values)
    if name == "previous":
        values["hmac"]["previous_secrets"] = [strong + "3", weak]
    else:
        values[name]["secret"] = weak
    with pytest.raises(ValidationError):
        Settings.model_validate(values)
