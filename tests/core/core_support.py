"""Helpers of the core tests: settings, an API client with signed requests, event builders."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from chargeghar_core.app import create_app
from chargeghar_core.auth.models import Role
from chargeghar_core.iot import event_writes
from chargeghar_core.iot.recorder import FailureRecorder
from chargeghar_core.iot.repository import ClaimResult, ProcessedEventRepository
from chargeghar_core.iot.snapshots import SnapshotRepository
from chargeghar_core.kit.db import get_db_session
from chargeghar_core.rentals import station_events as rental_events
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
from chargeghar_protocol.signing import signed_headers
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

HMAC_SECRET = "test-hmac-secret"
JWT_SECRET = "test-jwt-secret"

INTERNAL_DATA = "/api/internal/stations/data"
INTERNAL_BATCH = "/api/internal/stations/data/batch"


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "test",
        "log_level": "WARNING",
        "db": DatabaseSettings(url=database_url),
        "jwt": JwtSettings(secret=JWT_SECRET),
        "hmac": HmacSettings(secret=HMAC_SECRET),
        "internal": InternalSettings(rate_limit_per_minute=0),
        "redis": RedisSettings(url=None),
        # Background jobs write through their own connections: next to a test that keeps its rollback
        # transaction open they would wait on SQLite's write lock (and app shutdown with them). The tests of
        # those jobs switch them on.
        "notifications": NotificationSettings(worker_enabled=False),
        "retention": RetentionSettings(enabled=False),
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class CoreClient:
    """An API client plus the helpers tests need: tokens and signed internal requests."""

    app: FastAPI
    http: httpx.AsyncClient
    service_user_id: uuid.UUID = field(default_factory=uuid.uuid4)

    def token(self, role: Role = Role.SERVICE, user_id: uuid.UUID | None = None) -> str:
        pair = self.app.state.tokens.issue_pair(
            user_id=user_id or self.service_user_id,
            role=role,
            email=f"{role.value}@test.example",
            generation=0,
        )
        return str(pair.access_token)

    def auth(self, role: Role = Role.SERVICE) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role)}"}

    async def post_signed(
        self,
        path: str,
        body: bytes | dict[str, Any],
        *,
        event_id: str | None = None,
        timestamp: int | None = None,
        secret: str = HMAC_SECRET,
        role: Role = Role.SERVICE,
        extra_headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        raw = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", **self.auth(role)}
        headers.update(signed_headers(secret, raw, timestamp=timestamp))
        if event_id is not None:
            headers["X-Event-Id"] = event_id
        headers.update(extra_headers or {})
        return await self.http.post(path, content=raw, headers=headers)

    async def sync(self, event: dict[str, Any], *, event_id: str | None = None) -> httpx.Response:
        return await self.post_signed(INTERNAL_DATA, event, event_id=event_id or uuid.uuid4().hex)


@asynccontextmanager
async def running_client(
    settings: Settings,
    *,
    sessionmaker: async_sessionmaker[AsyncSession] | None = None,
    client_host: str = "127.0.0.1",
) -> AsyncIterator[CoreClient]:
    """Start the app's lifespan; with ``sessionmaker`` every request session (and the failure recorder)
    uses it instead of the app's own engine."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        if sessionmaker is not None:
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
            app.state.failure_recorder = FailureRecorder(sessionmaker)
        transport = httpx.ASGITransport(app=app, client=(client_host, 51000))
        async with httpx.AsyncClient(transport=transport, base_url="http://core.test") as http:
            yield CoreClient(app=app, http=http)


