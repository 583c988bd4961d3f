"""Helpers of the rentals tests: a fake ingest command API on a real HTTP port, the core app with the
rentals domain installed, and builders for renters, packages and stations.

The fake ingest is a test peer for the external contract of contract.md §3: it verifies the HMAC like the
real ingest does and answers like a cabinet would (popup results, `check` snapshots, busy/offline).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import uvicorn
from chargeghar_core.app import create_app
from chargeghar_core.auth.models import Role, User
from chargeghar_core.kit.db import get_db_session, utcnow
from chargeghar_core.payments.models import LedgerKind
from chargeghar_core.payments.wallet import WalletService
from chargeghar_core.pricing.models import LateFeePolicy, RentalPackage
from chargeghar_core.rentals.runtime import RentalRuntime
from chargeghar_core.rentals.settings import PaymentSettings, RentalSettings
from chargeghar_core.renters.models import RenterProfile
from chargeghar_core.settings import (
    DatabaseSettings,
    HmacSettings,
    InternalSettings,
    JwtSettings,
    NotificationSettings,
    RedisSettings,
    RetentionSettings,
    Settings,
)
from chargeghar_protocol.contract import CommandRequest
from chargeghar_protocol.signing import SignatureError, signed_headers, verify_request_signature
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

HMAC_SECRET = "rentals-test-hmac-secret"
JWT_SECRET = "rentals-test-jwt-secret"
INTERNAL_DATA = "/api/internal/stations/data"

PopupMode = Literal["ok", "failed", "timeout", "timeout_ejected", "error_500"]
CheckMode = Literal["ok", "timeout", "offline"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------------- fake ingest


@dataclass
class FakeCabinet:
    """One station as the fake ingest sees it: which bank is in which slot, and how it behaves."""

    slots: dict[int, str | None]
    popup_mode: PopupMode = "ok"
    check_mode: CheckMode = "ok"
    popup_delay_s: float = 0.0
    online: bool = True
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def slot_of(self, serial: str) -> int | None:
        for slot, held in self.slots.items():
            if held == serial:
                return slot
        return None


@dataclass
class FakeIngest:
    base_url: str
    cabinets: dict[str, FakeCabinet]
    received: list[dict[str, Any]]

    def cabinet(self, imei: str, slots: dict[int, str | None], **behaviour: Any) -> FakeCabinet:
        self.cabinets[imei] = FakeCabinet(slots=dict(slots), **behaviour)
        return self.cabinets[imei]

    def commands_for(self, imei: str, cmd: str | None = None) -> list[dict[str, Any]]:
        return [c for c in self.received if c["imei"] == imei and (cmd is None or c["cmd"] == cmd)]


def _envelope(command_id: str, outcome: str, reply: dict[str, Any] | None, elapsed_ms: int) -> JSONResponse:
    data = {"command_id": command_id, "outcome": outcome, "reply": reply, "elapsed_ms": elapsed_ms}
    return JSONResponse({"success": True, "message": "Command finished", "data": data})


def _error(status: int, code: str) -> JSONResponse:
    return JSONResponse({"success": False, "message": code, "error": code}, status_code=status)


def fake_ingest_app(state: FakeIngest) -> FastAPI:
    app = FastAPI()

    @app.post("/internal/devices/{imei}/commands")
    async def command(imei: str, request: Request) -> JSONResponse:
        body = await request.body()
        try:
            verify_request_signature(
                HMAC_SECRET, body, request.headers.get("X-Timestamp"), request.headers.get("X-Signature")
            )
        except SignatureError as exc:
            return _error(exc.http_status, exc.code)
        command = CommandRequest.model_validate_json(body)
        state.received.append(
            {"imei": imei, "cmd": command.cmd, "data": command.data, "id": command.command_id}
        )
        cabinet = state.cabinets.get(imei)
        if cabinet is None or not cabinet.online:
            return _error(409, "DEVICE_OFFLINE")
        if cabinet.lock.locked():
            return _error(409, "DEVICE_BUSY")
        async with cabinet.lock:
            started = time.monotonic()
            if command.cmd == "popup_sn":
                return await _popup(cabinet, command, started)
            if command.cmd == "check":
                return await _check(cabinet, command, started)
            return _envelope(command.command_id, "ok", None, 0)

    return app


async def _popup(cabinet: FakeCabinet, command: CommandRequest, started: float) -> JSONResponse:
    if cabinet.popup_delay_s:
        await asyncio.sleep(cabinet.popup_delay_s)
    slot = cabinet.slot_of(command.data)
    mode = cabinet.popup_mode
    elapsed = int((time.monotonic() - started) * 1000)
    if mode == "error_500":
        return _error(500, "INTERNAL_ERROR")
    if mode in ("timeout", "timeout_ejected"):
        if mode == "timeout_ejected" and slot is not None:
            cabinet.slots[slot] = None  # it came out, but the 0x31 reply was lost
        await asyncio.sleep(min(command.timeout_s, 0.2))
        return _envelope(command.command_id, "timeout", None, elapsed)
    succeeded = mode == "ok" and slot is not None
    if succeeded and slot is not None:
        cabinet.slots[slot] = None
    reply = {
        "cmd": "0x31",
        "type": "popup_by_sn_result",
        "hole": slot or 0,
        "sn": command.data if slot is not None else "0",
        "state": 1 if succeeded else 2,
        "succeeded": succeeded,
    }
    return _envelope(command.command_id, "ok" if succeeded else "failed", reply, elapsed)


async def _check(cabinet: FakeCabinet, command: CommandRequest, started: float) -> JSONResponse:
    if cabinet.check_mode == "offline":
        return _error(409, "DEVICE_OFFLINE")
    if cabinet.check_mode == "timeout":
        await asyncio.sleep(min(command.timeout_s, 0.2))
        return _envelope(command.command_id, "timeout", None, 200)
    holes = [
        {"index": slot, "sn": serial or "0", "has_bank": serial is not None, "soc": 90 if serial else None}
        for slot, serial in sorted(cabinet.slots.items())
    ]
    reply = {"cmd": "0x10", "type": "cabinet_snapshot", "holes": holes}
    return _envelope(command.command_id, "ok", reply, int((time.monotonic() - started) * 1000))


@asynccontextmanager
async def running_server(app: FastAPI) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        if task.done() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@asynccontextmanager
async def running_fake_ingest() -> AsyncIterator[FakeIngest]:
    state = FakeIngest(base_url="", cabinets={}, received=[])
    async with running_server(fake_ingest_app(state)) as base_url:
        state.base_url = base_url
        yield state


# --------------------------------------------------------------------------------------------- core app


def core_settings(
    database_url: str,
    *,
    rentals: RentalSettings | None = None,
    payments: PaymentSettings | None = None,
) -> Settings:
    """Core's settings for the rental tests; ``rentals`` / ``payments``: the nested groups."""
    groups: dict[str, Any] = {}
    if rentals is not None:
        groups["rentals"] = rentals
    if payments is not None:
        groups["payments"] = payments
    return Settings(
        **groups,
        environment="test",
        log_level="WARNING",
        db=DatabaseSettings(url=database_url),
        jwt=JwtSettings(secret=JWT_SECRET),
        hmac=HmacSettings(secret=HMAC_SECRET),
        # The rental tests stamp device observations ahead of the real clock to simulate time passing.
        internal=InternalSettings(rate_limit_per_minute=0, max_future_skew_s=7 * 24 * 3600),
        redis=RedisSettings(url=None),
        # The lifespan's own outbox worker and pruning job would write next to the tests' transactions (and
        # wait on SQLite's write lock); the tests of the outbox drive a worker themselves.
        notifications=NotificationSettings(worker_enabled=False),
        retention=RetentionSettings(enabled=False),
    )


