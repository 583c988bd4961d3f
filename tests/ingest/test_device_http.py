"""Device HTTP endpoints (protocol.md §2.6) through the real app: envelope, signs, spool, dead letters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from chargeghar_ingest.credentials import derive_credentials
from chargeghar_protocol.codec import (
    BoardRecord,
    CabinetSnapshot,
    HoleRecord,
    PopupBySnResult,
    encode_frame,
)
from chargeghar_protocol.signing import device_sign
from ingest_harness import STATION, UPLOAD_FRAME, make_settings, running_ingest

CONNECT_PATHS = ["/api/iot/client/con", "/api/rentbox/client/connect"]
UPLOAD_PATHS = ["/api/rentbox/upload/data", "/api/rentbox/client/upload"]


def signed(params: dict[str, Any]) -> dict[str, Any]:
    return {**params, "sign": device_sign(params)}


def assert_envelope(body: dict[str, Any], code: int) -> None:
    assert list(body) == ["code", "type", "data", "msg", "time"]
    assert body["code"] == code
    assert body["type"] == 0
    assert isinstance(body["time"], int) and body["time"] > 1_700_000_000_000


# ------------------------------------------------------------------------------------------------ connect


@pytest.mark.parametrize("path", CONNECT_PATHS)
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_connect_hands_out_derived_mqtt_credentials(tmp_path: Path, path: str, method: str) -> None:
    settings = make_settings(tmp_path, mqtt={"public_host": "mqtt.example.test", "public_port": 1884})
    params = signed(
        {"uuid": "860602069165357", "deviceId": "0", "simUUID": "89860427092281034392", "simMobile": ""}
    )
    async with running_ingest(settings) as ingest:
        if method == "GET":
            response = await ingest.client.get(path, params=params)
        else:
            response = await ingest.client.post(path, data=params)
        body = response.json()
        assert response.status_code == 200
        assert_envelope(body, 200)
        fields = body["data"].split(",")
        expected = derive_credentials("test-credential-secret", "860602069165357")
        assert fields[:6] == [
            "860602069165357",
            "powerbank",
            "mqtt.example.test",
            "1884",
            "device_860602069165357",
            expected.password,
        ]
        assert abs(int(fields[6]) - body["time"]) < 5000

        # The broker's HTTP authentication accepts exactly these credentials.
        auth = {"clientid": fields[0], "username": fields[4], "password": fields[5]}
        allow = await ingest.client.post("/api/emqx/auth", json=auth)
        assert allow.json() == {"result": "allow"}
        deny = await ingest.client.post("/api/emqx/auth", json={**auth, "password": "x" * 32})
        assert deny.json() == {"result": "deny"}
        other_device = await ingest.client.post(
            "/api/emqx/auth", json={**auth, "clientid": "860602069165358"}
        )
        assert other_device.json() == {"result": "deny"}
        operator = await ingest.client.post(
            "/api/emqx/auth", json={"clientid": "ops", "username": "ops", "password": "p"}
        )
        assert operator.json() == {"result": "ignore"}


async def test_connect_matches_the_vendor_sign_vector(tmp_path: Path) -> None:
    """protocol.md §9 #13: the sign the vendor documents for these exact parameters."""
    params = {
        "uuid": "860602069165357",
        "deviceId": "0",
        "simUUID": "89860427092281034392",
        "simMobile": "",
        "sign": "ff46bf468563a48b068d198158a21835",
    }
    async with running_ingest(make_settings(tmp_path)) as ingest:
        response = await ingest.client.get("/api/iot/client/con", params=params)
        assert response.json()["code"] == 200


async def test_connect_mcu_post_body_is_not_part_of_the_sign(tmp_path: Path) -> None:
    params = signed({"uuid": "860602069165357", "deviceId": "0", "simUUID": "", "simMobile": ""})
    async with running_ingest(make_settings(tmp_path)) as ingest:
        response = await ingest.client.post(
            "/api/rentbox/client/connect",
            params=params,
            content=b"hardware=V6086&software=20240904-RBMG-3.0.0.0",
            headers={"Content-Type": "text/plain"},
        )
        assert response.json()["code"] == 200


