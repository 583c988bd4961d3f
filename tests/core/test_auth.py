"""Staff/service login, refresh rotation and reuse detection (contract.md §1)."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from chargeghar_core.auth.models import Role
from chargeghar_core.auth.repository import UserRepository
from chargeghar_core.auth.service import AuthService
from chargeghar_core.auth.tokens import TokenService
from chargeghar_core.kit.errors import Unauthorized
from chargeghar_core.settings import JwtSettings
from core_support import INTERNAL_DATA, JWT_SECRET, CoreClient, new_imei, status_event
from sqlalchemy.ext.asyncio import AsyncSession

PASSWORD = "correct horse battery"


async def _account(session: AsyncSession, email: str, role: Role, *, active: bool = True) -> None:
    service = AuthService(UserRepository(session), TokenService(JwtSettings(secret=JWT_SECRET)))
    user = await service.create_user(email=email, password=PASSWORD, role=role)
    user.is_active = active
    await session.commit()  # savepoint release: visible to the requests on the same connection


async def _login(client: CoreClient, email: str, password: str = PASSWORD) -> httpx.Response:
    return await client.http.post("/api/admin/login", json={"email": email, "password": password})


async def test_service_account_logs_in_with_json(client: CoreClient, session: AsyncSession) -> None:
    await _account(session, "ingest@example.com", Role.SERVICE)
    response = await _login(client, "Ingest@Example.com")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["success"], body["message"]) == (True, "Admin login successful")
    data = body["data"]
    assert data["user"] == {
        "id": data["user_id"],
        "email": "ingest@example.com",
        "is_staff": True,
        "role": "service",
    }

    # The access token opens the internal endpoint (signature checks follow).
    token = data["access_token"]
    internal = await client.http.post(INTERNAL_DATA, json={}, headers={"Authorization": f"Bearer {token}"})
    assert internal.json()["error"] == "MISSING_HEADERS"


@pytest.mark.parametrize("encoding", ["form", "multipart"])
async def test_admin_logs_in_with_form_data(client: CoreClient, session: AsyncSession, encoding: str) -> None:
    await _account(session, "admin@example.com", Role.ADMIN)
    fields = {"email": "admin@example.com", "password": PASSWORD}
    if encoding == "form":
        response = await client.http.post("/api/admin/login", data=fields)
    else:
        response = await client.http.post(
            "/api/admin/login", files={name: (None, value) for name, value in fields.items()}
        )
    assert response.status_code == 200, response.text
    assert response.json()["data"]["user"]["role"] == "admin"


@pytest.mark.parametrize(
    ("email", "password", "role", "active"),
    [
        ("staff@example.com", "wrong password", Role.STAFF, True),
        ("renter@example.com", PASSWORD, Role.RENTER, True),
        ("gone@example.com", PASSWORD, Role.STAFF, False),
        ("nobody@example.com", PASSWORD, None, True),
    ],
    ids=["bad-password", "renter", "inactive", "unknown"],
)
async def test_login_refusals_are_401(
    client: CoreClient, session: AsyncSession, email: str, password: str, role: Role | None, active: bool
) -> None:
    if role is not None:
        await _account(session, email, role, active=active)
    response = await _login(client, email, password)
    assert response.status_code == 401
    assert response.json() == {
        "success": False,
        "message": "Invalid e-mail or password",
        "error": "UNAUTHORIZED",
    }


async def test_login_body_errors_are_400_with_paths(client: CoreClient) -> None:
    response = await client.http.post("/api/admin/login", json={"email": "a@b.c"})
    assert response.status_code == 400
    assert response.json()["error"] == "VALIDATION_ERROR"
    assert response.json()["details"] == {"password": ["Field required"]}


async def test_refresh_rotates_and_a_reused_token_revokes_the_family(
    client: CoreClient, session: AsyncSession
) -> None:
    await _account(session, "rotate@example.com", Role.SERVICE)
    first = (await _login(client, "rotate@example.com")).json()["data"]

    rotated = await client.http.post("/api/auth/refresh", json={"refresh": first["refresh_token"]})
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()["data"]
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]

    reused = await client.http.post("/api/auth/refresh", json={"refresh": first["refresh_token"]})
    assert reused.status_code == 401 and reused.json()["error"] == "TOKEN_REUSED"
    # The reuse revoked every refresh token of the account, including the one issued by the rotation.
    revoked = await client.http.post("/api/auth/refresh", json={"refresh": second["refresh_token"]})
    assert revoked.status_code == 401 and revoked.json()["message"] == "Refresh token revoked"
    # Logging in again starts a new family.
    fresh = (await _login(client, "rotate@example.com")).json()["data"]
    assert (
        await client.http.post("/api/auth/refresh", json={"refresh": fresh["refresh_token"]})
    ).status_code == 200


async def test_refresh_refuses_garbage_and_access_tokens(client: CoreClient, session: AsyncSession) -> None:
    await _account(session, "mixup@example.com", Role.SERVICE)
    tokens = (await _login(client, "mixup@example.com")).json()["data"]
    garbage = await client.http.post("/api/auth/refresh", json={"refresh": "nope"})
    access = await client.http.post("/api/auth/refresh", json={"refresh": tokens["access_token"]})
    assert (garbage.status_code, access.status_code) == (401, 401)
    assert access.json()["message"] == "Not a refresh token"


async def test_staff_endpoints_need_a_staff_role(client: CoreClient) -> None:
    anonymous = await client.http.get("/api/admin/powerbanks")
    service = await client.http.get("/api/admin/powerbanks", headers=client.auth(Role.SERVICE))
    staff = await client.http.get("/api/admin/powerbanks", headers=client.auth(Role.STAFF))
    assert (anonymous.status_code, service.status_code, staff.status_code) == (401, 403, 200)


async def test_correlation_id_is_echoed(client: CoreClient) -> None:
    response = await client.sync(status_event(new_imei(), "ONLINE"))
    assert response.headers["x-correlation-id"]
    echoed = await client.http.get("/health", headers={"X-Correlation-Id": "abc-123"})
    assert echoed.headers["x-correlation-id"] == "abc-123"


def test_cached_access_token_still_expires() -> None:
    tokens = TokenService(JwtSettings(secret=JWT_SECRET))
    pair = tokens.issue_pair(user_id=uuid.uuid4(), role=Role.SERVICE, email="s@x", generation=0)
    first = tokens.decode(pair.access_token, "access")
    assert tokens.decode(pair.access_token, "access") is first  # served from the verified-token cache
    tokens._verified_access[pair.access_token] = dataclasses.replace(
        first, expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    with pytest.raises(Unauthorized, match="Token expired"):
        tokens.decode(pair.access_token, "access")
    with pytest.raises(Unauthorized):
        tokens.decode(pair.refresh_token, "access")