def ask_rentals_always(monkeypatch: pytest.MonkeyPatch, **replacements: Any) -> None:
    """Make every full / returned event go to the rentals domain (as if each bank it names had an open
    rental) and replace the rentals functions the iot path calls (``reconcile_snapshot``,
    ``complete_open_rental``, ``settle_command_result`` of ``chargeghar_core.rentals.station_events``)."""
    claim = ProcessedEventRepository.claim_and_lock
    claim_many = ProcessedEventRepository.claim_and_lock_many

    async def claim_and_lock(self: ProcessedEventRepository, *args: Any, **kwargs: Any) -> ClaimResult:
        return dataclasses.replace(await claim(self, *args, **kwargs), rented=None)

    async def claim_and_lock_many(self: ProcessedEventRepository, *args: Any, **kwargs: Any) -> Any:
        claimed, stations, _rented = await claim_many(self, *args, **kwargs)
        return claimed, stations, None

    monkeypatch.setattr(ProcessedEventRepository, "claim_and_lock", claim_and_lock)
    monkeypatch.setattr(ProcessedEventRepository, "claim_and_lock_many", claim_and_lock_many)
    # The one-statement snapshot path checks for open rentals itself: off, so snapshots reach the rentals.
    monkeypatch.setattr(SnapshotRepository, "set_based", False)
    # Likewise a single return, which otherwise looks for its bank's open rental inside its own statement.
    monkeypatch.setattr(event_writes, "RETURNS_PROBE_RENTALS", False)
    for name, replacement in replacements.items():
        assert hasattr(rental_events, name), name
        monkeypatch.setattr(rental_events, name, replacement)


class StatementCounter:
    """Counts SQL statements sent on a connection (``before_cursor_execute``)."""

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.active = False

    def __call__(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if self.active:
            self.statements.append(statement)

    @property
    def count(self) -> int:
        return len(self.statements)


async def sent_by(counter: StatementCounter, send: Callable[[], Awaitable[Any]]) -> list[str]:
    """The statements ``send`` (a request expected to succeed) sent, in order."""
    counter.statements.clear()
    counter.active = True
    try:
        response = await send()
    finally:
        counter.active = False
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True
    return list(counter.statements)


def on_postgres(client: CoreClient) -> bool:
    return str(client.app.state.settings.db.url).startswith("postgresql")


# --------------------------------------------------------------------------------------------- events


def new_imei() -> str:
    return str(860000000000000 + uuid.uuid4().int % 10**14)


def new_bank_serial() -> str:
    return str(10_000_000 + uuid.uuid4().int % 89_999_999)


def full_event(
    imei: str,
    banks: dict[int, str | None],
    *,
    total_slots: int | None = None,
    observed_at: str | None = None,
    battery: int = 80,
    status: str = "ONLINE",
) -> dict[str, Any]:
    """A ``full`` event: ``banks`` maps slot number → bank serial (None = empty slot)."""
    slots = []
    power_banks = []
    for slot_number, serial in sorted(banks.items()):
        slot: dict[str, Any] = {
            "slot_number": slot_number,
            "status": "OCCUPIED" if serial else "AVAILABLE",
            "battery_level": battery if serial else 0,
            "slot_metadata": {"micro_switch": "0" if serial else "1", "solenoid_valve": "0", "lock_count": 0},
        }
        if serial:
            slot["power_bank_serial"] = serial
            power_banks.append(
                {
                    "serial_number": serial,
                    "status": "AVAILABLE",
                    "battery_level": battery,
                    "current_slot": slot_number,
                    "hardware_info": {"temperature": 24, "voltage": 50, "current": 2},
                }
            )
        slots.append(slot)
    event_body: dict[str, Any] = {
        "type": "full",
        "timestamp": int(time.time()),
        "device": {"serial_number": imei, "imei": imei, "signal_strength": "28", "status": status},
        "station": {"serial_number": imei, "total_slots": total_slots or len(banks)},
        "slots": slots,
        "power_banks": power_banks,
    }
    if observed_at is not None:
        event_body["observed_at"] = observed_at
    return event_body


def status_event(
    imei: str, status: str, *, observed_at: str | None = None, **hardware: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "status",
        "timestamp": int(time.time()),
        "device": {"serial_number": imei, "imei": imei, "status": status, "hardware_info": hardware},
    }
    if observed_at is not None:
        body["observed_at"] = observed_at
    return body


def returned_event(imei: str, serial: str, slot_number: int, *, battery: int | None = 95) -> dict[str, Any]:
    return {
        "type": "returned",
        "timestamp": int(time.time()),
        "device": {"serial_number": imei, "imei": imei},
        "return_event": {
            "power_bank_serial": serial,
            "slot_number": slot_number,
            "battery_level": battery,
            "returned_at": "2025-11-12T06:26:40Z",
            "condition": "NORMAL",
            "hardware_info": {},
        },
    }
