"""Operations API: viewer role, power-bank administration, the staff audit log, the dashboard and staff
device commands (through the fake ingest of rentals_support; the real ingest is in
test_operations_real_ingest.py)."""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from chargeghar_core.audit.models import StaffAuditEntry
from chargeghar_core.audit.service import mask_secrets, record_staff_action
from chargeghar_core.auth.models import Role
from chargeghar_core.auth.tokens import TokenClaims
from chargeghar_core.cli import register
from chargeghar_core.kit.db import utcnow
from chargeghar_core.powerbanks.models import PowerBank
from chargeghar_core.stations.models import Station
from rentals_support import FakeIngest, RentalsClient, add_package, add_renter, add_station, new_bank_serial
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession


def _claims(role: Role = Role.ADMIN, email: str = "ops@test.example") -> TokenClaims:
    return TokenClaims(
        user_id=uuid.uuid4(),
        role=role,
        email=email,
        token_type="access",
        jti=uuid.uuid4().hex,
        generation=0,
        expires_at=utcnow(),
    )


async def _station_id(session: AsyncSession, imei: str) -> uuid.UUID:
    value = await session.scalar(select(Station.id).where(Station.imei == imei))
    assert value is not None
    return value


async def _bank_id(session: AsyncSession, serial: str) -> uuid.UUID:
    value = await session.scalar(select(PowerBank.id).where(PowerBank.serial_number == serial))
    assert value is not None
    return value


async def _audit(session: AsyncSession, **where: Any) -> list[StaffAuditEntry]:
    query = select(StaffAuditEntry).execution_options(populate_existing=True)
    for key, value in where.items():
        query = query.where(getattr(StaffAuditEntry, key) == value)
    return list((await session.scalars(query.order_by(StaffAuditEntry.created_at))).all())


# --------------------------------------------------------------------------------------------- roles


async def test_viewer_reads_every_admin_get_and_is_refused_every_action(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    serial = new_bank_serial()
    imei = await add_station(client, session, {1: serial, 2: None})
    fake_ingest.cabinet(imei, {1: serial, 2: None})
    station_id, bank_id = await _station_id(session, imei), await _bank_id(session, serial)
    viewer = client.staff_headers(Role.VIEWER)
    renter = client.renter_headers(uuid.uuid4())

    for path in (
        "/api/admin/dashboard",
        "/api/admin/audit-log",
        "/api/admin/powerbanks",
        f"/api/admin/powerbanks/{bank_id}",
        "/api/admin/stations",
        f"/api/admin/stations/{station_id}",
        "/api/admin/devices",
    ):
        answer = await client.http.get(path, headers=viewer)
        assert answer.status_code == 200, (path, answer.text)
        refused = await client.http.get(path, headers=renter)
        assert refused.status_code == 403 and refused.json()["error"] == "FORBIDDEN", path

    actions = [
        ("PATCH", f"/api/admin/powerbanks/{bank_id}", {"status": "maintenance", "reason": "viewer tries"}),
        ("POST", f"/api/admin/stations/{station_id}/commands", {"cmd": "check"}),
        ("PATCH", f"/api/admin/stations/{station_id}", {"name": "Renamed by a viewer"}),
        ("POST", "/api/admin/powerbank-models", {"serial_prefix": "77", "model": "X", "capacity_mah": 1}),
        ("POST", f"/api/admin/devices/{imei}/revoke", {}),
    ]
    for method, path, body in actions:
        for headers in (viewer, renter):
            answer = await client.http.request(method, path, json=body, headers=headers)
            assert answer.status_code == 403, (method, path, answer.text)
            assert answer.json()["error"] == "FORBIDDEN"
    assert fake_ingest.commands_for(imei) == []  # nothing reached the station
    bank = await session.get(PowerBank, bank_id, populate_existing=True)
    assert bank is not None and bank.status == "AVAILABLE"
    assert await _audit(session, target_id=str(bank_id)) == []


async def test_create_admin_makes_viewers_who_can_log_in(
    client: RentalsClient, session: AsyncSession
) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["create-admin", "--email", "v@example.com", "--role", "viewer"])
    assert args.role == "viewer" and Role(args.role) is Role.VIEWER
    from chargeghar_core.auth.models import User
    from chargeghar_core.auth.tokens import hash_password

    email = f"viewer-{uuid.uuid4().hex[:8]}@test.example"
    session.add(
        User(id=uuid.uuid4(), email=email, password_hash=hash_password("long-enough-pw"), role="viewer")
    )
    await session.commit()
    login = await client.http.post("/api/admin/login", json={"email": email, "password": "long-enough-pw"})
    assert login.status_code == 200, login.text
    token = login.json()["data"]["access_token"]
    assert (
        await client.http.get("/api/admin/dashboard", headers={"Authorization": f"Bearer {token}"})
    ).is_success


