"""Settings from the environment, the production secret guard, and core's CLI subcommands."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest
from chargeghar_core.__main__ import build_parser
from chargeghar_core.cli import register
from chargeghar_core.settings import Settings
from pydantic import ValidationError

REAL_SECRET = "x" * 40


def test_nested_settings_come_from_core_prefixed_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORE_DB__URL", "postgresql+asyncpg://core@db/core")
    monkeypatch.setenv("CORE_INTERNAL__ALLOWED_CIDRS", "10.0.0.0/8, 127.0.0.1/32")
    monkeypatch.setenv("CORE_INTERNAL__RATE_LIMIT_PER_MINUTE", "250")
    monkeypatch.setenv("CORE_HMAC__PREVIOUS_SECRETS", '["old-1", "old-2"]')
    monkeypatch.setenv("CORE_JWT__ACCESS_TTL_MINUTES", "15")
    settings = Settings()
    assert settings.db.url == "postgresql+asyncpg://core@db/core" and not settings.db.is_sqlite
    assert settings.internal.allowed_cidrs == ["10.0.0.0/8", "127.0.0.1/32"]
    assert settings.internal.rate_limit_per_minute == 250
    assert settings.hmac.accepted_secrets() == ["dev-secret", "old-1", "old-2"]
    assert settings.jwt.access_ttl_minutes == 15


def test_bad_cidr_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORE_INTERNAL__ALLOWED_CIDRS", "10.0.0.0/33")
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize(
    ("jwt_secret", "hmac_secret"),
    [("dev-jwt-secret", REAL_SECRET), (REAL_SECRET, "change-me"), (REAL_SECRET, "short")],
)
def test_production_refuses_placeholder_secrets(
    monkeypatch: pytest.MonkeyPatch, jwt_secret: str, hmac_secret: str
) -> None:
    monkeypatch.setenv("CORE_ENVIRONMENT", "production")
    monkeypatch.setenv("CORE_JWT__SECRET", jwt_secret)
    monkeypatch.setenv("CORE_HMAC__SECRET", hmac_secret)
    monkeypatch.setenv("CORE_PAYMENTS__SANDBOX_ENABLED", "false")
    with pytest.raises(ValidationError, match="must be set to a real secret"):
        Settings()


def test_production_accepts_real_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORE_ENVIRONMENT", "production")
    monkeypatch.setenv("CORE_JWT__SECRET", REAL_SECRET)
    monkeypatch.setenv("CORE_HMAC__SECRET", REAL_SECRET + "y")
    # Payments are a nested group of core's settings: production refuses the sandbox provider.
    monkeypatch.setenv("CORE_PAYMENTS__SANDBOX_ENABLED", "false")
    settings = Settings()
    assert settings.json_logs is True


def test_cli_registers_core_subcommands() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["create-service-account", "--email", "ingest@example.com", "--password", "p"])
    assert args.email == "ingest@example.com" and callable(args.func)
    assert parser.parse_args(["core-migrate"]).revision == "head"
    assert parser.parse_args(["create-admin", "--email", "a@b.c", "--role", "staff"]).role == "staff"


def test_entry_point_parser_defaults_to_serve() -> None:
    parser = build_parser()
    assert parser.parse_args(["migrate"]).command == "migrate"
    assert parser.parse_args(["serve", "--port", "9000"]).port == 9000


def test_cli_creates_an_account_and_migrates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CORE_DB__URL", f"sqlite+aiosqlite:///{tmp_path / 'cli.sqlite3'}")
    from chargeghar_core.settings import get_settings

    get_settings.cache_clear()
    try:
        parser = argparse.ArgumentParser()
        register(parser.add_subparsers())
        migrate_args = parser.parse_args(["core-migrate"])
        assert migrate_args.func(migrate_args) == 0
        create = parser.parse_args(
            ["create-admin", "--email", "Boss@Example.com", "--password", "long-enough"]
        )
        assert create.func(create) == 0
        again = parser.parse_args(
            ["create-admin", "--email", "boss@example.com", "--password", "long-enough"]
        )
        assert again.func(again) == 1
        lock = parser.parse_args(["set-account-status", "--email", "Boss@example.com", "--inactive"])
        assert lock.func(lock) == 0
        assert asyncio.run(_is_active(get_settings(), "boss@example.com")) is False
        unlock = parser.parse_args(["set-account-status", "--email", "boss@example.com", "--active"])
        assert unlock.func(unlock) == 0
        assert asyncio.run(_is_active(get_settings(), "boss@example.com")) is True
        nobody = parser.parse_args(["set-account-status", "--email", "nobody@example.com", "--active"])
        assert nobody.func(nobody) == 1
    finally:
        get_settings.cache_clear()
    output = capsys.readouterr()
    assert "created admin account Boss@Example.com" in output.out
    assert "exists already" in output.err
    assert "admin account Boss@example.com is now inactive" in output.out
    assert "no account nobody@example.com" in output.err


async def _is_active(settings: Settings, email: str) -> bool:
    from chargeghar_core.auth.repository import UserRepository
    from chargeghar_core.kit.db import create_engine, create_sessionmaker

    engine = create_engine(settings.db)
    try:
        async with create_sessionmaker(engine)() as session:
            user = await UserRepository(session).get_by_email(email)
            assert user is not None
            return bool(user.is_active)
    finally:
        await engine.dispose()


def test_auto_migrate_defaults_to_development_only(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(environment="development").auto_migrate is True
    assert Settings(environment="test").auto_migrate is False
    monkeypatch.setenv("CORE_DB__AUTO_MIGRATE", "true")
    assert Settings(environment="test").auto_migrate is True


def test_create_admin_on_an_unmigrated_database_explains_instead_of_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "var").mkdir()
    monkeypatch.setenv("CORE_DB__URL", f"sqlite+aiosqlite:///{tmp_path / 'var' / 'empty.sqlite3'}")
    from chargeghar_core.settings import get_settings

    get_settings.cache_clear()
    try:
        parser = argparse.ArgumentParser()
        register(parser.add_subparsers())
        create = parser.parse_args(["create-admin", "--email", "a@example.com", "--password", "long-enough"])
        assert create.func(create) == 1
    finally:
        get_settings.cache_clear()
    error = capsys.readouterr().err
    assert "no such table: users" in error and "chargeghar core-migrate" in error
    assert "Traceback" not in error


def test_the_default_database_is_the_one_make_dev_uses() -> None:
    from chargeghar_core.settings import DatabaseSettings

    assert DatabaseSettings().url == "sqlite+aiosqlite:///./var/dev/core.sqlite3"
