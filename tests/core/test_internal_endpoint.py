"""POST /api/internal/stations/data: every answer code of contract.md §2 and the legacy payload."""

from __future__ import annotations

import base64
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from chargeghar_core.auth.models import Role
from chargeghar_core.powerbanks.models import PowerBank
from chargeghar_core.stations.models import Station, StationSlot, SyncLog
from chargeghar_protocol.signing import request_signature
from core_support import INTERNAL_DATA, JWT_SECRET, CoreClient, full_event, new_bank_serial, new_imei
from jose import jwt
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

LEGACY_FULL = (Path(__file__).parent / "data" / "legacy_full.json").read_bytes()
LEGACY_IMEI = "864601069946994"


async def _station(session: AsyncSession, imei: str) -> Station:
    row = await session.execute(
        select(Station).where(Station.imei == imei).execution_options(populate_existing=True)
    )
    return row.scalar_one()


async def _slots(session: AsyncSession, station_id: uuid.UUID) -> dict[int, StationSlot]:
    rows = await session.execute(
        select(StationSlot)
        .where(StationSlot.station_id == station_id)
        .execution_options(populate_existing=True)
    )
    return {slot.slot_number: slot for slot in rows.scalars()}


async def _logs(session: AsyncSession, event_id: str) -> list[SyncLog]:
    rows = await session.execute(
        select(SyncLog).where(SyncLog.event_id == event_id).order_by(SyncLog.created_at)
    )
    return list(rows.scalars())


# ------------------------------------------------------------------------------------------- legacy bridge