def rental_settings(ingest_url: str, **overrides: Any) -> RentalSettings:
    values: dict[str, Any] = {
        "ingest_url": ingest_url,
        "popup_timeout_s": 1.0,
        "check_timeout_s": 1.0,
        "http_margin_s": 2.0,
        "busy_retry_s": 5.0,
        "start_wait_s": 10.0,
        "jobs_enabled": False,
        "min_battery_level": 20,
        "postpaid_min_balance_paisa": 1000,
    }
    values.update(overrides)
    return RentalSettings(**values)


@dataclass
class RentalsClient:
    app: FastAPI
    http: httpx.AsyncClient
    runtime: RentalRuntime

    def renter_headers(self, user_id: uuid.UUID) -> dict[str, str]:
        pair = self.app.state.tokens.issue_pair(
            user_id=user_id, role=Role.RENTER, email="r@test.example", generation=0
        )
        return {"Authorization": f"Bearer {pair.access_token}"}

    def staff_headers(self, role: Role = Role.ADMIN) -> dict[str, str]:
        pair = self.app.state.tokens.issue_pair(
            user_id=uuid.uuid4(), role=role, email="a@test.example", generation=0
        )
        return {"Authorization": f"Bearer {pair.access_token}"}

    async def start(self, user_id: uuid.UUID, **body: Any) -> httpx.Response:
        payload = {key: str(value) if isinstance(value, uuid.UUID) else value for key, value in body.items()}
        return await self.http.post("/api/rentals", json=payload, headers=self.renter_headers(user_id))

    async def sync(self, event: dict[str, Any], *, event_id: str | None = None) -> httpx.Response:
        raw = json.dumps(event, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", **self.staff_headers(Role.SERVICE)}
        headers.update(signed_headers(HMAC_SECRET, raw))
        headers["X-Event-Id"] = event_id or uuid.uuid4().hex
        return await self.http.post(INTERNAL_DATA, content=raw, headers=headers)


@asynccontextmanager
async def running_rentals_app(
    database_url: str,
    settings: RentalSettings,
    *,
    sessionmaker: async_sessionmaker[AsyncSession] | None = None,
    payment_settings: PaymentSettings | None = None,
) -> AsyncIterator[RentalsClient]:
    """The core app with the rentals domain; with ``sessionmaker`` every session (requests, popup tasks,
    event hooks) joins the test's rolled-back transaction."""
    app = create_app(
        core_settings(database_url, rentals=settings, payments=payment_settings or PaymentSettings())
    )
    runtime: RentalRuntime = app.state.rentals
    if sessionmaker is not None:
        runtime.sessionmaker = sessionmaker
        test_maker = sessionmaker

        async def test_db_session() -> AsyncIterator[AsyncSession]:
            async with test_maker() as request_session:
                try:
                    yield request_session
                except BaseException:
                    await request_session.rollback()
                    raise
                else:
                    await request_session.commit()

        app.dependency_overrides[get_db_session] = test_db_session
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 51000))
        async with httpx.AsyncClient(transport=transport, base_url="http://core.test", timeout=30) as http:
            yield RentalsClient(app=app, http=http, runtime=runtime)


