"""Command API (contract.md §3) over the real broker, with a test-side fake cabinet answering on MQTT."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from chargeghar_ingest.pipeline import utc_now
from chargeghar_ingest.replies import DeliveredReply, Waiter
from chargeghar_ingest.settings import IngestSettings
from chargeghar_protocol.codec import (
    Frame,
    Heartbeat,
    PopupByHoleResult,
    PopupBySnResult,
    decode_frame,
    encode_frame,
)
from chargeghar_protocol.signing import signed_headers
from ingest_fake_core import HMAC_SECRET
from ingest_harness import UPLOAD_FRAME, RunningIngest, running_ingest, wait_until
from ingest_mqtt import device_topic, mqtt_settings, publish_frame, station_client

pytestmark = pytest.mark.mqtt

IMEI = "864601069940001"

Answer = Callable[[dict[str, str]], list[Frame | bytes]]


@dataclass
class FakeCabinet:
    """Subscribes to its command topic and answers with whatever ``answer`` returns for a command."""

    answer: Answer
    delay_s: float = 0.0
    received: list[tuple[dict[str, str], int]] = field(default_factory=list)


@asynccontextmanager
async def fake_cabinet(
    broker: tuple[str, int], topic_prefix: str, cabinet: FakeCabinet, imei: str = IMEI
) -> AsyncIterator[FakeCabinet]:
    async with station_client(broker, "cabinet") as client:
        # QoS 1 subscription: the delivered QoS then equals the QoS the ingest published with.
        await client.subscribe(device_topic(topic_prefix, imei, "get"), qos=1)

        async def serve() -> None:
            async for message in client.messages:
                command = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                cabinet.received.append((command, message.qos))
                frames = cabinet.answer(command)
                if cabinet.delay_s:
                    await asyncio.sleep(cabinet.delay_s)
                for frame in frames:
                    await publish_frame(client, topic_prefix, imei, frame)

        task = asyncio.create_task(serve())
        try:
            # Say hello so the station is ONLINE for the ingest.
            await publish_frame(
                client, topic_prefix, imei, Heartbeat(board=1, text="CSQ:25;BP:0"), leaf="heart"
            )
            yield cabinet
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def popup_answer(state: int) -> Answer:
    def answer(command: dict[str, str]) -> list[Frame | bytes]:
        if command["cmd"] == "popup_sn":
            return [PopupBySnResult(hole=3, sn_int=int(command["data"]), state=state, solenoid=2)]
        if command["cmd"] == "popup":
            return [PopupByHoleResult(board=1, hole=int(command["data"]), state=state, solenoid=2)]
        if command["cmd"] in ("check", "check_all"):
            return [UPLOAD_FRAME]
        return []

    return answer


def delivered_qos(cabinet: FakeCabinet, embedded: bool) -> list[int | None]:
    """QoS the cabinet got each command with; amqtt upgrades to the subscription's QoS, so unknown there."""
    return [None if embedded else qos for _, qos in cabinet.received]


def silent(command: dict[str, str]) -> list[Frame | bytes]:
    return []


async def send(
    ingest: RunningIngest, payload: dict[str, Any], imei: str = IMEI, headers: dict[str, str] | None = None
) -> httpx.Response:
    body = json.dumps(payload).encode()
    return await ingest.client.post(
        f"/internal/devices/{imei}/commands",
        content=body,
        headers={"Content-Type": "application/json", **signed_headers(HMAC_SECRET, body), **(headers or {})},
    )


async def until_online(ingest: RunningIngest, imei: str = IMEI) -> None:
    async def online() -> bool:
        return await ingest.runtime.recorder.is_online(imei, 60)

    await wait_until(online)


def settings_for(tmp_path: Path, broker: tuple[str, int], prefix: str, **overrides: Any) -> IngestSettings:
    return mqtt_settings(tmp_path, broker, prefix, **overrides)