async def test_connect_with_bad_sign_is_refused_and_dead_lettered(tmp_path: Path) -> None:
    params = {"uuid": "860602069165357", "deviceId": "0", "simUUID": "", "simMobile": "", "sign": "0" * 32}
    async with running_ingest(make_settings(tmp_path)) as ingest:
        response = await ingest.client.get("/api/iot/client/con", params=params)
        body = response.json()
        assert response.status_code == 403
        assert_envelope(body, 403)
        assert body["data"] is None
        letters = await ingest.runtime.spool.dead_letters()
        assert [(d.source, d.reason, d.station) for d in letters] == [("http", "bad_sign", "860602069165357")]
        detail = json.loads(letters[0].detail or "{}")
        assert detail["path"] == "/api/iot/client/con"
        assert bytes.fromhex(letters[0].raw_hex or "").decode() == detail["query"]


async def test_sign_policy_log_only_answers_despite_a_bad_sign(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, device={"sign_policy": "log_only"})
    params = {"uuid": "860602069165357", "deviceId": "0", "sign": "f" * 32}
    async with running_ingest(settings) as ingest:
        response = await ingest.client.get("/api/iot/client/con", params=params)
        assert response.json()["code"] == 200
        assert await ingest.runtime.spool.dead_letters() == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"deviceId": "0", "sign": "abc"}, "missing parameter(s): uuid"),
        ({"uuid": "860602069165357", "deviceId": "0"}, "missing parameter(s): sign"),
    ],
)
async def test_connect_with_wrong_parameter_set_is_a_400(
    tmp_path: Path, params: dict[str, str], message: str
) -> None:
    async with running_ingest(make_settings(tmp_path)) as ingest:
        response = await ingest.client.get("/api/iot/client/con", params=params)
        assert response.status_code == 400
        assert response.json()["msg"] == message
        letters = await ingest.runtime.spool.dead_letters()
        assert len(letters) == 1 and letters[0].reason == "missing_params"


# ------------------------------------------------------------------------------------------------ upload


@pytest.mark.parametrize("path", UPLOAD_PATHS)
async def test_upload_spools_a_full_event_before_answering(tmp_path: Path, path: str) -> None:
    # The exact parameters and sign of the production log (protocol.md §9 #3).
    params = {"rentboxSN": STATION, "signal": "CSQ:31", "sign": "4f8f934042c84159cbfe360ed2c90d89"}
    async with running_ingest(make_settings(tmp_path)) as ingest:
        response = await ingest.client.post(
            path, params=params, content=UPLOAD_FRAME, headers={"Content-Type": "text/plain"}
        )
        assert response.status_code == 200
        body = response.json()
        assert_envelope(body, 200)
        assert body["data"] is None
        events = await ingest.events(STATION)
        # First contact: ONLINE status, then the snapshot, in that order.
        assert [e.type for e in events] == ["status", "full"]
        # HTTP life is recorded per channel; it never claims the MQTT link commands need.
        assert events[0].body["device"]["status"] == "OFFLINE"
        assert events[0].body["channels"] == {"http": "ONLINE"}
        full = events[1].body
        assert full["event_id"] and full["observed_at"].endswith("Z")
        assert full["device"]["imei"] == STATION and full["device"]["signal_strength"] == "31"
        assert full["station"]["total_slots"] == 4
        occupied = [s for s in full["slots"] if s["status"] == "OCCUPIED"]
        assert occupied == [
            {
                "slot_number": 3,
                "status": "OCCUPIED",
                "battery_level": 100,
                "power_bank_serial": "40818052",
                "slot_metadata": occupied[0]["slot_metadata"],
            }
        ]
        assert full["power_banks"][0]["hardware_info"]["area_code"] == 73