# --------------------------------------------------------------------------------------------- builders


def new_imei() -> str:
    return str(860000000000000 + uuid.uuid4().int % 10**14)


def new_bank_serial() -> str:
    return str(10_000_000 + uuid.uuid4().int % 89_999_999)


def full_event(
    imei: str,
    banks: dict[int, str | None],
    *,
    battery: int | dict[int, int] = 80,
    observed_at: str | None = None,
) -> dict[str, Any]:
    slots: list[dict[str, Any]] = []
    power_banks: list[dict[str, Any]] = []
    for slot_number, serial in sorted(banks.items()):
        level = battery.get(slot_number, 80) if isinstance(battery, dict) else battery
        slot: dict[str, Any] = {
            "slot_number": slot_number,
            "status": "OCCUPIED" if serial else "AVAILABLE",
            "battery_level": level if serial else 0,
            "slot_metadata": {"micro_switch": "0", "solenoid_valve": "0", "lock_count": 0},
        }
        if serial:
            slot["power_bank_serial"] = serial
            power_banks.append(
                {
                    "serial_number": serial,
                    "status": "AVAILABLE",
                    "battery_level": level,
                    "current_slot": slot_number,
                }
            )
        slots.append(slot)
    event: dict[str, Any] = {
        "type": "full",
        "timestamp": int(time.time()),
        "device": {"serial_number": imei, "imei": imei, "status": "ONLINE"},
        "station": {"serial_number": imei, "total_slots": len(banks)},
        "slots": slots,
        "power_banks": power_banks,
    }
    if observed_at is not None:
        event["observed_at"] = observed_at
    return event