# --------------------------------------------------------------------------------------------- audit


def test_secrets_are_masked_at_any_depth() -> None:
    masked = mask_secrets(
        {
            "ssid": "cafe",
            "password": "hunter2",
            "nested": {"api_key": "k", "list": [{"wifi_pwd": "p", "ok": 1}], "Secret": None},
            "refresh_token": "t",
            "idempotency_key": "rental:1",
        }
    )
    assert masked == {
        "ssid": "cafe",
        "password": "***",
        "nested": {"api_key": "***", "list": [{"wifi_pwd": "***", "ok": 1}], "Secret": None},
        "refresh_token": "***",
        "idempotency_key": "rental:1",
    }


async def test_record_staff_action_joins_the_callers_transaction_and_the_log_filters(
    client: RentalsClient, session: AsyncSession
) -> None:
    actor = _claims(email="auditor@test.example")
    station = uuid.uuid4()
    await record_staff_action(
        session,
        actor=actor,
        action="wallet.adjust",
        target_type="wallet",
        target_id="w1",
        station_id=station,
        details={"amount": 500, "otp": {"token": "abc"}},
        outcome="applied",
        elapsed_ms=1.5,
    )
    # Flushed, not committed: a rollback of the caller's transaction takes the row away.
    savepoint = await session.begin_nested()
    await record_staff_action(session, actor=actor, action="wallet.adjust", target_type="wallet")
    await savepoint.rollback()
    rows = await _audit(session, actor_id=actor.user_id)
    assert len(rows) == 1
    assert rows[0].details == {"amount": 500, "otp": {"token": "***"}}
    await session.commit()

    headers = client.staff_headers(Role.VIEWER)
    by_actor = await client.http.get(
        "/api/admin/audit-log", params={"actor_email": "AUDITOR@test.example"}, headers=headers
    )
    assert by_actor.status_code == 200, by_actor.text
    page = by_actor.json()["data"]
    assert page["total"] == 1 and page["items"][0]["action"] == "wallet.adjust"
    assert page["items"][0]["elapsed_ms"] == 1.5
    by_prefix = await client.http.get(
        "/api/admin/audit-log",
        params={"action": "wallet", "station_id": str(station), "since": "2000-01-01T00:00:00Z"},
        headers=headers,
    )
    assert by_prefix.json()["data"]["total"] == 1
    future = await client.http.get(
        "/api/admin/audit-log",
        params={"actor_id": str(actor.user_id), "since": "2999-01-01T00:00:00+05:45"},
        headers=headers,
    )
    assert future.json()["data"]["total"] == 0
    for params in ({"since": "2026-01-01T00:00:00"}, {"page": 10_001}, {"page_size": 201}, {"action": "A B"}):
        bad = await client.http.get("/api/admin/audit-log", params=params, headers=headers)
        assert bad.status_code == 400 and bad.json()["error"] == "VALIDATION_ERROR", params


async def test_station_configuration_and_device_decisions_are_audited(
    client: RentalsClient, session: AsyncSession
) -> None:
    imei = await add_station(client, session, {1: None})
    station_id = await _station_id(session, imei)
    admin = client.staff_headers(Role.ADMIN)
    answer = await client.http.patch(
        f"/api/admin/stations/{station_id}", json={"is_maintenance": True}, headers=admin
    )
    assert answer.status_code == 200, answer.text
    rows = await _audit(session, station_id=station_id)
    assert [(row.action, row.details) for row in rows] == [
        ("station.maintenance", {"changes": {"is_maintenance": True}})
    ]
    registered = await client.http.post("/api/admin/devices", json={"imei": imei[:-1] + "9"}, headers=admin)
    if registered.status_code == 201:
        revoked = await client.http.post(f"/api/admin/devices/{imei[:-1]}9/revoke", json={}, headers=admin)
        assert revoked.status_code == 200, revoked.text
        actions = [row.action for row in await _audit(session, target_id=imei[:-1] + "9")]
        assert actions == ["device.register", "device.revoke"]