async def test_upload_sign_with_io_and_ssid_is_accepted(tmp_path: Path) -> None:
    """The legacy bridge signs io and ssid too when sent (protocol.md §10.13)."""
    params = signed({"rentboxSN": STATION, "signal": "CSQ:20", "io": "0", "ssid": "cafe"})
    async with running_ingest(make_settings(tmp_path)) as ingest:
        response = await ingest.client.post("/api/rentbox/upload/data", params=params, content=UPLOAD_FRAME)
        assert response.json()["code"] == 200
        full = (await ingest.event_bodies("full"))[0]
        assert full["device"]["wifi_ssid"] == "cafe"


async def test_upload_of_a_larger_encoded_cabinet(tmp_path: Path) -> None:
    holes = tuple(
        HoleRecord(h, 1, 0, 0xE0, 73, 50_000_000 + h, 80 + h, 25, 50, 2, 25, 0)
        if h % 2
        else HoleRecord(h, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0x80)
        for h in range(1, 9)
    )
    boards = (BoardRecord(0x01, 0xFF, 0xFF, 0, 4, 0x16), BoardRecord(0x02, 0xFF, 0xFF, 0, 4, 0x16))
    frame = encode_frame(CabinetSnapshot(boards=boards, holes=holes, holes_per_board=(4, 4)))
    params = signed({"rentboxSN": "860000000000001", "signal": "CSQ:18"})
    async with running_ingest(make_settings(tmp_path)) as ingest:
        response = await ingest.client.post("/api/rentbox/client/upload", params=params, content=frame)
        assert response.json()["code"] == 200
        full = (await ingest.event_bodies("full"))[0]
        assert full["station"]["total_slots"] == 8
        assert sorted(b["serial_number"] for b in full["power_banks"]) == [
            str(50_000_000 + h) for h in (1, 3, 5, 7)
        ]


@pytest.mark.parametrize(
    ("body", "reason_text"),
    [
        (UPLOAD_FRAME[:30], "LENGTH_MISMATCH"),  # truncated
        (b"\x00" + UPLOAD_FRAME[1:], "BAD_HEAD"),  # garbled head
        (UPLOAD_FRAME[:-1] + b"\x00", "checksum"),  # garbled checksum
        (
            encode_frame(PopupBySnResult(hole=1, sn_int=40818048, state=1, solenoid=2)),
            "expected a 0x10 frame",
        ),
        (b"", "TOO_SHORT"),
    ],
)
async def test_upload_with_bad_frame_is_a_400_and_kept_raw(
    tmp_path: Path, body: bytes, reason_text: str
) -> None:
    params = signed({"rentboxSN": STATION, "signal": "CSQ:31"})
    async with running_ingest(make_settings(tmp_path)) as ingest:
        response = await ingest.client.post("/api/rentbox/upload/data", params=params, content=body)
        assert response.status_code == 400
        assert reason_text in response.json()["msg"]
        assert await ingest.events() == []
        letters = await ingest.runtime.spool.dead_letters()
        assert [(d.reason, d.station) for d in letters] == [("bad_frame", STATION)]
        assert letters[0].raw_hex == (body.hex() if body else params_query_hex(letters[0].detail))


def params_query_hex(detail: str | None) -> str:
    return json.loads(detail or "{}")["query"].encode().hex()


async def test_upload_with_bad_sign_is_refused_without_spooling(tmp_path: Path) -> None:
    params = {"rentboxSN": STATION, "signal": "CSQ:31", "sign": "4f8f934042c84159cbfe360ed2c90d8a"}
    async with running_ingest(make_settings(tmp_path)) as ingest:
        response = await ingest.client.post("/api/rentbox/upload/data", params=params, content=UPLOAD_FRAME)
        assert response.status_code == 403
        assert response.json()["msg"] == "ERROR SIGN"
        assert await ingest.events() == []
        letters = await ingest.runtime.spool.dead_letters()
        assert letters[0].raw_hex == UPLOAD_FRAME.hex()


