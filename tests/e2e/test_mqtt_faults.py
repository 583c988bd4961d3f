"""MQTT uploads are not lost when the ingest is SIGKILLed or the broker restarts — with the shipped defaults.

Nothing MQTT-related is configured for the ingest here: it runs with the defaults a user gets (stable
client id ``ingest-<hostname>``, persistent session, QoS 1 subscriptions, short reconnect backoff), against
a private Mosquitto started from ``deploy/mosquitto/mosquitto.conf`` itself (only port, paths and
authentication swapped). Stations publish 0x10 uploads at QoS 1, each one carrying a unique bank serial;
every upload the broker acknowledged (PUBACK) must reach core's ``sync_logs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import random
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import pytest
import structlog
from chargeghar_ingest.simulator import frames
from chargeghar_ingest.simulator.cabinet import CabinetState, PowerBank
from chargeghar_ingest.simulator.stack import LocalStack, ServiceProcess, free_port, wait_for_port
from e2e_support import eventually, new_stack
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine

pytestmark = [pytest.mark.slow, pytest.mark.mqtt]

log = structlog.get_logger(__name__)

STATIONS = 15
UPLOAD_INTERVAL_S = 0.5
INGEST_DOWN_S = 14.0
BROKER_DOWN_S = 40.0
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def shipped_mosquitto_config(repo_root: Path, port: int, directory: Path) -> Path:
    """``deploy/mosquitto/mosquitto.conf`` with only the listener, data path and authentication replaced."""
    shipped = (repo_root / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    swaps = {
        r"^listener 1883$": f"listener {port} 127.0.0.1",
        r"^persistence_location .*$": f"persistence_location {directory}/",
        r"^allow_anonymous false$": "allow_anonymous true",
        r"^password_file .*$": "",
    }
    for pattern, replacement in swaps.items():
        shipped, count = re.subn(pattern, replacement, shipped, flags=re.MULTILINE)
        assert count == 1, f"the shipped mosquitto.conf no longer has a line matching {pattern!r}"
    # Run as root (containers), Mosquitto would switch to its own user, who cannot write the test's dir.
    path = directory / "mosquitto.conf"
    path.write_text(f"{shipped}\nuser {getpass.getuser()}\n")
    return path


class ShippedMosquitto:
    """A private broker on a free port running the shipped configuration, stoppable like a real restart."""

    def __init__(self, repo_root: Path, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = shipped_mosquitto_config(repo_root, self.port, directory)
        self.process = ServiceProcess(
            "mosquitto", [MOSQUITTO, "-c", str(config)], log_path=directory / "mosquitto.log"
        )

    def start(self) -> None:
        self.process.start()
        wait_for_port("127.0.0.1", self.port, 15, self.process)

    def stop(self) -> None:
        self.process.stop()  # SIGTERM: a clean restart (docker stop, rollout); it saves its sessions


@pytest.fixture
def shipped_mosquitto(tmp_path: Path, repo_root: Path) -> Iterator[ShippedMosquitto]:
    if not Path(MOSQUITTO).exists():
        pytest.skip("the mosquitto binary is not installed")
    broker = ShippedMosquitto(repo_root, tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mqtt_stack(
    e2e_database_url: str, shipped_mosquitto: ShippedMosquitto, tmp_path: Path, repo_root: Path
) -> Iterator[LocalStack]:
    stack = new_stack(e2e_database_url, ("127.0.0.1", shipped_mosquitto.port), tmp_path, repo_root)
    # The ingest's own default client id: the broker is private to this test, so nothing else uses it.
    stack.ingest.env = {k: v for k, v in stack.ingest.env.items() if k != "INGEST_MQTT__CLIENT_ID"}
    try:
        stack.prepare()
        stack.start()
        yield stack
    finally:
        stack.stop()


@dataclass
class Station:
    """Publishes a 0x10 upload every interval at QoS 1; reconnects at once after a broker outage."""

    imei: str
    number: int
    topic: str
    accepted: list[int] = field(default_factory=list)
    failed: int = 0
    _seq: int = 0

    def next_upload(self) -> tuple[int, bytes]:
        self._seq += 1
        marker = self.number * 1_000_000 + self._seq  # the bank serial core gets back: unique per upload
        state = CabinetState.empty(4)
        state.insert(PowerBank(sn=marker, charge=60.0), 1)
        return marker, frames.snapshot(state)

    async def run(self, port: int, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", port, identifier=f"st-{self.imei}", timeout=5
                ) as client:
                    while not stop.is_set():
                        marker, frame = self.next_upload()
                        try:
                            await client.publish(self.topic, frame, qos=1)
                        except aiomqtt.MqttError:
                            self.failed += 1  # no PUBACK: the station's loss, not the pipeline's
                            raise
                        self.accepted.append(marker)
                        await _pause(stop, UPLOAD_INTERVAL_S)
            except aiomqtt.MqttError:
                await _pause(stop, 0.2)  # broker away: try again soon, like a station does


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


class Fleet:
    def __init__(self, stack: LocalStack, port: int) -> None:
        base = random.randrange(10**12, 10**13)
        self.port = port
        self.stations = [Station(imei=f"86{base + n:013d}", number=n + 1, topic="") for n in range(STATIONS)]
        for station in self.stations:
            station.topic = f"{stack.config.topic_prefix}/powerbank/{station.imei}/user/update"
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(s.run(self.port, self._stop)) for s in self.stations]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    @property
    def imeis(self) -> list[str]:
        return [s.imei for s in self.stations]

    def accepted(self) -> set[int]:
        return {marker for s in self.stations for marker in s.accepted}


async def markers_in_core(engine: AsyncEngine, imeis: list[str]) -> dict[int, set[str]]:
    """Bank serial of every full event core logged for these stations → the event ids it came with."""
    query = text(
        "SELECT event_id, payload FROM sync_logs WHERE event_type = 'full' AND station_key IN :keys"
    ).bindparams(bindparam("keys", expanding=True))
    async with engine.connect() as connection:
        rows = (await connection.execute(query, {"keys": imeis})).all()
    found: dict[int, set[str]] = {}
    for event_id, payload in rows:
        body = json.loads(payload) if isinstance(payload, str) else payload
        for bank in body.get("power_banks", []):
            found.setdefault(int(bank["serial_number"]), set()).add(str(event_id))
    return found


async def assert_nothing_accepted_was_lost(engine: AsyncEngine, fleet: Fleet, scenario: str) -> None:
    accepted = fleet.accepted()

    async def all_arrived() -> bool:
        return accepted <= set(await markers_in_core(engine, fleet.imeis))

    with contextlib.suppress(AssertionError):  # the count below says what is missing
        await eventually(all_arrived, within_s=90, what="every accepted upload in core")
    found = await markers_in_core(engine, fleet.imeis)
    lost = sorted(accepted - set(found))
    twice = sum(1 for ids in found.values() if len(ids) > 1)
    log.warning(
        "test.mqtt_fault_counts",
        scenario=scenario,
        accepted=len(accepted),
        in_core=len(found),
        lost=len(lost),
        forwarded_twice=twice,
        not_acknowledged=sum(s.failed for s in fleet.stations),
    )
    assert not lost, f"{scenario}: {len(lost)} of {len(accepted)} accepted uploads never reached core"


async def _some_arrived(engine: AsyncEngine, fleet: Fleet) -> bool:
    return len(await markers_in_core(engine, fleet.imeis)) >= STATIONS


async def test_ingest_sigkill_under_qos1_load_loses_nothing(
    mqtt_stack: LocalStack, shipped_mosquitto: ShippedMosquitto, events_db: AsyncEngine
) -> None:
    fleet = Fleet(mqtt_stack, shipped_mosquitto.port)
    fleet.start()
    try:
        await eventually(lambda: _some_arrived(events_db, fleet), within_s=60, what="first uploads in core")
        mqtt_stack.ingest.kill()
        await asyncio.sleep(INGEST_DOWN_S)  # the stations keep publishing; the broker queues for the ingest
        await asyncio.to_thread(mqtt_stack.start_ingest)
        await asyncio.sleep(3.0)  # a few more uploads on the resumed session
    finally:
        await fleet.stop()
    assert len(fleet.accepted()) >= STATIONS * INGEST_DOWN_S  # uploads were accepted all along
    await assert_nothing_accepted_was_lost(events_db, fleet, "ingest SIGKILL")


async def test_broker_restart_loses_nothing_the_broker_accepted(
    mqtt_stack: LocalStack, shipped_mosquitto: ShippedMosquitto, events_db: AsyncEngine
) -> None:
    fleet = Fleet(mqtt_stack, shipped_mosquitto.port)
    fleet.start()
    try:
        await eventually(lambda: _some_arrived(events_db, fleet), within_s=60, what="first uploads in core")
        await asyncio.to_thread(shipped_mosquitto.stop)
        await asyncio.sleep(BROKER_DOWN_S)  # the ingest's reconnect backoff grows meanwhile
        before = len(fleet.accepted())
        await asyncio.to_thread(shipped_mosquitto.start)
        # The stations are back within a fraction of a second and publish at once, whether or not the
        # ingest has reconnected yet: those uploads wait in its persisted session.
        await eventually(
            lambda: len(fleet.accepted()) >= before + 4 * STATIONS, within_s=30, what="uploads after restart"
        )
    finally:
        await fleet.stop()
    await assert_nothing_accepted_was_lost(events_db, fleet, "broker restart")
