"""Helpers of the console tests: staff accounts, a logged-in browser-like client, token scraping."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from chargeghar_core.app import create_app
from chargeghar_core.auth.models import Role, User
from chargeghar_core.auth.tokens import hash_password
from chargeghar_core.kit.db import get_db_session
from chargeghar_core.powerbanks.models import PowerBank
from chargeghar_core.pricing.models import RentalPackage
from chargeghar_core.rentals.models import Rental
from chargeghar_core.settings import (
    DatabaseSettings,
    HmacSettings,
    InternalSettings,
    JwtSettings,
    NotificationSettings,
    RedisSettings,
    RentalSettings,
    RetentionSettings,
    Settings,
)
from chargeghar_core.stations.models import Station, StationSlot
from chargeghar_protocol.contract import CommandRequest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

HMAC_SECRET = "console-test-hmac"
JWT_SECRET = "console-test-jwt"
INGEST_URL = "http://ingest.test"

PASSWORD = "console-test-pass"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    """The CSRF token a page carries in its forms."""
    match = _CSRF.search(html)
    assert match is not None, "page has no csrf_token field"
    return match.group(1)


async def add_staff(
    session: AsyncSession, role: Role = Role.ADMIN, *, active: bool = True, password: str = PASSWORD
) -> User:
    user = User(
        id=uuid.uuid4(),
        email=f"{role.value}-{uuid.uuid4().hex[:8]}@console.test",
        full_name=f"Console {role.value}",
        password_hash=hash_password(password),
        role=role.value,
        is_active=active,
        token_generation=0,
    )
    session.add(user)
    await session.commit()
    return user


@dataclass
class ConsoleUser:
    """A logged-in staff member's browser: cookies kept by ``http``; ``csrf`` from the last page."""

    http: httpx.AsyncClient
    user: User
    csrf: str = ""

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        response = await self.http.get(path, **kwargs)
        if response.status_code == 200 and 'name="csrf_token"' in response.text:
            self.csrf = csrf_of(response.text)
        return response

    async def post(
        self, path: str, data: dict[str, Any] | None = None, *, csrf: str | None = None
    ) -> httpx.Response:
        """A form post with the session's CSRF token (``csrf=""`` leaves it out)."""
        form = dict(data or {})
        token = self.csrf if csrf is None else csrf
        if token:
            form["csrf_token"] = token
        return await self.http.post(path, data=form)


def browser(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 51000))
    return httpx.AsyncClient(transport=transport, base_url="http://core.test", timeout=30)


async def log_in(
    http: httpx.AsyncClient, email: str, password: str = PASSWORD, next_path: str = ""
) -> httpx.Response:
    page = await http.get("/console/login")
    assert page.status_code == 200, page.text
    form = {"email": email, "password": password, "csrf_token": csrf_of(page.text)}
    if next_path:
        form["next"] = next_path
    return await http.post("/console/login", data=form)


# --------------------------------------------------------------------------------------------- app


@dataclass
class FakeIngest:
    """The ingest's command API as the console sees it: records commands; answers ``outcome`` (or the
    refusal ``refuse`` such as DEVICE_BUSY) for every station."""

    received: list[dict[str, Any]] = field(default_factory=list)
    outcome: str = "ok"
    refuse: str | None = None

    def app(self) -> FastAPI:
        fake = FastAPI()

        @fake.post("/internal/devices/{imei}/commands")
        async def command(imei: str, request: Request) -> JSONResponse:
            body = CommandRequest.model_validate_json(await request.body())
            self.received.append({"imei": imei, "cmd": body.cmd, "data": body.data})
            if self.refuse is not None:
                error = {"success": False, "message": self.refuse, "error": self.refuse}
                return JSONResponse(error, status_code=409)
            data = {
                "command_id": body.command_id,
                "outcome": self.outcome,
                "reply": {"cmd": body.cmd},
                "elapsed_ms": 5,
            }
            return JSONResponse({"success": True, "message": "Command finished", "data": data})

        return fake