async def test_legacy_payload_signed_the_legacy_way_is_accepted_and_applied(
    client: CoreClient, session: AsyncSession
) -> None:
    # Exactly the contract's bytes (newlines and indentation included), no X-Event-Id, no observed_at.
    timestamp = str(int(time.time()))
    response = await client.http.post(
        INTERNAL_DATA,
        content=LEGACY_FULL,
        headers={
            "Authorization": f"Bearer {client.token()}",
            "Content-Type": "application/json",
            "X-Timestamp": timestamp,
            "X-Signature": request_signature("test-hmac-secret", LEGACY_FULL, timestamp),
        },
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    data = body["data"]
    assert set(data) == {
        "station_id",
        "station_serial",
        "slots_updated",
        "powerbanks_updated",
        "returns_reconciled",
        "applied",
        "timestamp",
    }
    assert (data["station_serial"], data["slots_updated"], data["powerbanks_updated"]) == (LEGACY_IMEI, 2, 1)
    assert data["applied"] is True and data["returns_reconciled"] == 0

    station = await _station(session, LEGACY_IMEI)
    assert str(station.id) == data["station_id"]
    assert station.is_deployed is False and station.status == "ONLINE" and station.total_slots == 4
    assert station.hardware_info["protocol_version"] == "0xA8"
    assert station.hardware_info["signal_strength"] == "31"
    assert station.last_heartbeat == datetime(2025, 11, 12, 6, 26, 16, 509000, tzinfo=UTC)
    slots = await _slots(session, station.id)
    bank = (
        await session.execute(select(PowerBank).where(PowerBank.serial_number == "40818052"))
    ).scalar_one()
    assert (
        slots[3].power_bank_id == bank.id and slots[3].status == "OCCUPIED" and slots[3].battery_level == 100
    )
    assert slots[1].power_bank_id is None and slots[1].slot_metadata["micro_switch"] == "1"
    assert (bank.current_station_id, bank.current_slot_number, bank.battery_level) == (station.id, 3, 100)
    assert bank.model == "STANDARD" and bank.capacity_mah == 5000
    assert bank.hardware_info["area_code"] == 73

    # The legacy caller's idempotency key is its signature: a replay of the same request is a duplicate.
    replay = await client.http.post(
        INTERNAL_DATA, content=LEGACY_FULL, headers=dict(response.request.headers)
    )
    assert replay.status_code == 200
    assert replay.json()["data"] == {**data, "duplicate": True}


# ------------------------------------------------------------------------------------------- 401 / 403


async def test_missing_or_malformed_bearer_is_401(client: CoreClient) -> None:
    body = full_event(new_imei(), {1: None})
    no_token = await client.http.post(INTERNAL_DATA, json=body)
    assert no_token.status_code == 401
    assert no_token.json() == {"success": False, "message": "Missing bearer token", "error": "UNAUTHORIZED"}
    garbage = await client.http.post(INTERNAL_DATA, json=body, headers={"Authorization": "Bearer not.a.jwt"})
    assert garbage.status_code == 401 and garbage.json()["error"] == "UNAUTHORIZED"


async def test_expired_token_is_401_not_403(client: CoreClient) -> None:
    past = int(time.time()) - 3600
    claims = {"sub": str(uuid.uuid4()), "role": "service", "type": "access", "jti": "x", "gen": 0,
              "iss": "chargeghar-core", "iat": past - 60, "exp": past}  # fmt: skip
    token = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    response = await client.http.post(
        INTERNAL_DATA, json=full_event(new_imei(), {1: None}), headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401
    assert response.json()["message"] == "Token expired"


async def test_refresh_token_is_not_an_access_token(client: CoreClient) -> None:
    pair = client.app.state.tokens.issue_pair(
        user_id=uuid.uuid4(), role=Role.SERVICE, email="s@x", generation=0
    )
    response = await client.http.post(
        INTERNAL_DATA, json={}, headers={"Authorization": f"Bearer {pair.refresh_token}"}
    )
    assert response.status_code == 401


async def test_non_staff_caller_is_403_forbidden(client: CoreClient) -> None:
    response = await client.post_signed(INTERNAL_DATA, full_event(new_imei(), {1: None}), role=Role.RENTER)
    assert response.status_code == 403
    assert response.json()["error"] == "FORBIDDEN"


# ------------------------------------------------------------------------------------------- signature


async def test_missing_signature_headers_is_403_missing_headers(client: CoreClient) -> None:
    response = await client.http.post(
        INTERNAL_DATA, json=full_event(new_imei(), {1: None}), headers=client.auth()
    )
    assert response.status_code == 403
    assert response.json()["error"] == "MISSING_HEADERS"


async def test_non_integer_timestamp_is_400_invalid_timestamp(client: CoreClient) -> None:
    raw = b'{"type":"status"}'
    headers = {
        **client.auth(),
        "X-Timestamp": "12.5",
        "X-Signature": request_signature("test-hmac-secret", raw, "1"),
    }
    response = await client.http.post(INTERNAL_DATA, content=raw, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"] == "INVALID_TIMESTAMP"


async def test_old_timestamp_is_403_invalid_signature(client: CoreClient) -> None:
    response = await client.post_signed(
        INTERNAL_DATA, full_event(new_imei(), {1: None}), timestamp=int(time.time()) - 301
    )
    assert response.status_code == 403
    assert response.json()["error"] == "INVALID_SIGNATURE"


async def test_wrong_secret_is_403_invalid_signature(client: CoreClient) -> None:
    response = await client.post_signed(
        INTERNAL_DATA, full_event(new_imei(), {1: None}), secret="other-secret"
    )
    assert response.status_code == 403
    assert response.json()["error"] == "INVALID_SIGNATURE"


async def test_signature_is_checked_over_the_raw_bytes_not_a_reserialised_body(client: CoreClient) -> None:
    compact = b'{"type":"status","timestamp":1,"device":{"imei":"1","status":"ONLINE"}}'
    spaced = b'{"type": "status", "timestamp": 1, "device": {"imei": "1", "status": "ONLINE"}}'
    timestamp = str(int(time.time()))
    headers = {
        **client.auth(),
        "Content-Type": "application/json",
        "X-Timestamp": timestamp,
        "X-Signature": request_signature("test-hmac-secret", compact, timestamp),
    }
    response = await client.http.post(INTERNAL_DATA, content=spaced, headers=headers)
    assert response.status_code == 403
    assert response.json()["error"] == "INVALID_SIGNATURE"


async def test_signature_must_be_standard_base64_of_the_mac(client: CoreClient) -> None:
    raw = b"{}"
    timestamp = str(int(time.time()))
    good = request_signature("test-hmac-secret", raw, timestamp)
    urlsafe = base64.urlsafe_b64encode(base64.b64decode(good)).decode().rstrip("=")
    headers = {**client.auth(), "X-Timestamp": timestamp, "X-Signature": urlsafe}
    response = await client.http.post(INTERNAL_DATA, content=raw, headers=headers)
    assert response.status_code == 403


# ------------------------------------------------------------------------------------------- body errors


async def test_body_not_json_is_400_invalid_json(client: CoreClient) -> None:
    response = await client.post_signed(INTERNAL_DATA, b'{"type": "full", ')
    assert response.status_code == 400
    assert response.json()["error"] == "INVALID_JSON"


async def test_unknown_type_is_400_invalid_type(client: CoreClient) -> None:
    response = await client.post_signed(
        INTERNAL_DATA, {"type": "teleport", "timestamp": 1, "device": {"imei": "1"}}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "INVALID_TYPE"
    missing = await client.post_signed(INTERNAL_DATA, {"timestamp": 1, "device": {"imei": "1"}})
    assert missing.json()["error"] == "INVALID_TYPE"


async def test_schema_errors_are_400_with_field_paths(client: CoreClient) -> None:
    event = full_event(new_imei(), {1: None, 2: new_bank_serial()})
    del event["slots"][1]["slot_number"]
    event["power_banks"][0]["status"] = "LOST"
    response = await client.post_signed(INTERNAL_DATA, event)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "VALIDATION_ERROR"
    assert "slots.1.slot_number" in body["details"]
    assert "power_banks.0.status" in body["details"]


async def test_rejected_event_is_recorded_in_the_sync_log(client: CoreClient, session: AsyncSession) -> None:
    event_id = uuid.uuid4().hex
    response = await client.post_signed(
        INTERNAL_DATA, {"type": "teleport", "device": {"imei": "7"}}, event_id=event_id
    )
    assert response.status_code == 400
    [log] = await _logs(session, event_id)
    assert (log.outcome, log.event_type, log.station_key) == ("FAILED", "teleport", "7")
    assert log.error is not None and "INVALID_TYPE" in log.error


# ------------------------------------------------------------------------------------------- idempotency


async def test_same_event_id_is_applied_once_and_answered_as_duplicate(
    client: CoreClient, session: AsyncSession
) -> None:
    imei = new_imei()
    event_id = uuid.uuid4().hex
    first = await client.sync(full_event(imei, {1: new_bank_serial(), 2: None}), event_id=event_id)
    # Same id, different content (a different signature too): still the same logical event, not applied.
    second = await client.sync(full_event(imei, {1: None, 2: None}), event_id=event_id)

    assert first.status_code == second.status_code == 200
    assert first.json()["data"].get("duplicate") is None
    assert second.json()["data"] == {**first.json()["data"], "duplicate": True}
    station = await _station(session, imei)
    slots = await _slots(session, station.id)
    assert slots[1].power_bank_id is not None, "the duplicate must not have been applied"
    assert [log.outcome for log in await _logs(session, event_id)] == ["SUCCESS", "DUPLICATE"]


async def test_event_id_in_the_body_is_the_key_when_no_header(client: CoreClient) -> None:
    event = {**full_event(new_imei(), {1: None}), "event_id": uuid.uuid4().hex}
    first = await client.post_signed(INTERNAL_DATA, event)
    time.sleep(1.01)  # a new timestamp, so a new signature: only the body's event_id can match
    second = await client.post_signed(INTERNAL_DATA, event)
    assert second.json()["data"]["duplicate"] is True
    assert first.json()["data"]["station_id"] == second.json()["data"]["station_id"]


# ------------------------------------------------------------------------------------------- staleness


async def test_older_snapshot_after_newer_is_recorded_stale_and_not_applied(
    client: CoreClient, session: AsyncSession
) -> None:
    imei = new_imei()
    bank = new_bank_serial()
    newer = datetime.now(UTC)
    older = newer - timedelta(seconds=30)
    applied = await client.sync(full_event(imei, {1: None, 2: bank}, observed_at=newer.isoformat()))
    stale_id = uuid.uuid4().hex
    stale = await client.sync(
        full_event(imei, {1: bank, 2: None}, observed_at=older.isoformat()), event_id=stale_id
    )

    assert applied.json()["data"]["applied"] is True
    assert stale.status_code == 200
    assert stale.json()["data"]["applied"] is False
    station = await _station(session, imei)
    slots = await _slots(session, station.id)
    assert slots[1].power_bank_id is None and slots[2].power_bank_id is not None
    assert station.observed_at == newer
    assert [log.outcome for log in await _logs(session, stale_id)] == ["STALE"]


# ------------------------------------------------------------------------------------------- reconciliation


async def test_bank_that_moved_to_another_station_leaves_its_old_slot(
    client: CoreClient, session: AsyncSession
) -> None:
    first_imei, second_imei = new_imei(), new_imei()
    bank = new_bank_serial()
    await client.sync(full_event(first_imei, {1: None, 2: bank}))
    moved = await client.sync(full_event(second_imei, {1: bank, 2: None}))
    assert moved.status_code == 200, moved.text

    first = await _station(session, first_imei)
    second = await _station(session, second_imei)
    first_slots = await _slots(session, first.id)
    second_slots = await _slots(session, second.id)
    assert first_slots[2].power_bank_id is None and first_slots[2].status == "AVAILABLE"
    row = await session.execute(
        select(PowerBank).where(PowerBank.serial_number == bank).execution_options(populate_existing=True)
    )
    power_bank = row.scalar_one()
    assert second_slots[1].power_bank_id == power_bank.id
    assert (power_bank.current_station_id, power_bank.current_slot_number) == (second.id, 1)


async def test_slots_and_banks_missing_from_a_snapshot_are_reconciled(
    client: CoreClient, session: AsyncSession
) -> None:
    imei = new_imei()
    banks = {number: new_bank_serial() for number in range(1, 5)}
    await client.sync(full_event(imei, dict(banks)))
    # Slot 1 still holds its bank; slots 2-4 are not listed at all (cabinet still has 4 slots).
    await client.sync(full_event(imei, {1: banks[1]}, total_slots=4))

    station = await _station(session, imei)
    slots = await _slots(session, station.id)
    assert sorted(slots) == [1, 2, 3, 4]
    assert slots[1].power_bank_id is not None
    assert all(slots[n].power_bank_id is None and slots[n].status == "AVAILABLE" for n in (2, 3, 4))
    rows = await session.execute(
        select(PowerBank.serial_number, PowerBank.current_station_id).where(
            PowerBank.serial_number.in_(list(banks.values()))
        )
    )
    located = dict(rows.all())
    assert located[banks[1]] == station.id
    assert [located[banks[n]] for n in (2, 3, 4)] == [None, None, None]

    # The cabinet now reports 2 slots: slots 3 and 4 no longer exist.
    await client.sync(full_event(imei, {1: banks[1], 2: None}, total_slots=2))
    assert sorted(await _slots(session, station.id)) == [1, 2]


async def test_unknown_bank_gets_its_model_from_the_prefix_table(
    client: CoreClient, session: AsyncSession
) -> None:
    staff = {"Authorization": f"Bearer {client.token(Role.ADMIN)}"}
    created = await client.http.post(
        "/api/admin/powerbank-models",
        json={"serial_prefix": "9911", "model": "CG-20K", "capacity_mah": 20000},
        headers=staff,
    )
    assert created.status_code == 201, created.text
    await client.sync(full_event(new_imei(), {1: "99110001", 2: "12345678"}))
    rows = await session.execute(
        select(PowerBank.serial_number, PowerBank.model, PowerBank.capacity_mah).where(
            PowerBank.serial_number.in_(["99110001", "12345678"])
        )
    )
    assert sorted(rows.all()) == [("12345678", "STANDARD", 5000), ("99110001", "CG-20K", 20000)]


async def test_overlong_identifiers_are_400_not_500(client: CoreClient) -> None:
    event = full_event("9" * 65, {1: "1" * 70})
    response = await client.post_signed(INTERNAL_DATA, event)
    assert response.status_code == 400
    assert set(response.json()["details"]) == {
        "device.imei",
        "slots.0.power_bank_serial",
        "power_banks.0.serial_number",
    }
