"""The station simulator against the real MQTT broker and a recording device-endpoint peer over real HTTP.

The peer is a tiny Starlette app under uvicorn that plays the ingest's device endpoints (connect, upload,
return): it checks the MD5 signs, hands out the test broker in the connect answer and records every call.
An observer client on the broker collects what the cabinet publishes.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import pytest
import uvicorn
from chargeghar_ingest.simulator.cabinet import CabinetState
from chargeghar_ingest.simulator.device import CabinetConfig, VirtualCabinet, device_topics
from chargeghar_ingest.simulator.faults import Fault
from chargeghar_ingest.simulator.fleet import Fleet, FleetConfig, generate_imeis
from chargeghar_ingest.simulator.stack import die_with_parent
from chargeghar_protocol.codec import (
    CabinetSnapshot,
    FrameError,
    Heartbeat,
    PopupByHoleResult,
    PopupBySnResult,
    PopupState,
    ReturnReport,
)
from chargeghar_protocol.codec.decode import decode_frame
from chargeghar_protocol.signing import verify_device_sign
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

pytestmark = pytest.mark.mqtt

WAIT_S = 10.0


async def wait_until(
    condition: Callable[[], object], within_s: float = WAIT_S, what: str = "condition"
) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s}s waiting for {what}")
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------------------------- HTTP peer


@dataclass
class DevicePeer:
    """Records the device HTTP calls; answers like the ingest would (HttpResult envelope)."""

    broker: tuple[str, int]
    url: str = ""
    connects: list[dict[str, str]] = field(default_factory=list)
    uploads: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    returns: list[dict[str, str]] = field(default_factory=list)
    bad_signs: list[str] = field(default_factory=list)
    # Broker named in the connect answer when it should differ from the real one (override tests).
    advertised_broker: tuple[str, int] | None = None

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/iot/client/con", self._connect, methods=["GET", "POST"]),
                Route("/api/rentbox/upload/data", self._upload, methods=["POST"]),
                Route("/api/rentbox/order/return", self._return, methods=["GET", "POST"]),
            ]
        )

    def _check_sign(self, params: dict[str, str], path: str) -> None:
        if not verify_device_sign({k: v for k, v in params.items() if k != "sign"}, params.get("sign")):
            self.bad_signs.append(path)

    @staticmethod
    def _ok(data: object) -> JSONResponse:
        return JSONResponse(
            {"code": 200, "type": 0, "data": data, "msg": "ok", "time": int(time.time() * 1000)}
        )

    async def _connect(self, request: Request) -> JSONResponse:
        params = dict(request.query_params)
        self._check_sign(params, "connect")
        self.connects.append(params)
        imei = params["uuid"]
        host, port = self.advertised_broker or self.broker
        data = f"{imei},powerbank,{host},{port},device_{imei},pw{imei[-6:]},{int(time.time() * 1000)}"
        return self._ok(data)

    async def _upload(self, request: Request) -> JSONResponse:
        params = dict(request.query_params)
        self._check_sign(params, "upload")
        self.uploads.append((params, await request.body()))
        return self._ok(None)

    async def _return(self, request: Request) -> JSONResponse:
        params = dict(request.query_params)
        self._check_sign(params, "return")
        self.returns.append(params)
        return self._ok(None)

    def uploads_of(self, imei: str) -> list[bytes]:
        return [body for params, body in self.uploads if params.get("rentboxSN") == imei]


@pytest.fixture(scope="module")
async def device_peer(mqtt_broker: tuple[str, int]) -> AsyncIterator[DevicePeer]:
    peer = DevicePeer(broker=mqtt_broker)
    config = uvicorn.Config(peer.app(), host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started or task.done(), what="uvicorn start")
    if task.done():
        task.result()
    port = server.servers[0].sockets[0].getsockname()[1]
    peer.url = f"http://127.0.0.1:{port}"
    try:
        yield peer
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


# --------------------------------------------------------------------------------------------- MQTT side


@dataclass
class Observer:
    """A plain client that watches a prefix's device topics and can publish commands."""

    client: aiomqtt.Client
    prefix: str
    messages: list[tuple[str, bytes, float]] = field(default_factory=list)

    def frames_on(self, imei: str, channel: str = "update") -> list[bytes]:
        topic = getattr(device_topics(imei, self.prefix), channel)
        return [payload for name, payload, _ in self.messages if name == topic]

    def decoded(self, imei: str, frame_type: type[Any]) -> list[Any]:
        return [frame for frame, _ in self.decoded_with_arrival(imei, frame_type)]

    def decoded_with_arrival(self, imei: str, frame_type: type[Any]) -> list[tuple[Any, float]]:
        """Frames of one type published on the cabinet's update topic, with their arrival time."""
        topic = device_topics(imei, self.prefix).update
        found = []
        for name, payload, arrived_at in self.messages:
            if name != topic:
                continue
            try:
                frame = decode_frame(payload)
            except FrameError:
                continue
            if isinstance(frame, frame_type):
                found.append((frame, arrived_at))
        return found

    async def command(self, imei: str, cmd: str, data: str | None = None) -> float:
        body: dict[str, str] = {"cmd": cmd}
        if data is not None:
            body["data"] = data
        sent_at = time.monotonic()
        await self.client.publish(device_topics(imei, self.prefix).get, json.dumps(body), qos=0)
        return sent_at