def console_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "test",
        "log_level": "WARNING",
        "db": DatabaseSettings(url=database_url),
        "jwt": JwtSettings(secret=JWT_SECRET),
        "hmac": HmacSettings(secret=HMAC_SECRET),
        "internal": InternalSettings(rate_limit_per_minute=0),
        "redis": RedisSettings(url=None),
        "notifications": NotificationSettings(worker_enabled=False),
        "retention": RetentionSettings(enabled=False),
        "rentals": RentalSettings(ingest_url=INGEST_URL, jobs_enabled=False),
    }
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def running_console(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], ingest: FakeIngest
) -> AsyncIterator[FastAPI]:
    """The core app (lifespan started), request sessions joined to the test's transaction, device
    commands answered by ``ingest`` in-process."""
    app = create_app(settings)

    async def test_db_session() -> AsyncIterator[AsyncSession]:
        async with sessionmaker() as request_session:
            try:
                yield request_session
            except BaseException:
                await request_session.rollback()
                raise
            else:
                await request_session.commit()

    app.dependency_overrides[get_db_session] = test_db_session
    async with app.router.lifespan_context(app):
        await app.state.http_client.aclose()
        app.state.http_client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=ingest.app()), base_url=INGEST_URL
        )
        try:
            yield app
        finally:
            await app.state.http_client.aclose()


# --------------------------------------------------------------------------------------------- fleet


def new_imei() -> str:
    return str(860000000000000 + uuid.uuid4().int % 10**14)


async def add_station(
    session: AsyncSession,
    banks: dict[int, str | None],
    *,
    latitude: float = 27.7172,
    longitude: float = 85.3240,
    status: str = "ONLINE",
    battery: int = 80,
) -> Station:
    """A deployed station with its slots and banks, written directly (the page tests need rows, not the
    event path, which has its own tests)."""
    imei = new_imei()
    station = Station(
        id=uuid.uuid4(),
        imei=imei,
        serial_number=f"CG{imei[-8:]}",
        name=f"Station {imei[-4:]}",
        latitude=latitude,
        longitude=longitude,
        address="Durbar Marg",
        total_slots=len(banks),
        status=status,
        is_deployed=True,
        last_heartbeat=datetime.now(UTC),
    )
    session.add(station)
    await session.flush()
    for slot_number, serial in sorted(banks.items()):
        bank_id = None
        if serial is not None:
            bank = PowerBank(
                id=uuid.uuid4(),
                serial_number=serial,
                model="CG-5000",
                capacity_mah=5000,
                battery_level=battery,
                current_station_id=station.id,
                current_slot_number=slot_number,
                last_seen_at=datetime.now(UTC),
            )
            session.add(bank)
            await session.flush()
            bank_id = bank.id
        session.add(
            StationSlot(
                id=uuid.uuid4(),
                station_id=station.id,
                slot_number=slot_number,
                status="OCCUPIED" if serial else "AVAILABLE",
                battery_level=battery if serial else 0,
                power_bank_id=bank_id,
            )
        )
    await session.commit()
    return station


def new_bank_serial() -> str:
    return str(10_000_000 + uuid.uuid4().int % 89_999_999)


async def add_open_rental(
    session: AsyncSession, station: Station, bank_serial: str, *, slot_number: int = 1, status: str = "ACTIVE"
) -> Rental:
    """An open rental of ``bank_serial`` (a renter, a package), written directly."""
    from sqlalchemy import select

    renter = await add_staff(session, Role.RENTER)
    package = RentalPackage(
        id=uuid.uuid4(), name=f"1 h {uuid.uuid4().hex[:4]}", duration_minutes=60, price_paisa=5000
    )
    session.add(package)
    await session.flush()
    bank_id = await session.scalar(select(PowerBank.id).where(PowerBank.serial_number == bank_serial))
    assert bank_id is not None
    now = datetime.now(UTC)
    rental = Rental(
        id=uuid.uuid4(),
        code=uuid.uuid4().hex[:8].upper(),
        user_id=renter.id,
        package_id=package.id,
        power_bank_id=bank_id,
        power_bank_serial=bank_serial,
        station_id=station.id,
        station_imei=station.imei,
        slot_number=slot_number,
        status=status,
        payment_model="PREPAID",
        package_price_paisa=5000,
        duration_minutes=60,
        popup_command_id=uuid.uuid4().hex,
        popup_requested_at=now,
        started_at=now,
    )
    session.add(rental)
    await session.commit()
    return rental
