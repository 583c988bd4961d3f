"""Renter accounts (register, login by e-mail or phone, rotating refresh, profile, suspension) and the
admin pricing endpoints."""

from __future__ import annotations

import uuid

import pytest
from chargeghar_core.audit.models import StaffAuditEntry
from chargeghar_core.auth.models import Role
from chargeghar_core.rentals.settings import PaymentSettings
from pydantic import ValidationError
from rentals_support import RentalsClient, add_station, new_bank_serial
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession


async def test_register_login_refresh_and_profile(client: RentalsClient) -> None:
    http = client.http
    registered = await http.post(
        "/api/renters/register",
        json={
            "email": "Asha@Example.com",
            "phone": "+977 980-0000001",
            "password": "long-enough",
            "display_name": "Asha",
        },
    )
    assert registered.status_code == 201, registered.text
    renter = registered.json()["data"]["renter"]
    assert (renter["email"], renter["phone"], renter["status"]) == (
        "asha@example.com",
        "+9779800000001",
        "ACTIVE",
    )

    duplicate = await http.post(
        "/api/renters/register", json={"phone": "9779800000001", "password": "long-enough"}
    )
    assert (duplicate.status_code, duplicate.json()["error"]) == (409, "PHONE_TAKEN")

    by_phone = await http.post(
        "/api/renters/login", json={"login": "+9779800000001", "password": "long-enough"}
    )
    by_email = await http.post(
        "/api/renters/login", json={"login": "asha@example.com", "password": "long-enough"}
    )
    wrong = await http.post("/api/renters/login", json={"login": "asha@example.com", "password": "nope-nope"})
    assert by_phone.status_code == by_email.status_code == 200
    assert wrong.status_code == 401

    tokens = by_email.json()["data"]
    rotated = await http.post("/api/renters/refresh", json={"refresh": tokens["refresh_token"]})
    assert rotated.status_code == 200
    reused = await http.post("/api/renters/refresh", json={"refresh": tokens["refresh_token"]})
    assert (reused.status_code, reused.json()["error"]) == (401, "TOKEN_REUSED")

    access = rotated.json()["data"]["access_token"]
    me = await http.patch(
        "/api/renters/me", json={"display_name": "Asha K."}, headers={"Authorization": f"Bearer {access}"}
    )
    assert me.json()["data"]["display_name"] == "Asha K."
    staff_login = await http.post(
        "/api/admin/login", json={"email": "asha@example.com", "password": "long-enough"}
    )
    assert staff_login.status_code == 401, "renters never get into the staff API"


async def test_phone_only_signup_and_suspension(client: RentalsClient, session: AsyncSession) -> None:
    http = client.http
    registered = await http.post(
        "/api/renters/register", json={"phone": "9800000002", "password": "long-enough"}
    )
    assert registered.status_code == 201
    renter = registered.json()["data"]["renter"]
    assert renter["email"] is None and renter["phone"] == "+9800000002"
    refresh = registered.json()["data"]["refresh_token"]

    suspended = await http.put(
        f"/api/admin/renters/{renter['id']}/status",
        json={"status": "SUSPENDED", "reason": "chargeback"},
        headers=client.staff_headers(),
    )
    assert suspended.json()["data"]["status"] == "SUSPENDED"
    assert (await http.post("/api/renters/refresh", json={"refresh": refresh})).status_code == 401
    login = await http.post("/api/renters/login", json={"login": "9800000002", "password": "long-enough"})
    assert login.status_code == 401
    forbidden = await http.put(
        f"/api/admin/renters/{renter['id']}/status",
        json={"status": "ACTIVE"},
        headers=client.staff_headers(Role.SERVICE),
    )
    assert forbidden.status_code == 403
    audit = (
        await session.scalars(select(StaffAuditEntry).where(StaffAuditEntry.target_id == renter["id"]))
    ).all()
    assert [(row.action, row.details) for row in audit] == [
        ("renter.status", {"status_before": "ACTIVE", "status": "SUSPENDED", "reason": "chargeback"})
    ]


async def test_admin_manages_packages_policies_and_station_discounts(
    client: RentalsClient, session: AsyncSession
) -> None:
    from chargeghar_core.stations.models import Station

    admin = client.staff_headers()
    http = client.http
    policy = await http.post(
        "/api/admin/late-fee-policies",
        json={
            "name": "std",
            "rate_multiplier_bp": 15000,
            "grace_minutes": 10,
            "daily_cap_paisa": 50000,
            "is_default": True,
        },
        headers=admin,
    )
    assert policy.status_code == 201
    second = await http.post(
        "/api/admin/late-fee-policies", json={"name": "new default", "is_default": True}, headers=admin
    )
    listed = await http.get("/api/admin/late-fee-policies", headers=admin)
    defaults = [p["name"] for p in listed.json()["data"] if p["is_default"]]
    assert second.status_code == 201 and defaults == ["new default"]

    package = await http.post(
        "/api/admin/packages",
        json={
            "name": "1 hour",
            "duration_minutes": 60,
            "price_paisa": 5000,
            "late_fee_policy_id": policy.json()["data"]["id"],
        },
        headers=admin,
    )
    assert package.status_code == 201, package.text
    package_id = package.json()["data"]["id"]
    bad = await http.post(
        "/api/admin/packages", json={"name": "x", "duration_minutes": 60, "price_paisa": 1.5}, headers=admin
    )
    assert bad.status_code == 400, "money is integer paisa"

    public = await http.get("/api/packages")
    assert package_id in [p["id"] for p in public.json()["data"]]
    await http.patch(f"/api/admin/packages/{package_id}", json={"is_active": False}, headers=admin)
    public = await http.get("/api/packages")
    assert package_id not in [p["id"] for p in public.json()["data"]]

    imei = await add_station(client, session, {1: new_bank_serial()})
    station_id = await session.scalar(select(Station.id).where(Station.imei == imei))
    discount = await http.put(
        f"/api/admin/stations/{station_id}/discount", json={"percent_bp": 1000}, headers=admin
    )
    assert discount.json()["data"]["percent_bp"] == 1000
    assert (await http.delete(f"/api/admin/stations/{station_id}/discount", headers=admin)).status_code == 200
    renter_token = client.renter_headers(uuid.uuid4())
    assert (await http.post("/api/admin/packages", json={}, headers=renter_token)).status_code == 403


def test_payment_settings_refuse_the_sandbox_and_placeholder_secrets_in_production(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CORE_ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="SANDBOX_ENABLED"):
        PaymentSettings()
    monkeypatch.setenv("CORE_PAYMENTS__SANDBOX_ENABLED", "false")
    monkeypatch.setenv("CORE_PAYMENTS__DEFAULT_PROVIDER", "razorpay")
    with pytest.raises(ValidationError, match="RAZORPAY_KEY_SECRET"):
        PaymentSettings()
    monkeypatch.setenv("CORE_PAYMENTS__RAZORPAY_KEY_SECRET", "k" * 24)
    monkeypatch.setenv("CORE_PAYMENTS__RAZORPAY_WEBHOOK_SECRET", "w" * 24)
    assert PaymentSettings().default_provider == "razorpay"