async def test_popup_sn_success_is_published_at_qos0(
    tmp_path: Path, mqtt_broker: tuple[str, int], mqtt_is_embedded: bool, topic_prefix: str
) -> None:
    async with (
        running_ingest(settings_for(tmp_path, mqtt_broker, topic_prefix)) as ingest,
        fake_cabinet(mqtt_broker, topic_prefix, FakeCabinet(popup_answer(0x01))) as cabinet,
    ):
        await until_online(ingest)
        command_id = str(uuid.uuid4())
        response = await send(ingest, {"cmd": "popup_sn", "data": "40818052", "command_id": command_id})
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert data["command_id"] == command_id and data["outcome"] == "ok"
        assert (
            data["reply"]["sn"] == "40818052"
            and data["reply"]["hole"] == 3
            and data["reply"]["cmd"] == "0x31"
        )
        assert [c for c, _ in cabinet.received] == [{"cmd": "popup_sn", "data": "40818052"}]
        assert delivered_qos(cabinet, mqtt_is_embedded) == [None if mqtt_is_embedded else 0]
        audit = await ingest.runtime.spool.audit_rows(IMEI)
        assert [(a.command_id, a.cmd, a.qos, a.outcome) for a in audit] == [(command_id, "popup_sn", 0, "ok")]
        # A reply that answered a command is not also reported as a command_result.
        assert await ingest.event_bodies("command_result") == []


async def test_popup_by_hole_failure_and_check_success(
    tmp_path: Path, mqtt_broker: tuple[str, int], mqtt_is_embedded: bool, topic_prefix: str
) -> None:
    async with (
        running_ingest(settings_for(tmp_path, mqtt_broker, topic_prefix)) as ingest,
        fake_cabinet(mqtt_broker, topic_prefix, FakeCabinet(popup_answer(0x00))) as cabinet,
    ):
        await until_online(ingest)
        failed = (await send(ingest, {"cmd": "popup", "data": "2"})).json()["data"]
        assert failed["outcome"] == "failed" and failed["reply"]["hole"] == 2
        check = (await send(ingest, {"cmd": "check"})).json()["data"]
        assert check["outcome"] == "ok" and len(check["reply"]["holes"]) == 4
        assert [c["cmd"] for c, _ in cabinet.received] == ["popup", "check"]
        if not mqtt_is_embedded:
            assert delivered_qos(cabinet, mqtt_is_embedded) == [0, 1]
        assert cabinet.received[0][0] == {"cmd": "popup", "data": "2", "io": "0"}
        # The check reply is a snapshot too: it becomes a full event.
        assert len(await ingest.event_bodies("full", IMEI)) == 1


async def test_timeout_then_late_reply_becomes_command_result(
    tmp_path: Path, mqtt_broker: tuple[str, int], mqtt_is_embedded: bool, topic_prefix: str
) -> None:
    cabinet = FakeCabinet(popup_answer(0x01), delay_s=1.0)
    async with (
        running_ingest(settings_for(tmp_path, mqtt_broker, topic_prefix)) as ingest,
        fake_cabinet(mqtt_broker, topic_prefix, cabinet),
    ):
        await until_online(ingest)
        command_id = str(uuid.uuid4())
        response = await send(
            ingest, {"cmd": "popup_sn", "data": "12345678", "command_id": command_id, "timeout_s": 0.3}
        )
        data = response.json()["data"]
        assert data["outcome"] == "timeout" and data["reply"] is None
        assert 250 <= data["elapsed_ms"] < 1000

        async def late() -> bool:
            return len(await ingest.event_bodies("command_result", IMEI)) == 1

        await wait_until(late)
        result = (await ingest.event_bodies("command_result", IMEI))[0]
        assert (
            result["command_id"] == command_id and result["cmd"] == "popup_sn" and result["outcome"] == "ok"
        )
        assert result["reply"]["sn"] == "12345678" and result["elapsed_ms"] >= 900
        # QoS 0 and exactly one publish: a timed-out eject is never re-sent.
        assert len(cabinet.received) == 1
        assert delivered_qos(cabinet, mqtt_is_embedded) == [None if mqtt_is_embedded else 0]


async def test_reply_for_another_bank_does_not_satisfy_the_popup(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str
) -> None:
    def wrong_bank(command: dict[str, str]) -> list[Frame | bytes]:
        return [PopupBySnResult(hole=1, sn_int=99999999, state=1, solenoid=2)]

    async with (
        running_ingest(settings_for(tmp_path, mqtt_broker, topic_prefix)) as ingest,
        fake_cabinet(mqtt_broker, topic_prefix, FakeCabinet(wrong_bank)),
    ):
        await until_online(ingest)
        data = (await send(ingest, {"cmd": "popup_sn", "data": "40818052", "timeout_s": 0.5})).json()["data"]
        assert data["outcome"] == "timeout"