@pytest.fixture
async def observer(mqtt_broker: tuple[str, int], topic_prefix: str) -> AsyncIterator[Observer]:
    host, port = mqtt_broker
    async with aiomqtt.Client(host, port, identifier=f"sim-observer-{uuid.uuid4().hex[:8]}") as client:
        watcher = Observer(client, topic_prefix)
        await client.subscribe(f"{topic_prefix}/powerbank/+/user/update", qos=1)
        await client.subscribe(f"{topic_prefix}/powerbank/+/user/heart", qos=1)

        async def collect() -> None:
            async for message in client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                watcher.messages.append((message.topic.value, payload, time.monotonic()))

        task = asyncio.create_task(collect())
        try:
            yield watcher
        finally:
            task.cancel()


CabinetFactory = Callable[..., Awaitable[VirtualCabinet]]


@pytest.fixture
async def start_cabinet(device_peer: DevicePeer, topic_prefix: str) -> AsyncIterator[CabinetFactory]:
    tasks: list[asyncio.Task[None]] = []

    async def start(slots: int = 8, banks: int = 5, **overrides: Any) -> VirtualCabinet:
        seed = uuid.uuid4().int % 10**9
        imei = generate_imeis(1, prefix="8646", seed=seed)[0]
        settings: dict[str, Any] = {
            "imei": imei,
            "slots": slots,
            "ingest_url": device_peer.url,
            "topic_prefix": topic_prefix,
            "first_upload_delay_s": 3600.0,
            "upload_interval_s": 3600.0,
            # Slow enough that a loaded CI machine never misses an echo by accident (two would reconnect).
            "heartbeat_interval_s": 2.0,
            "echo_timeout_s": 1.5,
            "seed": seed,
        }
        settings.update(overrides)
        state = CabinetState.empty(slots)
        state.fill(random.Random(seed), [seed % 10**7 + 10_000_000 + i for i in range(banks)])
        cabinet = VirtualCabinet(CabinetConfig(**settings), state=state)
        tasks.append(asyncio.create_task(cabinet.run()))
        await cabinet.wait_connected(WAIT_S)
        return cabinet

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def first_bank(cabinet: VirtualCabinet) -> int:
    return min(cabinet.state.banks())


# --------------------------------------------------------------------------------------------- tests


