"""Ingest side of device truth: extra signed parameters accepted, per-channel presence (HTTP-only station →
409 DEVICE_OFFLINE at once), the EMQX disconnect webhook, and a re-rented bank's second return kept."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from chargeghar_protocol.contract import DeviceInfo, ReturnedEvent, ReturnEventInfo
from chargeghar_protocol.signing import device_sign, signed_headers
from ingest_fake_core import HMAC_SECRET
from ingest_harness import STATION, UPLOAD_FRAME, make_settings, running_ingest


def signed(params: dict[str, str]) -> dict[str, str]:
    return {**params, "sign": device_sign(params)}


async def test_signed_extra_parameters_are_accepted_on_every_device_endpoint(tmp_path: Path) -> None:
    async with running_ingest(make_settings(tmp_path)) as ingest:
        connect = signed({"uuid": STATION, "deviceId": "0", "simUUID": "", "simMobile": "", "version": "2.3"})
        assert (await ingest.client.get("/api/iot/client/con", params=connect)).json()["code"] == 200
        upload = signed({"rentboxSN": STATION, "signal": "CSQ:31", "version": "2.3"})
        response = await ingest.client.post("/api/rentbox/upload/data", params=upload, content=UPLOAD_FRAME)
        assert response.json()["code"] == 200
        ret = signed({"rentboxSN": STATION, "singleSN": "40818052", "hole": "1", "version": "2.3"})
        assert (await ingest.client.get("/api/rentbox/order/return", params=ret)).json()["code"] == 200
        config = signed({"rentboxSN": STATION, "version": "2.3"})
        assert (await ingest.client.get("/api/rentbox/config/data", params=config)).json()["code"] == 200
        assert await ingest.runtime.spool.dead_letters() == []
        full = (await ingest.event_bodies("full", STATION))[0]
        assert full["device"]["hardware_info"]["device_params"] == {"version": "2.3"}
        returned = (await ingest.event_bodies("returned", STATION))[0]
        assert returned["return_event"]["hardware_info"]["device_params"] == {"version": "2.3"}
        # A tampered extra parameter still fails the sign.
        bad = {**upload, "version": "9.9"}
        response = await ingest.client.post("/api/rentbox/upload/data", params=bad, content=UPLOAD_FRAME)
        assert response.json()["code"] == 403


async def test_an_http_only_station_refuses_commands_at_once(tmp_path: Path) -> None:
    async with running_ingest(make_settings(tmp_path)) as ingest:
        upload = signed({"rentboxSN": STATION, "signal": "CSQ:31"})
        await ingest.client.post("/api/rentbox/upload/data", params=upload, content=UPLOAD_FRAME)
        body = b'{"cmd":"popup_sn","data":"40818052","timeout_s":5}'
        started = time.monotonic()
        response = await ingest.client.post(
            f"/internal/devices/{STATION}/commands",
            content=body,
            headers={**signed_headers(HMAC_SECRET, body), "Content-Type": "application/json"},
        )
        assert response.status_code == 409 and response.json()["error"] == "DEVICE_OFFLINE"
        assert time.monotonic() - started < 2


async def test_emqx_disconnect_webhook_marks_the_station_offline(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, device={"broker_webhook_token": "hook-token"})
    async with running_ingest(settings) as ingest:
        now = datetime.now(UTC)
        await ingest.runtime.recorder.seen(STATION, observed_at=now - timedelta(seconds=5))
        assert await ingest.runtime.recorder.is_online(STATION, 1500)
        event = {
            "event": "client.disconnected",
            "clientid": STATION,
            "reason": "keepalive_timeout",
            "disconnected_at": int(now.timestamp() * 1000),
        }
        denied = await ingest.client.post("/api/emqx/webhook", json=event)
        assert denied.status_code == 401
        ok = await ingest.client.post(
            "/api/emqx/webhook", json=event, headers={"Authorization": "Bearer hook-token"}
        )
        assert ok.status_code == 200
        assert not await ingest.runtime.recorder.is_online(STATION, 1500)
        statuses = await ingest.event_bodies("status", STATION)
        assert statuses[-1]["device"]["status"] == "OFFLINE"
        assert (statuses[-1]["channel"], statuses[-1]["reason"]) == ("mqtt", "keepalive_timeout")


async def test_a_return_after_an_eject_is_a_new_return(tmp_path: Path) -> None:
    async with running_ingest(make_settings(tmp_path)) as ingest:
        recorder = ingest.runtime.recorder
        start = datetime.now(UTC)

        def returned(at: datetime) -> ReturnedEvent:
            return ReturnedEvent(
                timestamp=int(at.timestamp()),
                device=DeviceInfo(serial_number=STATION, imei=STATION),
                return_event=ReturnEventInfo(power_bank_serial="40818052", slot_number=1, battery_level=90),
            )

        first, dup1 = await recorder.record_return(returned(start), station=STATION, observed_at=start)
        again, dup2 = await recorder.record_return(
            returned(start + timedelta(seconds=2)), station=STATION, observed_at=start + timedelta(seconds=2)
        )
        assert (dup1, dup2, again) == (False, True, first)  # the same report twice is one return
        await recorder.ejected(STATION, serial="40818052", slot=1, at=start + timedelta(seconds=6))
        later = start + timedelta(seconds=12)
        second, dup3 = await recorder.record_return(returned(later), station=STATION, observed_at=later)
        assert dup3 is False and second != first
        assert len(await ingest.event_bodies("returned", STATION)) == 2
