"""No password hash, token or password in any log line, even after a failing insert."""

from __future__ import annotations

import uuid

import pytest
import structlog
from chargeghar_core.auth.models import User
from chargeghar_core.auth.tokens import hash_password
from chargeghar_core.kit.db import create_engine, create_sessionmaker
from chargeghar_core.kit.logging import configure_logging
from chargeghar_core.settings import DatabaseSettings
from core_support import CoreClient
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine


async def test_failing_insert_logs_no_hash(
    migrated_engine: AsyncEngine, core_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", json_logs=False)
    logger = structlog.get_logger("test")
    password_hash = hash_password("a very secret password 42")
    email = f"dup-{uuid.uuid4().hex[:8]}@example.com"
    engine = create_engine(DatabaseSettings(url=core_database_url))
    try:
        async with create_sessionmaker(engine)() as session:
            for _ in range(2):
                session.add(
                    User(
                        email=email,
                        full_name="",
                        password_hash=password_hash,
                        role="staff",
                        is_active=True,
                        token_generation=0,
                    )
                )
            with pytest.raises(IntegrityError) as failure:
                await session.flush()
            await session.rollback()
        # What the error handler does with an unexpected failure: the full exception, traceback included.
        try:
            raise failure.value
        except IntegrityError:
            logger.exception("unhandled_error", error_type="IntegrityError")
        logger.info(
            "token_issued", access_token="eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3OCJ9.c2lnbmF0dXJlMTIzNA"
        )
        logger.info("login_attempt", password="a very secret password 42")
    finally:
        await engine.dispose()
    captured = capsys.readouterr()
    output = captured.err + captured.out
    assert "unhandled_error" in output and "IntegrityError" in output
    assert password_hash not in output
    assert password_hash.split("$")[-1] not in output
    assert "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3OCJ9" not in output
    assert "a very secret password 42" not in output


async def test_login_logs_no_password_or_token(
    client: CoreClient, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", json_logs=True)
    secret = "wrong-password-" + uuid.uuid4().hex
    for _ in range(7):
        await client.http.post("/api/admin/login", json={"email": "x@example.com", "password": secret})
    token = client.token()
    await client.http.get("/api/admin/stations", headers={"Authorization": f"Bearer {token}"})
    captured = capsys.readouterr()
    output = captured.err + captured.out
    assert secret not in output
    assert token not in output