async def test_cabinet_connects_signed_and_its_upload_decodes_to_its_state(
    start_cabinet: CabinetFactory, device_peer: DevicePeer, mqtt_broker: tuple[str, int]
) -> None:
    cabinet = await start_cabinet(slots=12, banks=7, first_upload_delay_s=0.1)

    connect = next(call for call in device_peer.connects if call["uuid"] == cabinet.imei)
    assert (connect["deviceId"], connect["simMobile"]) == ("0", "")
    # The session went to the broker named in the connect answer (no override was configured).
    assert cabinet.credentials is not None
    assert (cabinet.credentials.host, cabinet.credentials.port) == mqtt_broker
    assert cabinet.credentials.username == f"device_{cabinet.imei}"

    await wait_until(lambda: device_peer.uploads_of(cabinet.imei), what="an HTTP upload")
    params = next(p for p, _ in device_peer.uploads if p["rentboxSN"] == cabinet.imei)
    assert params["signal"] == "CSQ:27"
    assert "connect" not in device_peer.bad_signs and "upload" not in device_peer.bad_signs

    snapshot = decode_frame(device_peer.uploads_of(cabinet.imei)[0], strict=True)
    assert isinstance(snapshot, CabinetSnapshot)
    assert snapshot.holes_per_board == (4, 8)
    in_frame = {hole.sn_int: (hole.hole, hole.soc) for hole in snapshot.holes if hole.has_bank}
    in_state = {
        bank.sn: (slot.hole, bank.soc) for slot in cabinet.state.slots.values() if (bank := slot.bank)
    }
    assert in_frame == in_state and len(in_frame) == 7
    # The peer records the call before the cabinet has read the answer; the counter follows shortly.
    await wait_until(lambda: cabinet.stats.uploads_sent >= 1, what="the upload counted as accepted")


async def test_broker_override_wins_over_the_connect_answer(
    start_cabinet: CabinetFactory, device_peer: DevicePeer, mqtt_broker: tuple[str, int]
) -> None:
    device_peer.advertised_broker = ("127.0.0.1", 9)  # nothing listens on the discard port
    try:
        cabinet = await start_cabinet(broker_host=mqtt_broker[0], broker_port=mqtt_broker[1])
    finally:
        device_peer.advertised_broker = None
    assert cabinet.credentials is not None and cabinet.credentials.port == 9
    assert cabinet.connected.is_set() and cabinet.stats.mqtt_sessions == 1


async def test_check_is_answered_with_a_snapshot_on_update(
    start_cabinet: CabinetFactory, observer: Observer
) -> None:
    cabinet = await start_cabinet(slots=24, banks=10)
    await observer.command(cabinet.imei, "check")
    await wait_until(lambda: observer.decoded(cabinet.imei, CabinetSnapshot), what="0x10 reply")
    snapshot = observer.decoded(cabinet.imei, CabinetSnapshot)[0]
    assert snapshot.slot_count == 24 and snapshot.checksum_valid
    assert {hole.sn_int for hole in snapshot.holes if hole.has_bank} == set(cabinet.state.banks())

    await observer.command(cabinet.imei, "check_all")
    await wait_until(lambda: len(observer.decoded(cabinet.imei, CabinetSnapshot)) == 2, what="second 0x10")


async def test_popup_sn_ejects_the_bank_and_answers_0x31(
    start_cabinet: CabinetFactory, observer: Observer
) -> None:
    cabinet = await start_cabinet()
    sn = first_bank(cabinet)
    hole = cabinet.state.slot_of(sn).hole  # type: ignore[union-attr]

    await observer.command(cabinet.imei, "popup_sn", str(sn))
    await wait_until(lambda: observer.decoded(cabinet.imei, PopupBySnResult), what="0x31 reply")

    reply = observer.decoded(cabinet.imei, PopupBySnResult)[0]
    assert (reply.hole, reply.sn_int, reply.state, reply.checksum_valid) == (
        hole,
        sn,
        PopupState.SUCCESS,
        True,
    )
    assert sn not in cabinet.state.banks()
    assert sn in cabinet.rented_banks


