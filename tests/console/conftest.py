"""Console test fixtures: the session's database migrated once, each test isolated by an outer transaction
that is rolled back (request sessions join it in savepoint mode), the core app with an in-process fake
ingest (device commands), and ``console_login`` for a logged-in staff browser.

Fixtures: ``session`` (the test's own DB session), ``fake_ingest`` (:class:`FakeIngest`: ``received``,
``outcome``, ``refuse``), ``console_app`` (the FastAPI app), ``console_login(role)`` →
:class:`ConsoleUser` (``get``, ``post`` with the CSRF token, ``user``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from chargeghar_core.auth.models import Role
from console_support import (
    ConsoleUser,
    FakeIngest,
    add_staff,
    browser,
    console_settings,
    log_in,
    running_console,
)
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


@pytest.fixture
def fake_ingest() -> FakeIngest:
    return FakeIngest()


@pytest.fixture
async def console_app(
    database_url: str, test_sessionmaker: async_sessionmaker[AsyncSession], fake_ingest: FakeIngest
) -> AsyncIterator[FastAPI]:
    async with running_console(console_settings(database_url), test_sessionmaker, fake_ingest) as app:
        yield app


@pytest.fixture
async def api(console_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A plain client of the same app (for the JSON API side by side with the console)."""
    async with browser(console_app) as http:
        yield http


@pytest.fixture
async def console_login(
    console_app: FastAPI, session: AsyncSession
) -> AsyncIterator[Callable[..., Awaitable[ConsoleUser]]]:
    """``await console_login(Role.VIEWER)``: a new staff account of that role, logged in its own browser."""
    opened: list[httpx.AsyncClient] = []

    async def login(role: Role = Role.ADMIN) -> ConsoleUser:
        user = await add_staff(session, role)
        http = browser(console_app)
        opened.append(http)
        response = await log_in(http, user.email)
        assert response.status_code == 303, response.text
        console_user = ConsoleUser(http=http, user=user)
        page = await console_user.get("/console/")
        assert page.status_code == 200, page.text
        return console_user

    yield login
    for http in opened:
        await http.aclose()