async def test_busy_and_offline_are_refused_at_once(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str
) -> None:
    async with (
        running_ingest(settings_for(tmp_path, mqtt_broker, topic_prefix)) as ingest,
        fake_cabinet(mqtt_broker, topic_prefix, FakeCabinet(silent)),
    ):
        await until_online(ingest)
        offline = await send(ingest, {"cmd": "check"}, imei="864601069949999")
        assert offline.status_code == 409 and offline.json()["error"] == "DEVICE_OFFLINE"

        first = asyncio.create_task(send(ingest, {"cmd": "check", "timeout_s": 1.0}))

        async def in_flight() -> bool:
            return ingest.runtime.metrics.counters["commands_total"] == 1

        await wait_until(in_flight)
        started = asyncio.get_running_loop().time()
        busy = await send(ingest, {"cmd": "popup_sn", "data": "40818052"})
        assert busy.status_code == 409 and busy.json()["error"] == "DEVICE_BUSY"
        assert asyncio.get_running_loop().time() - started < 0.5
        assert (await first).json()["data"]["outcome"] == "timeout"
        # The lock is released: the next command goes through.
        assert (await send(ingest, {"cmd": "reboot"})).json()["data"]["outcome"] == "ok"


async def test_authentication_validation_and_masked_audit(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str
) -> None:
    settings = settings_for(tmp_path, mqtt_broker, topic_prefix, commands={"service_token": "static-token"})
    async with (
        running_ingest(settings) as ingest,
        fake_cabinet(mqtt_broker, topic_prefix, FakeCabinet(silent)) as cabinet,
    ):
        await until_online(ingest)
        body = json.dumps({"cmd": "reboot"}).encode()
        unsigned = await ingest.client.post(f"/internal/devices/{IMEI}/commands", content=body)
        assert unsigned.status_code == 403 and unsigned.json()["error"] == "MISSING_HEADERS"
        tampered_headers = signed_headers(HMAC_SECRET, body)
        tampered = await ingest.client.post(
            f"/internal/devices/{IMEI}/commands",
            content=body.replace(b"reboot", b"check!"),
            headers={**tampered_headers, "X-Service-Token": "static-token"},
        )
        assert tampered.status_code == 403 and tampered.json()["error"] == "INVALID_SIGNATURE"
        no_token = await send(ingest, {"cmd": "reboot"})
        assert no_token.status_code == 403 and no_token.json()["error"] == "FORBIDDEN"
        token = {"X-Service-Token": "static-token", "X-Caller": "core-test"}
        invalid = await send(ingest, {"cmd": "popup_sn", "data": "not-a-serial"}, headers=token)
        assert invalid.status_code == 400 and invalid.json()["error"] == "VALIDATION_ERROR"

        wifi = await send(ingest, {"cmd": "setWifi", "username": "cafe", "password": "s3cret"}, headers=token)
        assert wifi.json()["data"]["outcome"] == "ok"

        async def delivered() -> bool:
            return len(cabinet.received) == 1

        await wait_until(delivered)
        assert cabinet.received[0][0] == {"cmd": "setWifi", "username": "cafe", "password": "s3cret"}
        audit = await ingest.runtime.spool.audit_rows(IMEI)
        # The invalid command is audited as refused; unsigned or unauthorised requests are not.
        assert [(a.cmd, a.outcome, a.refusal_code) for a in audit] == [
            ("popup_sn", "refused", "VALIDATION_ERROR"),
            ("setWifi", "ok", None),
        ]
        assert audit[1].caller == "core-test"
        assert audit[1].payload["password"] == "***" and "s3cret" not in json.dumps(audit[1].payload)