async def test_upload_without_rentbox_sn_is_a_400(tmp_path: Path) -> None:
    async with running_ingest(make_settings(tmp_path)) as ingest:
        response = await ingest.client.post(
            "/api/rentbox/upload/data", params={"sign": "x"}, content=UPLOAD_FRAME
        )
        assert response.status_code == 400
        assert "rentboxSN" in response.json()["msg"]


# ------------------------------------------------------------------------------------------------ return


async def test_http_return_becomes_one_returned_event(tmp_path: Path) -> None:
    params = {
        "rentboxSN": STATION,
        "singleSN": "40818052",
        "hole": "3",
        "sign": "13ef57650bf2bec3a36835a67a7c2846",
    }
    async with running_ingest(make_settings(tmp_path)) as ingest:
        first = await ingest.client.post("/api/rentbox/order/return", data=params)
        assert first.json()["code"] == 200
        # The station repeats the call (e.g. it missed our answer): still one return.
        second = await ingest.client.get("/api/rentbox/order/return", params=params)
        assert second.json()["code"] == 200
        returned = await ingest.event_bodies("returned")
        assert len(returned) == 1
        assert returned[0]["return_event"]["power_bank_serial"] == "40818052"
        assert returned[0]["return_event"]["slot_number"] == 3
        assert ingest.runtime.metrics.counters["returns_deduplicated_total"] == 1


@pytest.mark.parametrize(
    "params",
    [
        {"rentboxSN": STATION, "singleSN": "abc", "hole": "3"},
        {"rentboxSN": STATION, "singleSN": "40818052", "hole": "-1"},
        {"rentboxSN": STATION, "hole": "3"},
    ],
)
async def test_http_return_with_bad_params_is_a_400(tmp_path: Path, params: dict[str, str]) -> None:
    async with running_ingest(make_settings(tmp_path)) as ingest:
        response = await ingest.client.get("/api/rentbox/order/return", params=signed(params))
        assert response.status_code == 400
        assert await ingest.events() == []
        assert len(await ingest.runtime.spool.dead_letters()) == 1


# ------------------------------------------------------------------------------------------------ config


async def test_config_defaults_are_a_json_string_without_the_legacy_area(tmp_path: Path) -> None:
    async with running_ingest(make_settings(tmp_path)) as ingest:
        response = await ingest.client.get("/api/rentbox/config/data")
        body = response.json()
        assert_envelope(body, 200)
        assert isinstance(body["data"], str)
        config = json.loads(body["data"])
        assert config["dRotationRefer"] == "15" and config["dMotorEnable"] == "1"
        assert config["dAreaConfig"] != "357"  # protocol.md §10.25


async def test_config_per_station_override_needs_a_valid_sign(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, device={"station_overrides": {STATION: {"dAreaConfig": "73"}}})
    async with running_ingest(settings) as ingest:
        good = await ingest.client.post("/api/rentbox/config/data", data=signed({"rentboxSN": STATION}))
        assert json.loads(good.json()["data"])["dAreaConfig"] == "73"
        other = await ingest.client.post(
            "/api/rentbox/config/data", data=signed({"rentboxSN": "860000000000009"})
        )
        assert json.loads(other.json()["data"])["dAreaConfig"] == "0"
        bad = await ingest.client.post(
            "/api/rentbox/config/data", data={"rentboxSN": STATION, "sign": "0" * 32}
        )
        assert bad.status_code == 403


async def test_health_and_metrics(tmp_path: Path) -> None:
    async with running_ingest(make_settings(tmp_path)) as ingest:
        health = await ingest.client.get("/health")
        assert health.json()["status"] == "ok" and health.json()["mqtt"] == "disabled"
        await ingest.client.post(
            "/api/rentbox/upload/data", params=signed({"rentboxSN": STATION, "signal": "1"}), content=b"\xa8"
        )
        text = (await ingest.client.get("/metrics")).text
        assert "chargeghar_ingest_http_device_rejected_total 1" in text
        assert "chargeghar_ingest_dead_letter_rows 1" in text
        values = (await ingest.client.get("/metrics.json")).json()
        assert values["dead_letters_total"] == 1