async def test_popup_of_a_missing_sn_answers_a_failure_state(
    start_cabinet: CabinetFactory, observer: Observer
) -> None:
    cabinet = await start_cabinet()
    banks_before = set(cabinet.state.banks())

    await observer.command(cabinet.imei, "popup_sn", "99999998")
    await wait_until(lambda: observer.decoded(cabinet.imei, PopupBySnResult), what="0x31 reply")

    reply = observer.decoded(cabinet.imei, PopupBySnResult)[0]
    assert reply.sn_int == 99999998
    assert not reply.succeeded and reply.state == PopupState.SN_NOT_FOUND
    assert set(cabinet.state.banks()) == banks_before


async def test_popup_by_hole_answers_0x21_with_the_board_address(
    start_cabinet: CabinetFactory, observer: Observer
) -> None:
    cabinet = await start_cabinet(slots=12, banks=12)
    await observer.command(cabinet.imei, "popup", "7")
    await wait_until(lambda: observer.decoded(cabinet.imei, PopupByHoleResult), what="0x21 reply")
    reply = observer.decoded(cabinet.imei, PopupByHoleResult)[0]
    # Hole 7 sits on the second board (0x20) of the 4 + 8 cabinet.
    assert (reply.board, reply.hole, reply.succeeded) == (0x20, 7, True)
    assert cabinet.state.slots[7].bank is None


async def test_heartbeats_are_echoed_by_the_broker_and_counted(
    start_cabinet: CabinetFactory, observer: Observer
) -> None:
    cabinet = await start_cabinet(heartbeat_interval_s=0.5, echo_timeout_s=1.0)
    await wait_until(lambda: cabinet.stats.heartbeats_sent >= 4, what="four heartbeats")
    await wait_until(lambda: cabinet.stats.heartbeat_echoes >= 4, what="four echoes")
    assert cabinet.stats.missed_echoes == 0 and cabinet.stats.reboots == 0

    heartbeats = [decode_frame(frame) for frame in observer.frames_on(cabinet.imei, "heart")]
    assert heartbeats and all(isinstance(frame, Heartbeat) for frame in heartbeats)
    assert heartbeats[0].csq == 27 and heartbeats[0].bp == 0  # type: ignore[union-attr]


async def test_two_missed_echoes_make_the_cabinet_reconnect_like_a_reboot(
    start_cabinet: CabinetFactory,
) -> None:
    cabinet = await start_cabinet(heartbeat_interval_s=1.0, echo_timeout_s=0.8)
    cabinet.inject(Fault.MISSING_HEARTBEAT_ECHO, times=2)
    await wait_until(lambda: cabinet.stats.reboots == 1, what="a reboot")
    await wait_until(
        lambda: cabinet.stats.mqtt_sessions == 2 and cabinet.connected.is_set(), what="reconnect"
    )
    assert cabinet.stats.missed_echoes == 2
    assert cabinet.stats.http_connects == 2  # a reboot starts over with the HTTP connect


async def test_frame_faults_put_damaged_frames_on_the_wire(
    start_cabinet: CabinetFactory, observer: Observer, device_peer: DevicePeer
) -> None:
    cabinet = await start_cabinet()

    cabinet.inject(Fault.BAD_CHECKSUM)
    await observer.command(cabinet.imei, "check")
    await wait_until(lambda: observer.frames_on(cabinet.imei), what="a reply")
    damaged = decode_frame(observer.frames_on(cabinet.imei)[0])
    assert isinstance(damaged, CabinetSnapshot) and not damaged.checksum_valid

    cabinet.inject(Fault.TRUNCATED_FRAME)
    await observer.command(cabinet.imei, "check")
    await wait_until(lambda: len(observer.frames_on(cabinet.imei)) == 2, what="a second reply")
    with pytest.raises(FrameError):
        decode_frame(observer.frames_on(cabinet.imei)[1])

    cabinet.inject(Fault.BAD_CHECKSUM)
    record = await cabinet.upload_now()
    assert record.channel == "http" and record.accepted
    upload = decode_frame(device_peer.uploads_of(cabinet.imei)[-1])
    assert isinstance(upload, CabinetSnapshot) and not upload.checksum_valid
    assert cabinet.faults.armed() == {}


