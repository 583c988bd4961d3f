"""Settings: env vars with the INGEST_ prefix and nested groups; production refuses placeholder secrets."""

from __future__ import annotations

import argparse
import re

import pytest
from chargeghar_ingest import cli
from chargeghar_ingest.credentials import check_credentials, derive_credentials
from chargeghar_ingest.settings import IngestSettings
from pydantic import ValidationError

SECRETS = {
    # Production wants 32+ characters (deploy/*.env.example suggest `openssl rand -hex 32`).
    "INGEST_CORE__PASSWORD": "real-password-7f3a9c2e5b8d1f4a6c0e9b2d",
    "INGEST_CORE__HMAC_SECRET": "real-hmac-5c8e1a7f3b9d2c6e0a4f8b1d",
    "INGEST_DEVICE__CREDENTIAL_SECRET": "real-device-secret-9a2c4e6f8b0d1f3a",
}


def test_nested_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    # Defaults that matter: 25 min offline threshold, enforce signs, no Redis.
    defaults = IngestSettings(_env_file=None)  # type: ignore[call-arg]
    assert defaults.presence.offline_after_s == 1500 and defaults.redis.url is None
    assert defaults.device.sign_policy == "enforce"
    monkeypatch.setenv("INGEST_MQTT__HOST", "emqx.internal")
    monkeypatch.setenv("INGEST_MQTT__SHARED_GROUP", "ingest")
    monkeypatch.setenv("INGEST_PRESENCE__OFFLINE_AFTER_S", "60")
    monkeypatch.setenv("INGEST_DEVICE__SIGN_POLICY", "log_only")
    monkeypatch.setenv("INGEST_DEVICE__STATION_OVERRIDES", '{"864601069946994": {"dAreaConfig": "73"}}')
    settings = IngestSettings(_env_file=None)  # type: ignore[call-arg]
    assert settings.mqtt.host == "emqx.internal" and settings.mqtt.shared_group == "ingest"
    assert settings.presence.offline_after_s == 60
    assert settings.device.sign_policy == "log_only"
    assert settings.device.station_overrides["864601069946994"] == {"dAreaConfig": "73"}


def test_production_refuses_placeholder_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGEST_ENVIRONMENT", "production")
    with pytest.raises(
        ValidationError, match=re.escape("core.password, core.hmac_secret, device.credential_secret")
    ):
        IngestSettings(_env_file=None)  # type: ignore[call-arg]
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    settings = IngestSettings(_env_file=None)  # type: ignore[call-arg]
    assert settings.core.hmac_secret.get_secret_value() == SECRETS["INGEST_CORE__HMAC_SECRET"]
    assert SECRETS["INGEST_CORE__HMAC_SECRET"] not in repr(settings)


def test_derived_credentials_are_stable_and_per_device() -> None:
    first = derive_credentials("secret", "864601069946994")
    assert first == derive_credentials("secret", "864601069946994")
    assert first.username == "device_864601069946994" and len(first.password) == 32
    assert derive_credentials("secret", "864601069946995").password != first.password
    assert derive_credentials("other", "864601069946994").password != first.password
    assert check_credentials(
        "secret", client_id=first.client_id, username=first.username, password=first.password
    )
    assert not check_credentials("secret", client_id="x", username=first.username, password=first.password)


def test_cli_registers_the_ingest_commands() -> None:
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="command")
    cli.register(subparsers)
    args = parser.parse_args(["ingest-serve", "--port", "8123"])
    assert args.port == 8123 and callable(args.func)
    assert parser.parse_args(["ingest-device-credentials", "864601069946994"]).imei == "864601069946994"