def returned_event(
    imei: str, serial: str, slot: int, *, returned_at: str, battery: int = 60
) -> dict[str, Any]:
    return {
        "type": "returned",
        "timestamp": int(time.time()),
        "device": {"serial_number": imei, "imei": imei},
        "return_event": {
            "power_bank_serial": serial,
            "slot_number": slot,
            "battery_level": battery,
            "returned_at": returned_at,
            "condition": "NORMAL",
            "hardware_info": {},
        },
    }


def command_result_event(
    imei: str, *, command_id: str | None, cmd: str, outcome: str, reply: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "type": "command_result",
        "timestamp": int(time.time()),
        "device": {"serial_number": imei, "imei": imei},
        "command_id": command_id,
        "cmd": cmd,
        "outcome": outcome,
        "reply": reply,
        "observed_at": utcnow().isoformat(),
    }


async def add_station(
    client: RentalsClient,
    session: AsyncSession,
    banks: dict[int, str | None],
    *,
    battery: int | dict[int, int] = 80,
) -> str:
    """A deployed, ONLINE station created the real way (a signed `full` event), then deployed by an admin."""
    from chargeghar_core.stations.models import Station

    imei = new_imei()
    response = await client.sync(full_event(imei, banks, battery=battery))
    assert response.status_code == 200, response.text
    await session.execute(
        update(Station).where(Station.imei == imei).values(is_deployed=True, name=f"Test {imei[-4:]}")
    )
    await session.commit()
    return imei


async def add_renter(session: AsyncSession, *, balance_paisa: int = 0, phone: str | None = None) -> uuid.UUID:
    user = User(
        id=uuid.uuid4(),
        email=f"renter-{uuid.uuid4().hex[:10]}@test.example",
        full_name="Test Renter",
        password_hash="not-used",
        role=Role.RENTER.value,
        is_active=True,
        token_generation=0,
    )
    session.add(user)
    await session.flush()
    session.add(RenterProfile(user_id=user.id, phone=phone, display_name="Test Renter", status="ACTIVE"))
    await session.flush()
    if balance_paisa:
        await WalletService(session).credit(
            user.id, balance_paisa, LedgerKind.ADJUSTMENT, f"test-seed:{user.id}", note="test seed"
        )
    await session.commit()
    return user.id


async def add_package(
    session: AsyncSession,
    *,
    price_paisa: int = 5000,
    duration_minutes: int = 60,
    payment_model: str = "PREPAID",
    policy: LateFeePolicy | None = None,
    is_active: bool = True,
) -> uuid.UUID:
    if policy is not None:
        session.add(policy)
        await session.flush()
    package = RentalPackage(
        id=uuid.uuid4(),
        name=f"{duration_minutes} min",
        description="",
        duration_minutes=duration_minutes,
        price_paisa=price_paisa,
        payment_model=payment_model,
        is_active=is_active,
        late_fee_policy_id=policy.id if policy is not None else None,
    )
    session.add(package)
    await session.commit()
    return package.id