@pytest.mark.redis
async def test_reply_received_by_another_replica_reaches_the_waiter(
    tmp_path: Path,
    mqtt_broker: tuple[str, int],
    topic_prefix: str,
    redis_url: str,
    isolated_redis_prefix: str,
) -> None:
    """Replica A publishes and waits; replica B receives the device's reply and hands it over via Redis."""
    redis = {"url": redis_url, "key_prefix": isolated_redis_prefix}
    settings_a = settings_for(tmp_path / "a", mqtt_broker, topic_prefix, redis=redis)
    # B consumes another prefix, so the reply below can only reach A through Redis.
    settings_b = settings_for(tmp_path / "b", mqtt_broker, topic_prefix + "b", redis=redis)
    async with (
        running_ingest(settings_a) as replica_a,
        running_ingest(settings_b) as replica_b,
        fake_cabinet(mqtt_broker, topic_prefix, FakeCabinet(silent)) as cabinet,
    ):
        await until_online(replica_a)
        broker_b = replica_b.runtime.commands.broker
        await wait_until(lambda: _listening(broker_b))
        command_id = str(uuid.uuid4())
        waiting = asyncio.create_task(
            send(replica_a, {"cmd": "popup_sn", "data": "40818052", "command_id": command_id, "timeout_s": 5})
        )

        async def published() -> bool:
            return len(cabinet.received) == 1

        await wait_until(published)
        # Presence and the per-station lock live in Redis: replica B sees the station busy.
        busy = await send(replica_b, {"cmd": "check"})
        assert busy.status_code == 409 and busy.json()["error"] == "DEVICE_BUSY"
        reply = decode_frame(encode_frame(PopupBySnResult(hole=3, sn_int=40818052, state=1, solenoid=2)))
        taken = await replica_b.runtime.commands.offer_reply(IMEI, reply, received_at=utc_now())
        assert taken is True
        data = (await waiting).json()["data"]
        assert (
            data["outcome"] == "ok" and data["command_id"] == command_id and data["reply"]["sn"] == "40818052"
        )
        assert await replica_b.event_bodies("command_result") == []


async def _listening(broker: Any) -> bool:
    return bool(broker.listening.is_set())


async def test_a_resent_command_id_is_answered_from_the_audit_never_published_again(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str
) -> None:
    async with (
        running_ingest(settings_for(tmp_path, mqtt_broker, topic_prefix)) as ingest,
        fake_cabinet(mqtt_broker, topic_prefix, FakeCabinet(popup_answer(0x01))) as cabinet,
    ):
        await until_online(ingest)
        command = {"cmd": "popup_sn", "data": "40818052", "command_id": str(uuid.uuid4())}
        first = (await send(ingest, command)).json()["data"]
        # Core timed out on its side and retries the very same request.
        again = await send(ingest, command)
        assert again.status_code == 200
        assert again.json()["data"] == first
        assert len(cabinet.received) == 1
        # The same id for another (online) station is a client error, not a second eject.
        other_imei = "864601069949998"
        async with station_client(mqtt_broker) as other_station:
            hello = Heartbeat(board=1, text="CSQ:20;BP:0")
            await publish_frame(other_station, topic_prefix, other_imei, hello, leaf="heart")
        await until_online(ingest, other_imei)
        other = await send(ingest, command, imei=other_imei)
        assert other.status_code == 409 and other.json()["error"] == "CONFLICT"
        assert len(await ingest.runtime.spool.audit_rows(IMEI)) == 1


@pytest.mark.parametrize("steps", range(4))
async def test_a_cancelled_reply_wait_stays_cancelled_when_the_reply_lands_in_the_same_step(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str, steps: int
) -> None:
    """Python 3.11's wait_for returned the reply and dropped the cancellation of the request (client gone,
    shutdown) when both arrived within a few loop steps; the cancellation must win."""
    async with running_ingest(settings_for(tmp_path, mqtt_broker, topic_prefix)) as ingest:
        loop = asyncio.get_running_loop()
        command_id = str(uuid.uuid4())
        waiter = Waiter(command_id, IMEI, "popup_sn", "0x31", "sn:40818052", loop.time(), "test")
        future: asyncio.Future[DeliveredReply] = loop.create_future()
        wait = asyncio.create_task(ingest.runtime.commands._wait(waiter, future, 30))
        await asyncio.sleep(0)  # the wait is now parked on the reply future

        cancel_requested = asyncio.Event()

        def cancel_after(remaining: int) -> None:
            if remaining > 0:
                loop.call_soon(cancel_after, remaining - 1)
            elif wait.cancel():  # False: the wait had already returned the reply, nothing to check
                cancel_requested.set()

        future.set_result(DeliveredReply(command_id, "0x31", {"state": 1}, True, loop.time()))
        cancel_after(steps)
        await asyncio.wait({wait})
        assert cancel_requested.is_set() or steps > 0, "a zero-step cancel always reaches the running wait"
        if cancel_requested.is_set():
            assert wait.cancelled(), f"the wait returned {wait.result()!r} although it was cancelled"