async def test_failed_missing_and_slow_popup_replies(
    start_cabinet: CabinetFactory, observer: Observer
) -> None:
    cabinet = await start_cabinet(banks=4, slow_reply_s=1.0)
    jammed, lost, slow = sorted(cabinet.state.banks())[:3]

    cabinet.inject(Fault.FAILED_POPUP)
    await observer.command(cabinet.imei, "popup_sn", str(jammed))
    await wait_until(lambda: observer.decoded(cabinet.imei, PopupBySnResult), what="failed 0x31")
    failed = observer.decoded(cabinet.imei, PopupBySnResult)[0]
    assert failed.sn_int == jammed and failed.state == PopupState.FAILED
    assert jammed in cabinet.state.banks()

    cabinet.inject(Fault.MISSING_POPUP_REPLY)
    await observer.command(cabinet.imei, "popup_sn", str(lost))
    await wait_until(lambda: lost not in cabinet.state.banks(), what="silent eject")
    await asyncio.sleep(0.5)
    assert [reply.sn_int for reply in observer.decoded(cabinet.imei, PopupBySnResult)] == [jammed]

    cabinet.inject(Fault.SLOW_POPUP_REPLY)
    sent_at = await observer.command(cabinet.imei, "popup_sn", str(slow))
    await wait_until(lambda: len(observer.decoded(cabinet.imei, PopupBySnResult)) == 2, what="slow 0x31")
    reply, arrived_at = observer.decoded_with_arrival(cabinet.imei, PopupBySnResult)[1]
    assert reply.sn_int == slow and reply.succeeded
    assert arrived_at - sent_at >= 0.9


async def test_disconnect_fault_drops_the_session_and_the_cabinet_comes_back(
    start_cabinet: CabinetFactory, observer: Observer
) -> None:
    cabinet = await start_cabinet()
    cabinet.inject(Fault.DISCONNECT)
    await wait_until(
        lambda: cabinet.stats.mqtt_sessions == 2 and cabinet.connected.is_set(), what="reconnect"
    )
    await observer.command(cabinet.imei, "check")
    await wait_until(lambda: observer.decoded(cabinet.imei, CabinetSnapshot), what="reply after reconnect")


async def test_return_publishes_0x40_with_soc_and_calls_the_return_endpoint(
    start_cabinet: CabinetFactory, observer: Observer, device_peer: DevicePeer
) -> None:
    cabinet = await start_cabinet(banks=3)
    sn = first_bank(cabinet)
    await observer.command(cabinet.imei, "popup_sn", str(sn))
    await wait_until(lambda: sn in cabinet.rented_banks, what="eject")

    slot = await cabinet.return_bank(sn, soc=37, via="both")

    await wait_until(lambda: observer.decoded(cabinet.imei, ReturnReport), what="0x40")
    report = observer.decoded(cabinet.imei, ReturnReport)[0]
    assert (report.sn_int, report.hole, report.soc, report.succeeded) == (sn, slot.hole, 37, True)
    assert report.board == slot.board_address
    call = next(c for c in device_peer.returns if c["rentboxSN"] == cabinet.imei)
    assert (call["singleSN"], call["hole"]) == (str(sn), str(slot.hole))
    assert "return" not in device_peer.bad_signs
    assert sn in cabinet.state.banks() and sn not in cabinet.rented_banks