async def test_pricing_and_model_changes_through_the_api_are_audited_like_the_consoles(
    client: RentalsClient, session: AsyncSession
) -> None:
    """The audit rows are written by the services both the API and the console call (one rule, one row)."""
    admin = client.staff_headers(Role.ADMIN)
    policy = await client.http.post(
        "/api/admin/late-fee-policies",
        json={
            "name": "Audit policy",
            "rate_multiplier_bp": 10000,
            "grace_minutes": 5,
            "daily_cap_paisa": 100,
        },
        headers=admin,
    )
    assert policy.status_code == 201, policy.text
    policy_id = policy.json()["data"]["id"]
    package = await client.http.post(
        "/api/admin/packages",
        json={
            "name": "Audit hour",
            "duration_minutes": 60,
            "price_paisa": 4000,
            "late_fee_policy_id": policy_id,
        },
        headers=admin,
    )
    assert package.status_code == 201, package.text
    package_id = package.json()["data"]["id"]
    patched = await client.http.patch(
        f"/api/admin/packages/{package_id}", json={"price_paisa": 4500}, headers=admin
    )
    assert patched.status_code == 200, patched.text
    prefix = "AU" + uuid.uuid4().hex[:6].upper()
    model = await client.http.post(
        "/api/admin/powerbank-models",
        json={"serial_prefix": prefix, "model": "AUDIT", "capacity_mah": 10000},
        headers=admin,
    )
    assert model.status_code == 201, model.text
    taken = await client.http.post(
        "/api/admin/powerbank-models",
        json={"serial_prefix": prefix, "model": "AUDIT", "capacity_mah": 10000},
        headers=admin,
    )
    assert taken.status_code == 409 and taken.json()["error"] == "PREFIX_TAKEN"
    assert [row.action for row in await _audit(session, target_id=policy_id)] == ["late_fee_policy.create"]
    package_rows = await _audit(session, target_id=package_id)
    assert [(row.action, row.details) for row in package_rows][1] == ("package.update", {"price_paisa": 4500})
    assert [row.action for row in package_rows] == ["package.create", "package.update"]
    model_rows = await _audit(session, target_id=model.json()["data"]["id"])
    assert [(row.action, row.details["serial_prefix"]) for row in model_rows] == [
        ("powerbank_model.create", prefix)
    ]
    assert all(row.actor_role == "admin" for row in package_rows + model_rows)


# --------------------------------------------------------------------------------------------- power banks


