"""Renter login by one-time code, sessions (logout, devices) and account deletion, on the real database.

The outbox is delivered by an OutboxWorker joined to the test's transaction, through the console provider
writing its DEV-ONLY file; the code is read back from there, as a developer would."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from chargeghar_core.auth.models import User
from chargeghar_core.notifications.models import NotificationOutbox
from chargeghar_core.notifications.providers import ConsoleProvider, Providers
from chargeghar_core.notifications.worker import OutboxWorker
from chargeghar_core.renters.models import OtpChallenge, RenterProfile, RenterSession
from chargeghar_core.stations.models import Station
from rentals_support import FakeIngest, RentalsClient, add_package, add_renter, add_station, new_bank_serial
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


def new_phone() -> str:
    return "+97798" + f"{uuid.uuid4().int % 10**8:08d}"


class Inbox:
    def __init__(self, client: RentalsClient, maker: async_sessionmaker[AsyncSession], path: Path) -> None:
        console = ConsoleProvider(output=str(path), production=False)
        self.path = path
        self.worker = OutboxWorker(
            maker, Providers(push=console, sms=console, email=console), client.app.state.settings
        )

    async def deliver(self) -> list[dict[str, Any]]:
        await self.worker.run_once()
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines()]

    async def code_for(self, destination: str) -> str:
        messages = [
            m for m in await self.deliver() if m["destination"] == destination and m["event"] == "otp_code"
        ]
        assert messages, f"no code sent to {destination}"
        body = messages[-1]["body"]
        return next(
            word.strip(".")
            for word in body.split()
            if word.strip(".").isdigit() and len(word.strip(".")) == 6
        )


@pytest.fixture
def inbox(
    client: RentalsClient, test_sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> Inbox:
    return Inbox(client, test_sessionmaker, tmp_path / "dev-notifications.jsonl")


async def otp_login(client: RentalsClient, inbox: Inbox, destination: str, **extra: Any) -> dict[str, Any]:
    sent = await client.http.post("/api/renters/otp/request", json={"destination": destination})
    assert sent.status_code == 202, sent.text
    code = await inbox.code_for(destination)
    answer = await client.http.post(
        "/api/renters/otp/verify", json={"destination": destination, "code": code, **extra}
    )
    assert answer.status_code == 200, answer.text
    data: dict[str, Any] = answer.json()["data"]
    return data


def bearer(data: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {data['access_token']}"}


async def test_first_code_login_registers_and_the_code_is_single_use(
    client: RentalsClient, inbox: Inbox, session: AsyncSession
) -> None:
    phone = new_phone()
    sent = await client.http.post("/api/renters/otp/request", json={"destination": phone, "language": "ne"})
    assert sent.status_code == 202
    assert sent.json()["data"] == {
        "destination": phone[:4] + "*" * 8 + phone[-2:],
        "channel": "sms",
        "expires_in_s": 300,
    }
    code = await inbox.code_for(phone)
    nepali = [m for m in await inbox.deliver() if m["destination"] == phone][-1]
    assert "कोड" in nepali["body"] and nepali["DEV_ONLY"]

    # At rest only a keyed hash; the outbox row keeps neither the code nor the address once sent.
    challenge = (await session.scalars(select(OtpChallenge).order_by(OtpChallenge.created_at.desc()))).first()
    assert challenge is not None and code not in challenge.code_hash and len(challenge.code_hash) == 64
    row = (
        await session.scalars(select(NotificationOutbox).where(NotificationOutbox.event == "otp_code"))
    ).all()
    assert all(r.sealed_secret is None and r.destination is None and r.status == "SENT" for r in row)

    wrong = "000000" if code != "000000" else "111111"
    refused = await client.http.post("/api/renters/otp/verify", json={"destination": phone, "code": wrong})
    assert refused.status_code == 401 and refused.json()["error"] == "INVALID_CODE"
    ok = await client.http.post(
        "/api/renters/otp/verify",
        json={"destination": phone, "code": code, "device_name": "Pixel", "platform": "android"},
    )
    assert ok.status_code == 200, ok.text
    data = ok.json()["data"]
    assert (
        data["new_account"] is True and data["renter"]["phone"] == phone and data["renter"]["email"] is None
    )
    again = await client.http.post("/api/renters/otp/verify", json={"destination": phone, "code": code})
    assert again.status_code == 401

    # The second login by code finds the same account.
    second = await otp_login(client, inbox, phone)
    assert second["new_account"] is False and second["renter"]["id"] == data["renter"]["id"]


async def test_no_enumeration_and_suspended_accounts_get_no_code(
    client: RentalsClient, inbox: Inbox, session: AsyncSession
) -> None:
    known = new_phone()
    user_id = await add_renter(session, phone=known)
    profile = await session.get(RenterProfile, user_id)
    assert profile is not None
    profile.status = "SUSPENDED"
    await session.commit()
    unknown = new_phone()
    a = await client.http.post("/api/renters/otp/request", json={"destination": known})
    b = await client.http.post("/api/renters/otp/request", json={"destination": unknown})
    assert a.status_code == b.status_code == 202
    assert a.json()["message"] == b.json()["message"]
    assert set(a.json()["data"]) == set(b.json()["data"])
    delivered = await inbox.deliver()
    assert [m["destination"] for m in delivered if m["event"] == "otp_code"] == [unknown]


async def test_wrong_codes_kill_the_challenge_and_requests_are_rate_limited(
    client: RentalsClient, inbox: Inbox
) -> None:
    email = f"otp-{uuid.uuid4().hex[:8]}@test.example"
    assert (
        await client.http.post("/api/renters/otp/request", json={"destination": email})
    ).status_code == 202
    code = await inbox.code_for(email)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    for _ in range(5):
        answer = await client.http.post("/api/renters/otp/verify", json={"destination": email, "code": wrong})
        assert answer.status_code == 401
    late = await client.http.post("/api/renters/otp/verify", json={"destination": email, "code": code})
    assert late.status_code == 401  # five wrong tries spent it, even the right code fails now

    statuses = [
        (await client.http.post("/api/renters/otp/request", json={"destination": email})).status_code
        for _ in range(3)
    ]
    assert statuses == [202, 202, 429]  # 3 per destination and window, the first one included
    bad = await client.http.post("/api/renters/otp/request", json={"destination": "not a phone"})
    assert bad.status_code == 400


async def test_logout_devices_and_push_token(
    client: RentalsClient, inbox: Inbox, session: AsyncSession
) -> None:
    phone = new_phone()
    first = await otp_login(client, inbox, phone, device_name="Phone A", platform="android")
    second = await otp_login(client, inbox, phone, device_name="Tablet B", platform="ios")
    registered = await client.http.post(
        "/api/renters/me/devices", headers=bearer(first), json={"push_token": "fcm-token-aaaaaaaaaaaa"}
    )
    assert registered.status_code == 200 and registered.json()["data"]["push_enabled"] is True
    listed = await client.http.get("/api/renters/me/devices", headers=bearer(first))
    devices = {d["device_name"]: d for d in listed.json()["data"]}
    assert set(devices) == {"Phone A", "Tablet B"}
    assert devices["Phone A"]["current"] is True and devices["Tablet B"]["current"] is False

    # Logging out one device refuses its refresh token; the other keeps working.
    assert (await client.http.post("/api/renters/logout", headers=bearer(first))).status_code == 200
    refused = await client.http.post("/api/renters/refresh", json={"refresh": first["refresh_token"]})
    assert refused.status_code == 401
    rotated = await client.http.post("/api/renters/refresh", json={"refresh": second["refresh_token"]})
    assert rotated.status_code == 200, rotated.text
    rows = (await session.scalars(select(RenterSession).where(RenterSession.device_name == "Phone A"))).all()
    assert rows[0].revoked_at is not None and rows[0].push_token is None

    # Revoking a device by id from another one.
    tablet = devices["Tablet B"]["id"]
    fresh = rotated.json()["data"]
    gone = await client.http.delete(f"/api/renters/me/devices/{tablet}", headers=bearer(fresh))
    assert gone.status_code == 200
    missing = await client.http.delete(f"/api/renters/me/devices/{tablet}", headers=bearer(fresh))
    assert missing.status_code == 404 and missing.json()["error"] == "DEVICE_NOT_FOUND"
    after = await client.http.post("/api/renters/refresh", json={"refresh": fresh["refresh_token"]})
    assert after.status_code == 401


async def test_preferences_and_account_deletion(
    client: RentalsClient, inbox: Inbox, session: AsyncSession
) -> None:
    phone = new_phone()
    data = await otp_login(client, inbox, phone)
    prefs = await client.http.put(
        "/api/renters/me/notifications", headers=bearer(data), json={"language": "ne", "sms": False}
    )
    assert prefs.json()["data"] == {"language": "ne", "push": True, "sms": False, "email": True}
    assert (await client.http.get("/api/renters/me/notifications", headers=bearer(data))).json()["data"][
        "language"
    ] == "ne"

    deleted = await client.http.delete("/api/renters/me", headers=bearer(data))
    assert deleted.status_code == 200, deleted.text
    user_id = uuid.UUID(data["renter"]["id"])
    user = await session.get(User, user_id, populate_existing=True)
    profile = await session.get(RenterProfile, user_id, populate_existing=True)
    assert user is not None and profile is not None
    assert user.email.endswith("@deleted.renters.invalid") and not user.is_active
    assert profile.phone is None and profile.deleted_at is not None
    assert (
        await client.http.post("/api/renters/refresh", json={"refresh": data["refresh_token"]})
    ).status_code == 401
    # The farewell goes to the number the account had, then the address is erased from the outbox.
    farewell = [m for m in await inbox.deliver() if m["event"] == "account_deleted"]
    assert [m["destination"] for m in farewell] == [phone]
    # The number is free again: a new login by code makes a new account.
    again = await otp_login(client, inbox, phone)
    assert again["new_account"] is True and again["renter"]["id"] != data["renter"]["id"]


async def test_rental_start_notifies_and_deletion_is_refused_while_it_is_open(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest, inbox: Inbox
) -> None:
    bank = new_bank_serial()
    imei = await add_station(client, session, {1: bank, 2: None}, battery={1: 100})
    fake_ingest.cabinet(imei, {1: bank, 2: None})
    renter = await add_renter(session, balance_paisa=10_000)
    package = await add_package(session, price_paisa=5000, duration_minutes=60)
    station_id = await session.scalar(select(Station.id).where(Station.imei == imei))
    started = await client.start(renter, station_id=station_id, package_id=package)
    assert started.status_code == 201, started.text
    code = started.json()["data"]["code"]

    # The outbox row was written with the rental; the push goes to every live device with a token.
    session.add(
        RenterSession(user_id=renter, device_name="Phone", platform="android", push_token="tok-123456789")
    )
    await session.commit()
    pushed = [m for m in await inbox.deliver() if m["event"] == "rental_started"]
    assert len(pushed) == 1 and pushed[0]["destination"] == "tok-123456789" and code in pushed[0]["body"]
    assert pushed[0]["channel"] == "push"

    refused = await client.http.delete("/api/renters/me", headers=client.renter_headers(renter))
    assert refused.status_code == 409 and refused.json()["error"] == "RENTAL_OPEN"