async def test_fleet_uploads_over_mqtt_and_returns_rented_banks_by_itself(
    device_peer: DevicePeer, observer: Observer, topic_prefix: str
) -> None:
    seed = uuid.uuid4().int % 10**9
    cabinet_settings = CabinetConfig(
        imei="0",
        ingest_url=device_peer.url,
        topic_prefix=topic_prefix,
        speed=600.0,  # uploads every 2 s
        first_upload_delay_s=0.2,
        upload_channel="mqtt",
        heartbeat_interval_s=2.0,
        echo_timeout_s=1.5,
    )
    fleet = Fleet(
        FleetConfig(stations=3, slots=6, seed=seed, cabinet=cabinet_settings, auto_return_after_s=600.0)
    )
    run = asyncio.create_task(fleet.run(duration_s=30))
    try:
        await fleet.wait_connected(WAIT_S)
        imeis = {cabinet.imei for cabinet in fleet.cabinets}
        await wait_until(
            lambda: all(observer.decoded(imei, CabinetSnapshot) for imei in imeis), what="MQTT uploads"
        )
        rented_from = fleet.cabinets[0]
        sn = first_bank(rented_from)
        await observer.command(rented_from.imei, "popup_sn", str(sn))
        await wait_until(lambda: sn in fleet.rented_banks, what="eject")
        # 600 simulated seconds at speed 600 ≈ 1 s later the bank is back in some cabinet of the fleet.
        await wait_until(lambda: sn not in fleet.rented_banks, what="auto return")
        holder = next(cabinet for cabinet in fleet.cabinets if sn in cabinet.state.banks())
        await wait_until(lambda: observer.decoded(holder.imei, ReturnReport), what="0x40 of the return")
        assert fleet.stats().heartbeat_echoes >= 3
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await fleet.aclose()


