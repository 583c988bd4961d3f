"""Per-device MQTT authorization (POST /api/emqx/acl) and the production refusal of weak secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from chargeghar_ingest.settings import IngestSettings
from ingest_harness import make_settings, running_ingest
from pydantic import ValidationError

IMEI = "860602069165357"
OTHER = "860602069165358"


@pytest.mark.parametrize(
    ("clientid", "username", "topic", "action", "result"),
    [
        (IMEI, f"device_{IMEI}", f"/powerbank/{IMEI}/user/update", "publish", "allow"),
        (IMEI, f"device_{IMEI}", f"/powerbank/{IMEI}/user/heart", "publish", "allow"),
        (IMEI, f"device_{IMEI}", f"/powerbank/{IMEI}/user/get", "subscribe", "allow"),
        # Its own command topic is the server's to publish, not the station's.
        (IMEI, f"device_{IMEI}", f"/powerbank/{IMEI}/user/get", "publish", "deny"),
        # Another station's topics, wildcards, and a mismatched client id.
        (IMEI, f"device_{IMEI}", f"/powerbank/{OTHER}/user/update", "publish", "deny"),
        (IMEI, f"device_{IMEI}", f"/powerbank/{OTHER}/user/get", "subscribe", "deny"),
        (IMEI, f"device_{IMEI}", "/powerbank/+/user/get", "subscribe", "deny"),
        (IMEI, f"device_{IMEI}", "#", "subscribe", "deny"),
        (OTHER, f"device_{IMEI}", f"/powerbank/{IMEI}/user/update", "publish", "deny"),
        # The ingest's own account keeps its access; unknown accounts fall through to EMQX's next source.
        ("ingest-1", "ingest", "/powerbank/+/user/update", "subscribe", "allow"),
        ("ingest-1", "ingest", f"/powerbank/{IMEI}/user/get", "publish", "allow"),
        ("ops", "ops", "#", "subscribe", "ignore"),
    ],
)
async def test_acl(
    tmp_path: Path, clientid: str, username: str, topic: str, action: str, result: str
) -> None:
    settings = make_settings(tmp_path, mqtt={"username": "ingest", "password": "ingest-broker-password"})
    async with running_ingest(settings) as ingest:
        answer = await ingest.client.post(
            "/api/emqx/acl",
            json={"clientid": clientid, "username": username, "topic": topic, "action": action},
        )
        assert answer.status_code == 200
        assert answer.json() == {"result": result}


STRONG = "k3Jd9vQ2xZ7mP4tR8wY1nB6cF0hL5sGa"


def _production(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "environment": "production",
        "core": {"password": STRONG + "1", "hmac_secret": STRONG + "2"},
        "device": {"credential_secret": STRONG + "3"},
        "mqtt": {"username": "ingest", "password": STRONG + "4"},
        "commands": {"service_token": STRONG + "5"},
    }
    for key, value in overrides.items():
        values[key] = {**values[key], **value}
    return values


def test_production_accepts_strong_secrets() -> None:
    IngestSettings.model_validate(_production())


@pytest.mark.parametrize("weak", ["dev-secret", "x", "CHANGE-ME", "replace-with-32+-random-characters!!"])
@pytest.mark.parametrize(
    ("group", "field"),
    [
        ("core", "password"),
        ("core", "hmac_secret"),
        ("device", "credential_secret"),
        ("mqtt", "password"),
        ("commands", "service_token"),
    ],
)
def test_production_refuses_each_weak_secret(group: str, field: str, weak: str) -> None:
    with pytest.raises(ValidationError, match=f"{group}.{field}"):
        IngestSettings.model_validate(_production(**{group: {field: weak}}))