async def test_power_bank_detail_and_operator_status_are_audited_in_the_same_transaction(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    serial = new_bank_serial()
    imei = await add_station(client, session, {1: serial, 2: None}, battery=64)
    bank_id = await _bank_id(session, serial)
    admin = client.staff_headers(Role.ADMIN)

    detail = await client.http.get(f"/api/admin/powerbanks/{bank_id}", headers=admin)
    assert detail.status_code == 200, detail.text
    data = detail.json()["data"]
    assert data["serial_number"] == serial and data["condition"] == "HEALTHY" and data["rentable"] is True
    assert data["location"]["where"] == "in_slot" and data["location"]["slot_number"] == 1
    assert data["location"]["station_id"] == str(await _station_id(session, imei))
    assert data["battery_history"][0]["battery_level"] == 64
    assert data["battery_history"][0]["source"] == "last_report"
    assert data["rentals"] == [] and data["operator_actions"] == []

    retire = await client.http.patch(
        f"/api/admin/powerbanks/{bank_id}",
        json={"status": "retired", "reason": "Swollen cell"},
        headers=admin,
    )
    assert retire.status_code == 200, retire.text
    retired = retire.json()["data"]
    assert retired["status"] == "RETIRED" and retired["rentable"] is False
    assert retired["operator_actions"][0]["details"]["reason"] == "Swollen cell"
    rows = await _audit(session, target_id=str(bank_id))
    assert [(r.action, r.outcome, r.details["from"], r.details["to"]) for r in rows] == [
        ("power_bank.status", "applied", "AVAILABLE", "RETIRED")
    ]
    # RETIRED survives the device's next snapshot.
    from rentals_support import full_event

    assert (await client.sync(full_event(imei, {1: serial, 2: None}))).status_code == 200
    bank = await session.get(PowerBank, bank_id, populate_existing=True)
    assert bank is not None and bank.status == "RETIRED"

    not_lost = await client.http.patch(
        f"/api/admin/powerbanks/{bank_id}", json={"status": "found", "reason": "It was here"}, headers=admin
    )
    assert not_lost.status_code == 409 and not_lost.json()["error"] == "BANK_NOT_LOST"
    lost = await client.http.patch(
        f"/api/admin/powerbanks/{bank_id}",
        json={"status": "lost", "reason": "Not in the cabinet"},
        headers=admin,
    )
    assert lost.json()["data"]["status"] == "LOST"
    found = await client.http.patch(
        f"/api/admin/powerbanks/{bank_id}",
        json={"status": "found", "reason": "Back at the desk"},
        headers=admin,
    )
    assert found.status_code == 200 and found.json()["data"]["status"] == "AVAILABLE"
    same = await client.http.patch(
        f"/api/admin/powerbanks/{bank_id}",
        json={"status": "available", "reason": "Double click"},
        headers=admin,
    )
    assert same.status_code == 200
    outcomes = [row.outcome for row in await _audit(session, target_id=str(bank_id))]
    assert outcomes == ["applied", "applied", "applied", "unchanged"]

    for body in (
        {"status": "rented", "reason": "nope"},
        {"status": "lost"},
        {"status": "lost", "reason": ""},
    ):
        bad = await client.http.patch(f"/api/admin/powerbanks/{bank_id}", json=body, headers=admin)
        assert bad.status_code == 400 and bad.json()["error"] == "VALIDATION_ERROR", body
    missing = await client.http.get(f"/api/admin/powerbanks/{uuid.uuid4()}", headers=admin)
    assert missing.status_code == 404


async def test_a_bank_on_an_open_rental_keeps_its_status_and_shows_the_rental(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    serial = new_bank_serial()
    imei = await add_station(client, session, {1: serial})
    fake_ingest.cabinet(imei, {1: serial})
    renter = await add_renter(session, balance_paisa=10_000)
    package = await add_package(session)
    started = await client.start(renter, station_id=await _station_id(session, imei), package_id=package)
    assert started.status_code == 201, started.text
    bank_id = await _bank_id(session, serial)
    admin = client.staff_headers(Role.ADMIN)

    refused = await client.http.patch(
        f"/api/admin/powerbanks/{bank_id}",
        json={"status": "maintenance", "reason": "check it"},
        headers=admin,
    )
    assert refused.status_code == 409 and refused.json()["error"] == "BANK_ON_RENTAL"
    assert await _audit(session, target_id=str(bank_id)) == []
    data = (await client.http.get(f"/api/admin/powerbanks/{bank_id}", headers=admin)).json()["data"]
    assert data["status"] == "RENTED" and data["location"]["where"] == "on_rental"
    assert data["location"]["rental_id"] == started.json()["data"]["id"]
    assert [rental["status"] for rental in data["rentals"]] == ["ACTIVE"]
    assert any(reading["source"] == "rental_start" for reading in data["battery_history"])

    # The staff popup of that bank (by slot of the station it left, or by serial) is refused, never sent.
    station_id = await _station_id(session, imei)
    sent_before = len(fake_ingest.commands_for(imei))
    popup = await client.http.post(
        f"/api/admin/stations/{station_id}/commands", json={"cmd": "popup_sn", "data": serial}, headers=admin
    )
    assert popup.status_code == 409 and popup.json()["error"] == "BANK_ON_RENTAL"
    assert len(fake_ingest.commands_for(imei)) == sent_before


# --------------------------------------------------------------------------------------------- dashboard


async def test_dashboard_counts_in_a_constant_number_of_queries(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    admin = client.staff_headers(Role.VIEWER)
    before = (await client.http.get("/api/admin/dashboard", headers=admin)).json()["data"]
    serials = [new_bank_serial() for _ in range(3)]
    imei = await add_station(client, session, {1: serials[0], 2: serials[1], 3: serials[2]})
    fake_ingest.cabinet(imei, {1: serials[0], 2: serials[1], 3: serials[2]})
    renter = await add_renter(session, balance_paisa=10_000)
    package = await add_package(session, price_paisa=5000)
    assert (
        await client.start(renter, station_id=await _station_id(session, imei), package_id=package)
    ).is_success
    await add_station(client, session, {1: None})  # a second online station, without banks
    answer = await client.http.get("/api/admin/dashboard", headers=admin)
    assert answer.status_code == 200, answer.text
    after = answer.json()["data"]
    assert after["stations"]["online"] - before["stations"]["online"] == 2
    assert after["banks"]["rentable"] - before["banks"]["rentable"] == 2
    assert after["banks"]["rented"] - before["banks"]["rented"] == 1
    assert after["rentals"]["active"] - before["rentals"]["active"] == 1
    assert (
        after["money_today"]["rental_revenue_paisa"] - before["money_today"]["rental_revenue_paisa"] == 5000
    )
    assert after["money_today"]["top_ups_paisa"] == before["money_today"]["top_ups_paisa"]
    assert after["sync"]["applied_last_hour"] > before["sync"]["applied_last_hour"]
    assert after["sync"]["parked_events"] is None


async def test_dashboard_uses_five_queries(session: AsyncSession) -> None:
    from chargeghar_core.operations.dashboard import fleet_dashboard

    statements: list[str] = []
    connection = await session.connection()
    from sqlalchemy import event

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(connection.sync_connection, "before_cursor_execute", count)
    try:
        await fleet_dashboard(session)
    finally:
        event.remove(connection.sync_connection, "before_cursor_execute", count)
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 5
    assert await session.scalar(select(func.count()).select_from(Station)) is not None


# --------------------------------------------------------------------------------------------- commands


async def test_staff_commands_answer_the_outcome_or_the_ingests_refusal_and_are_audited(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    serial = new_bank_serial()
    imei = await add_station(client, session, {1: serial, 2: None})
    cabinet = fake_ingest.cabinet(imei, {1: serial, 2: None})
    station_id = await _station_id(session, imei)
    admin = client.staff_headers(Role.STAFF)
    path = f"/api/admin/stations/{station_id}/commands"

    check = await client.http.post(path, json={"cmd": "check"}, headers=admin)
    assert check.status_code == 200, check.text
    assert check.json()["data"]["outcome"] == "ok" and check.json()["data"]["reply"]["holes"]

    wifi = await client.http.post(
        path, json={"cmd": "setWifi", "username": "cafe", "password": "hunter2"}, headers=admin
    )
    assert wifi.status_code == 200, wifi.text
    assert fake_ingest.commands_for(imei, "setWifi")

    popup = await client.http.post(path, json={"cmd": "popup_sn", "data": serial}, headers=admin)
    assert popup.status_code == 200 and popup.json()["data"]["outcome"] == "ok"
    assert cabinet.slots[1] is None

    cabinet.online = False
    offline = await client.http.post(path, json={"cmd": "reboot"}, headers=admin)
    assert offline.status_code == 409 and offline.json()["error"] == "DEVICE_OFFLINE"

    for body in ({"cmd": "popup", "data": "0"}, {"cmd": "volume", "data": "101"}, {"cmd": "load_ad"}):
        bad = await client.http.post(path, json=body, headers=admin)
        assert bad.status_code == 400 and bad.json()["error"] == "VALIDATION_ERROR", body
    assert (
        await client.http.post(
            f"/api/admin/stations/{uuid.uuid4()}/commands", json={"cmd": "check"}, headers=admin
        )
    ).status_code == 404

    rows = await _audit(session, station_id=station_id, action="device.command")
    assert [(row.details["request"]["cmd"], row.outcome) for row in rows] == [
        ("check", "ok"),
        ("setWifi", "ok"),
        ("popup_sn", "ok"),
        ("reboot", "not_sent:DEVICE_OFFLINE"),
    ]
    assert rows[1].details["request"]["password"] == "***"
    assert rows[1].details["request"]["username"] == "cafe"
    assert rows[2].details["power_bank_serial"] == serial
    assert all(row.elapsed_ms is not None and row.actor_role == "staff" for row in rows)
    listed = await client.http.get(
        "/api/admin/audit-log", params={"station_id": str(station_id), "action": "device"}, headers=admin
    )
    assert listed.json()["data"]["total"] == 4
    assert "hunter2" not in listed.text