async def test_cli_runs_a_fleet_for_its_duration_and_exits_cleanly(
    device_peer: DevicePeer, topic_prefix: str
) -> None:
    seed = uuid.uuid4().int % 10**9
    imeis = generate_imeis(2, prefix="86460106", seed=seed)
    process = await asyncio.create_subprocess_exec(
        *die_with_parent([sys.executable]), "-m", "chargeghar_ingest.simulator",
        "--stations", "2", "--slots", "4", "--seed", str(seed), "--speed", "600",
        "--ingest-url", device_peer.url, "--topic-prefix", topic_prefix, "--duration", "2.5",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, output.decode()
    # Speed 600: first upload 0.1 s after start, then every 2 s.
    for imei in imeis:
        assert any(call["uuid"] == imei for call in device_peer.connects)
        assert device_peer.uploads_of(imei)
    assert b"stopped:" in output


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
async def test_cli_stops_cleanly_on_ctrl_c_and_sigterm(
    device_peer: DevicePeer, topic_prefix: str, stop_signal: signal.Signals
) -> None:
    seed = uuid.uuid4().int % 10**9
    process = await asyncio.create_subprocess_exec(
        *die_with_parent([sys.executable]), "-m", "chargeghar_ingest.simulator",
        "--stations", "3", "--slots", "4", "--seed", str(seed), "--speed", "600",
        "--heartbeat-interval", "0.2", "--upload-channel", "mqtt",
        "--ingest-url", device_peer.url, "--topic-prefix", topic_prefix,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    output = b""
    try:
        async with asyncio.timeout(30):  # hang guard
            while output.count(b"MQTT session open") < 3:
                line = await process.stdout.readline()
                assert line, f"the simulator exited early:\n{output.decode()}"
                output += line
        process.send_signal(stop_signal)
        async with asyncio.timeout(30):
            output += await process.stdout.read()
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, output.decode()
    assert b"stopped:" in output


# --------------------------------------------------------------------------------------------- shutdown


def cancel_on_next_echo(cabinet: VirtualCabinet, task: asyncio.Task[None], steps: int) -> asyncio.Event:
    """Cancel ``task`` ``steps`` event-loop steps after the cabinet's next heartbeat echo arrives.

    This is the shutdown race of the CI hang: on Python 3.11 ``asyncio.wait_for`` returns the result and
    drops the cancellation when both land in the same loop step. Sweeping ``steps`` puts the cancel at every
    point of the window, whatever the depth of the task tree between ``task`` and the heartbeat loop.
    """
    armed = asyncio.Event()
    original = cabinet._on_heartbeat_echo

    def cancel_after(remaining: int) -> None:
        if remaining == 0:
            task.cancel()
        else:
            asyncio.get_running_loop().call_soon(cancel_after, remaining - 1)

    def on_echo(session: Any, body: bytes) -> None:
        original(session, body)
        if session.echo_received.is_set() and not armed.is_set():
            armed.set()
            cancel_after(steps)

    cabinet._on_heartbeat_echo = on_echo  # type: ignore[method-assign]
    return armed


async def ended_within(task: asyncio.Task[None], within_s: float = WAIT_S) -> bool:
    """Whether ``task`` ends (hang guard, not a speed check); a task still running is cancelled again."""
    done, _ = await asyncio.wait({task}, timeout=within_s)
    if not done:
        for _ in range(20):  # old code: every further cancel is a new chance to end it
            task.cancel()
            if (await asyncio.wait({task}, timeout=0.5))[0]:
                break
    return bool(done)


@pytest.mark.parametrize("steps", range(6))
async def test_a_cancel_racing_a_heartbeat_echo_stops_the_cabinet(
    device_peer: DevicePeer, topic_prefix: str, steps: int
) -> None:
    seed = uuid.uuid4().int % 10**9
    config = CabinetConfig(
        imei=generate_imeis(1, prefix="8646", seed=seed)[0],
        slots=4,
        ingest_url=device_peer.url,
        topic_prefix=topic_prefix,
        first_upload_delay_s=3600.0,
        heartbeat_interval_s=0.5,
        echo_timeout_s=0.4,
        disconnect_pause_s=0.1,
        reconnect_initial_s=0.1,
    )
    cabinet = VirtualCabinet(config)
    run = asyncio.create_task(cabinet.run())
    await cabinet.wait_connected(WAIT_S)
    armed = cancel_on_next_echo(cabinet, run, steps)
    await asyncio.wait_for(armed.wait(), WAIT_S)
    assert await ended_within(run), "the cabinet kept running after it was cancelled"
    assert run.cancelled()
    assert cabinet.stats.mqtt_sessions == 1 and cabinet.stats.reboots == 0


@pytest.mark.parametrize("steps", range(8))
async def test_a_cancel_racing_a_heartbeat_echo_stops_the_fleet(
    device_peer: DevicePeer, topic_prefix: str, steps: int
) -> None:
    seed = uuid.uuid4().int % 10**9
    cabinet_settings = CabinetConfig(
        imei="0",
        ingest_url=device_peer.url,
        topic_prefix=topic_prefix,
        speed=600.0,
        first_upload_delay_s=0.05,
        upload_channel="mqtt",
        heartbeat_interval_s=0.5,
        echo_timeout_s=0.4,
        disconnect_pause_s=0.1,
        reconnect_initial_s=0.1,
    )
    fleet = Fleet(FleetConfig(stations=2, slots=4, seed=seed, cabinet=cabinet_settings))
    run = asyncio.create_task(fleet.run())
    try:
        await fleet.wait_connected(WAIT_S)
        armed = cancel_on_next_echo(fleet.cabinets[0], run, steps)
        await asyncio.wait_for(armed.wait(), WAIT_S)
        assert await ended_within(run), "Fleet.run kept running after it was cancelled"
        assert fleet.stats().reboots == 0
    finally:
        if not run.done():
            run.cancel()
            await asyncio.wait({run}, timeout=WAIT_S)  # bounded: before the fix this never ended
        await fleet.aclose()