async def test_every_command_is_audited_and_forwarded_to_core_refused_ones_included(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str
) -> None:
    async with (
        running_ingest(settings_for(tmp_path, mqtt_broker, topic_prefix)) as ingest,
        fake_cabinet(mqtt_broker, topic_prefix, FakeCabinet(silent)),
    ):
        await until_online(ingest)
        caller = {"X-Caller": "admin:ops@example.com", "X-Correlation-Id": "corr-audit-1"}
        offline_imei = "864601069949999"
        offline = await send(ingest, {"cmd": "check", "command_id": "c-offline"}, imei=offline_imei)
        assert offline.status_code == 409 and offline.json()["error"] == "DEVICE_OFFLINE"

        first = asyncio.create_task(send(ingest, {"cmd": "check", "timeout_s": 0.5, "command_id": "c-check"}))

        async def in_flight() -> bool:
            return ingest.runtime.metrics.counters["commands_total"] == 1

        await wait_until(in_flight)
        busy = await send(
            ingest,
            {"cmd": "setWifi", "username": "cafe", "password": "s3cret", "command_id": "c-busy"},
            headers=caller,
        )
        assert busy.status_code == 409 and busy.json()["error"] == "DEVICE_BUSY"
        assert (await first).json()["data"]["outcome"] == "timeout"
        invalid = await send(ingest, {"cmd": "selfDestruct", "password": "hunter2", "command_id": "c-bad"})
        assert invalid.status_code == 400
        sent = await send(
            ingest, {"cmd": "setWifi", "username": "cafe", "password": "s3cret", "command_id": "c-ok"}
        )
        assert sent.json()["data"]["outcome"] == "ok"
        # The same command_id again: answered from the audit (the refused attempt with it is not "sent").
        again = await send(
            ingest, {"cmd": "setWifi", "username": "cafe", "password": "s3cret", "command_id": "c-busy"}
        )
        assert again.json()["data"]["outcome"] == "ok"

        rows = await ingest.runtime.spool.audit_rows(IMEI)
        assert [(a.command_id, a.outcome, a.refusal_code) for a in rows] == [
            ("c-check", "timeout", None),
            ("c-busy", "refused", "DEVICE_BUSY"),
            ("c-bad", "refused", "VALIDATION_ERROR"),
            ("c-ok", "ok", None),
            ("c-busy", "ok", None),
        ]
        events = await ingest.event_bodies("command_audit", IMEI)
        # Spooled as each one ends: the refusal while the check was in flight comes first.
        assert [(e["command_id"], e["outcome"], e.get("refusal_code")) for e in events] == [
            ("c-busy", "refused", "DEVICE_BUSY"),
            ("c-check", "timeout", None),
            ("c-bad", "refused", "VALIDATION_ERROR"),
            ("c-ok", "ok", None),
            ("c-busy", "ok", None),
        ]
        busy_event = events[0]
        assert busy_event["refusal_status"] == 409 and busy_event["requested_by"] == "admin:ops@example.com"
        assert busy_event["correlation_id"] == "corr-audit-1" and busy_event["cmd"] == "setWifi"
        assert events[2]["cmd"] == "selfDestruct" and events[2]["refusal_status"] == 400
        assert events[3]["qos"] == 1 and events[3]["elapsed_ms"] >= 0
        spooled = json.dumps(await ingest.event_bodies("command_audit"))
        assert "s3cret" not in spooled and "hunter2" not in spooled
        assert all(e["payload"].get("password") in (None, "***") for e in events)
        [offline_event] = await ingest.event_bodies("command_audit", offline_imei)
        assert (offline_event["outcome"], offline_event["refusal_code"]) == ("refused", "DEVICE_OFFLINE")


async def test_audit_forwarding_can_be_switched_off_for_a_legacy_core(
    tmp_path: Path, mqtt_broker: tuple[str, int], topic_prefix: str
) -> None:
    settings = settings_for(tmp_path, mqtt_broker, topic_prefix, commands={"forward_audit": False})
    async with (
        running_ingest(settings) as ingest,
        fake_cabinet(mqtt_broker, topic_prefix, FakeCabinet(silent)),
    ):
        await until_online(ingest)
        assert (await send(ingest, {"cmd": "reboot"})).json()["data"]["outcome"] == "ok"
        assert (await send(ingest, {"cmd": "check"}, imei="864601069949999")).status_code == 409
        assert [a.outcome for a in await ingest.runtime.spool.audit_rows(IMEI)] == ["ok"]
        assert await ingest.event_bodies("command_audit") == []
