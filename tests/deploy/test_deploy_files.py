"""The shipped deploy files start: compose.yaml and the k8s manifests, run as local processes.

The smoke test takes each service's command and environment from the files (deploy_support), maps the
in-cluster host names onto the local PostgreSQL (a fresh database), Redis and a private Mosquitto, starts
two core replicas and the accounts job at once against the empty database (the migration lock), then the
ingest, and checks: the admin logs in, the ingest logs in and its signed events reach core, and a rental
popup travels core → ingest → MQTT → a simulated cabinet and back.
"""

from __future__ import annotations

import asyncio
import copy
import os
import random
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from chargeghar_ingest.simulator.cabinet import CabinetState
from chargeghar_ingest.simulator.device import CabinetConfig, VirtualCabinet
from chargeghar_ingest.simulator.stack import die_with_parent
from chargeghar_protocol.signing import device_sign
from deploy_support import (
    COMPOSE_ENV_EXAMPLE,
    DEPLOY,
    POSTGRES_ADMIN_URL,
    REQUIRE_SERVICES,
    SERVICE_ENV_EXAMPLES,
    LocalServers,
    ServiceSpec,
    Stack,
    compose_stack,
    dockerfile_env,
    free_port,
    fresh_postgres_database,
    k8s_documents,
    k8s_stack,
    localize,
    read_env_file,
    service_unavailable,
    tcp_reachable,
)
from pydantic import ValidationError

START_TIMEOUT_S = 120.0  # two cores and a job migrating at once on a loaded 2-CPU CI machine
FLOW_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------------------- static checks


def test_compose_parses_for_compose_v1_and_gives_each_service_only_its_own_secrets() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    # docker-compose 1.x refuses a top-level `name:` (and any key it does not know).
    assert set(compose) <= {"version", "services", "volumes", "networks", "configs", "secrets"} | {
        key for key in compose if key.startswith("x-")
    }
    stack = compose_stack()
    core, ingest, accounts = stack.core.env, stack.ingest.env, stack.accounts.env
    assert core["CORE_PAYMENTS__SANDBOX_ENABLED"] == "false"
    assert core["CORE_RENTALS__INGEST_URL"] == "http://ingest:8100"
    # One shared HMAC value, so the ingest's events are accepted.
    assert core["CORE_HMAC__SECRET"] == ingest["INGEST_CORE__HMAC_SECRET"]
    assert ingest["INGEST_CORE__PASSWORD"] == accounts["CHARGEGHAR_SERVICE_PASSWORD"]
    image = dockerfile_env()  # the image's ENV is the same for every service and holds no secret
    assert not [key for key in core if key.startswith("INGEST_") and key not in image]
    assert not [key for key in ingest if key.startswith(("CORE_", "POSTGRES_", "CHARGEGHAR_"))]
    assert "CHARGEGHAR_ADMIN_PASSWORD" not in core
    assert ingest["INGEST_MQTT__PUBLIC_HOST"] not in ("", "127.0.0.1", "localhost")
    assert ingest["INGEST_SPOOL__PATH"].startswith("/spool/")
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "install -d -o 10001 -g 10001 /spool" in dockerfile


def test_env_examples_are_refused_in_production_until_filled_in() -> None:
    """The shipped placeholders must not pass the production checks (they used to, being 32+ long)."""
    from chargeghar_core.settings import Settings
    from chargeghar_ingest.settings import IngestSettings

    variables = read_env_file(COMPOSE_ENV_EXAMPLE)
    core = read_env_file(SERVICE_ENV_EXAMPLES["core.env"])
    ingest = read_env_file(SERVICE_ENV_EXAMPLES["ingest.env"])
    real = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822c"
    with pytest.raises(ValidationError, match="CORE_JWT__SECRET"):
        Settings.model_validate(
            {
                "environment": "production",
                "jwt": {"secret": core["CORE_JWT__SECRET"]},
                "hmac": {"secret": real},
            }
        )
    with pytest.raises(ValidationError, match="CORE_HMAC__SECRET"):
        Settings.model_validate(
            {
                "environment": "production",
                "jwt": {"secret": real},
                "hmac": {"secret": variables["HMAC_SECRET"]},
            }
        )
    with pytest.raises(ValidationError, match="CORE_HMAC__PREVIOUS_SECRETS"):
        Settings.model_validate(
            {
                "environment": "production",
                "jwt": {"secret": real},
                "hmac": {"secret": real, "previous_secrets": "CHANGE-ME-old-key-0123456789abcdef0123"},
            }
        )
    with pytest.raises(ValidationError, match=re.escape("device.credential_secret, mqtt.password")):
        IngestSettings.model_validate(
            {
                "environment": "production",
                "core": {"password": real, "hmac_secret": real},
                "mqtt": {"username": "ingest", "password": ingest["INGEST_MQTT__PASSWORD"]},
                "device": {"credential_secret": ingest["INGEST_DEVICE__CREDENTIAL_SECRET"]},
            }
        )
    for secret_document in (d for d in k8s_documents() if d["kind"] == "Secret"):
        for key, value in secret_document["stringData"].items():
            if "secret" in key.lower() or "password" in key.lower():
                assert "replace-with" in value, (secret_document["metadata"]["name"], key)


def test_k8s_manifests_have_what_a_cluster_needs() -> None:
    documents = k8s_documents()
    by_kind: dict[tuple[str, str], dict[str, Any]] = {
        (d["kind"], d["metadata"]["name"]): d for d in documents
    }
    ingest = by_kind[("StatefulSet", "chargeghar-ingest")]
    governing = by_kind[("Service", ingest["spec"]["serviceName"])]
    assert governing["spec"]["clusterIP"] == "None"
    pod = ingest["spec"]["template"]["spec"]
    assert pod["securityContext"]["fsGroup"] == 10001
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    stack = k8s_stack()
    assert stack.ingest.env["INGEST_MQTT__CLIENT_ID"] == "chargeghar-ingest-0"
    assert stack.ingest.env["INGEST_MQTT__PUBLIC_PORT"] == "1883"
    assert stack.ingest.env["INGEST_MQTT__PUBLIC_HOST"] not in ("", "127.0.0.1")
    assert stack.core.env["CORE_PAYMENTS__SANDBOX_ENABLED"] == "false"
    assert urlsplit_host(stack.core.env["CORE_RENTALS__INGEST_URL"]) == "chargeghar-ingest"
    assert stack.core.env["CORE_HMAC__SECRET"] == stack.ingest.env["INGEST_CORE__HMAC_SECRET"]
    assert stack.accounts.argv[:2] == ["chargeghar", "bootstrap-accounts"]
    image = dockerfile_env()
    assert not [key for key in stack.core.env if key.startswith("INGEST_") and key not in image]
    assert not [key for key in stack.ingest.env if key.startswith("CORE_")]


def urlsplit_host(url: str) -> str | None:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname


def _kubernetes_validate() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        if REQUIRE_SERVICES:
            pytest.fail("kubernetes-validate is not installed (a dev dependency)", pytrace=False)
        pytest.skip("kubernetes-validate is not installed")
    return kubernetes_validate


def test_k8s_manifests_match_the_kubernetes_schemas_offline() -> None:
    """kubernetes-validate ships the API schemas inside the package: no network, no cluster."""
    validator = _kubernetes_validate()
    documents = k8s_documents()
    assert {d["kind"] for d in documents} >= {
        "Deployment",
        "StatefulSet",
        "Service",
        "ConfigMap",
        "Job",
        "Secret",
    }
    for document in documents:
        validator.validate(document, validator.latest_version(), strict=True)
    # The validator is not a rubber stamp: a misspelt field of the StatefulSet is refused.
    broken = copy.deepcopy(next(d for d in documents if d["kind"] == "StatefulSet"))
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(validator.ValidationError):
        validator.validate(broken, validator.latest_version(), strict=True)


# ------------------------------------------------------------------------------------ migration lock


@pytest.mark.postgres
async def test_migration_waits_for_the_advisory_lock(postgres_available: bool) -> None:
    """While another process holds the migration lock, `migrate` waits; it runs once the lock is free."""
    import asyncpg
    from chargeghar_core.kit.migrate import MIGRATION_LOCK_KEY, migrate
    from chargeghar_core.settings import DatabaseSettings

    if not postgres_available:
        service_unavailable("PostgreSQL", POSTGRES_ADMIN_URL)
    async with fresh_postgres_database() as url:
        plain_url = url.replace("postgresql+asyncpg://", "postgresql://")
        holder = await asyncpg.connect(plain_url, timeout=5)
        try:
            await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
            task = asyncio.create_task(migrate(DatabaseSettings(url=url)))
            await asyncio.sleep(2.0)
            assert not task.done(), "migrate ran while another replica held the migration lock"
            assert await holder.fetchval("SELECT to_regclass('alembic_version')") is None
            await holder.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
            await asyncio.wait_for(task, 90)
            assert await holder.fetchval("SELECT count(*) FROM alembic_version") == 1
        finally:
            await holder.close()


# --------------------------------------------------------------------------------------- smoke test


class Processes:
    """Children started for one test; every one is stopped at the end (and dies with pytest anyway)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("wb")
        # Exactly the files' environment; PATH and HOME only because a process needs them to run at all.
        full_env = {**env, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd)}
        process = subprocess.Popen(
            die_with_parent(argv), env=full_env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.children.append((name, process))
        return process

    def log_of(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def stop_all(self) -> None:
        for _, process in self.children:
            if process.poll() is None:
                process.terminate()
        for _, process in self.children:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@contextmanager
def private_mosquitto(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    config = tmp_path / "mosquitto.conf"
    # The broker's authentication is EMQX's HTTP call to the ingest, checked separately below.
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    try:
        process = subprocess.Popen(
            die_with_parent(["mosquitto", "-c", str(config)]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        service_unavailable("mosquitto binary", "not installed")
        raise
    try:
        deadline = time.monotonic() + 15
        while not tcp_reachable("127.0.0.1", port, timeout=0.2):
            assert process.poll() is None and time.monotonic() < deadline, "mosquitto did not start"
            time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


async def wait_http(
    processes: Processes, name: str, process: subprocess.Popen[bytes], url: str, timeout_s: float
) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=3.0) as client:
        while True:
            if process.poll() is not None:
                raise AssertionError(f"{name} exited with {process.returncode}:\n{processes.log_of(name)}")
            try:
                response = await client.get(url)
                if response.status_code == 200:
                    return response
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{name} not ready at {url} within {timeout_s} s:\n{processes.log_of(name)}"
                )
            await asyncio.sleep(0.3)


async def wait_exit(
    processes: Processes, name: str, process: subprocess.Popen[bytes], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while process.poll() is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} still running after {timeout_s} s:\n{processes.log_of(name)}")
        await asyncio.sleep(0.2)
    assert process.returncode == 0, f"{name} exited with {process.returncode}:\n{processes.log_of(name)}"


@asynccontextmanager
async def running_cabinet(imei: str, ingest_url: str, broker_port: int) -> AsyncIterator[VirtualCabinet]:
    state = CabinetState.empty(4)
    state.fill(random.Random(7), [40818052, 40818053], min_soc=80)
    config = CabinetConfig(
        imei=imei,
        slots=4,
        ingest_url=ingest_url,
        # The connect answer names the public broker (checked); the cabinet reaches the private one.
        broker_host="127.0.0.1",
        broker_port=broker_port,
        first_upload_delay_s=0.2,
        upload_interval_s=3600.0,
        heartbeat_interval_s=2.0,
        echo_timeout_s=5.0,
    )
    cabinet = VirtualCabinet(config, state=state)
    task = asyncio.create_task(cabinet.run())
    try:
        await cabinet.wait_connected(30)
        yield cabinet
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _connect_params(imei: str) -> dict[str, str]:
    params = {"uuid": imei, "deviceId": "0", "simUUID": "", "simMobile": ""}
    return {**params, "sign": device_sign(params)}


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url}: {response.text}"
    )
    return response.json()["data"]


@pytest.fixture(params=["compose", "k8s"])
def stack(request: pytest.FixtureRequest) -> Stack:
    return compose_stack() if request.param == "compose" else k8s_stack()


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.mqtt
@pytest.mark.slow
async def test_shipped_deploy_files_start_and_work(
    stack: Stack, tmp_path: Path, postgres_available: bool, redis_url: str
) -> None:
    if not postgres_available:
        service_unavailable("PostgreSQL", POSTGRES_ADMIN_URL)
    from urllib.parse import urlsplit

    redis_parts = urlsplit(redis_url)
    processes = Processes(tmp_path)
    (tmp_path / "spool").mkdir()
    try:
        with private_mosquitto(tmp_path) as broker_port:
            async with fresh_postgres_database() as database_url:
                servers = LocalServers(
                    database_url=database_url,
                    redis_host=redis_parts.hostname or "127.0.0.1",
                    redis_port=redis_parts.port or 6379,
                    broker_port=broker_port,
                    core_ports=[free_port(), free_port()],
                    ingest_port=free_port(),
                    spool_dir=tmp_path / "spool",
                    redis_prefix=f"cgdeploy:{uuid.uuid4().hex[:8]}:",
                )
                try:
                    await _run_stack(stack, servers, processes, tmp_path)
                finally:
                    processes.stop_all()
    finally:
        processes.stop_all()


async def _start_and_wait_all(
    specs: list[tuple[str, ServiceSpec, int]], servers: LocalServers, processes: Processes, cwd: Path
) -> None:
    """Kubernetes-style: every pod's init containers at once, each pod's own in order."""

    async def init_then(name: str, spec: ServiceSpec, replica: int) -> None:
        _, env = localize(spec, servers, replica)
        for index, init_argv in enumerate(spec.init):
            init_spec = ServiceSpec(f"{name}-init{index}", init_argv, spec.env)
            argv, _ = localize(init_spec, servers, replica)
            process = processes.start(init_spec.name, argv, env, cwd)
            await wait_exit(processes, init_spec.name, process, START_TIMEOUT_S)

    await asyncio.gather(*(init_then(name, spec, replica) for name, spec, replica in specs))


async def _run_stack(stack: Stack, servers: LocalServers, processes: Processes, cwd: Path) -> None:
    # Two core replicas and the accounts job at once, against an empty database: the migration lock.
    await _start_and_wait_all(
        [("core-a", stack.core, 0), ("core-b", stack.core, 1), ("accounts", stack.accounts, 0)],
        servers,
        processes,
        cwd,
    )
    started = {}
    for name, spec, replica in (
        ("core-a", stack.core, 0),
        ("core-b", stack.core, 1),
        ("accounts", stack.accounts, 0),
    ):
        argv, env = localize(spec, servers, replica)
        started[name] = processes.start(name, argv, env, cwd)
    await wait_exit(processes, "accounts", started["accounts"], START_TIMEOUT_S)
    core_urls = [f"http://127.0.0.1:{port}" for port in servers.core_ports]
    for name, url in zip(("core-a", "core-b"), core_urls, strict=True):
        await wait_http(processes, name, started[name], f"{url}/health/ready", START_TIMEOUT_S)

    argv, ingest_env = localize(stack.ingest, servers)
    ingest = processes.start("ingest", argv, ingest_env, cwd)
    ingest_url = f"http://127.0.0.1:{servers.ingest_port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while (await wait_http(processes, "ingest", ingest, f"{ingest_url}/health", START_TIMEOUT_S)).json()[
        "mqtt"
    ] != "connected":
        assert time.monotonic() < deadline, processes.log_of("ingest")
        await asyncio.sleep(0.3)

    async with httpx.AsyncClient(timeout=FLOW_TIMEOUT_S) as http:
        # The admin the one-shot job created logs in (on the second replica: they share the database).
        login = ok(
            await http.post(
                f"{core_urls[1]}/api/admin/login",
                json={"email": stack.filled["ADMIN_EMAIL"], "password": stack.filled["ADMIN_PASSWORD"]},
            )
        )
        admin = {"Authorization": f"Bearer {login['access_token']}"}
        assert login["user"]["role"] == "admin"

        # EMQX's HTTP authentication lets the ingest itself in with its own broker login, nobody else.
        own = {"clientid": "ingest-x", "username": ingest_env["INGEST_MQTT__USERNAME"]}
        auth = await http.post(
            f"{ingest_url}/api/emqx/auth", json={**own, "password": ingest_env["INGEST_MQTT__PASSWORD"]}
        )
        assert auth.json() == {"result": "allow"}
        wrong = await http.post(f"{ingest_url}/api/emqx/auth", json={**own, "password": "wrong"})
        assert wrong.json() == {"result": "deny"}

        imei = f"8646010{random.randrange(10**7, 10**8)}"
        # Production provisioning is `registry`: an unknown station gets no credentials until an admin
        # registers (or approves) its IMEI.
        refused = await http.get(
            f"{ingest_url}/api/iot/client/con", params=_connect_params(imei), timeout=FLOW_TIMEOUT_S
        )
        assert refused.json()["code"] == 403 and refused.json()["data"] is None, refused.text
        pending = ok(await http.get(f"{core_urls[0]}/api/admin/devices?status=pending", headers=admin))
        assert imei in [device["imei"] for device in pending["items"]]
        ok(await http.post(f"{core_urls[1]}/api/admin/devices/{imei}/approve", headers=admin))
        async with running_cabinet(imei, ingest_url, servers.broker_port) as cabinet:
            assert cabinet.credentials is not None
            assert cabinet.credentials.host == ingest_env["INGEST_MQTT__PUBLIC_HOST"]
            # The cabinet's upload reaches core only if the ingest logged in and signed with the shared key.
            station = await _station_at_core(http, core_urls[0], admin, imei, processes)
            await _rent_one_bank(http, core_urls, admin, station, cabinet)


async def _station_at_core(
    http: httpx.AsyncClient, core_url: str, admin: dict[str, str], imei: str, processes: Processes
) -> dict[str, Any]:
    deadline = time.monotonic() + FLOW_TIMEOUT_S
    while True:
        page = ok(await http.get(f"{core_url}/api/admin/stations", headers=admin))
        found = [station for station in page["items"] if station["imei"] == imei]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"the station never reached core:\n{processes.log_of('ingest')}"
        await asyncio.sleep(0.5)


async def _rent_one_bank(
    http: httpx.AsyncClient,
    core_urls: list[str],
    admin: dict[str, str],
    station: dict[str, Any],
    cabinet: VirtualCabinet,
) -> None:
    core = core_urls[0]
    ok(
        await http.patch(
            f"{core}/api/admin/stations/{station['id']}",
            headers=admin,
            json={"name": "Smoke test", "latitude": 27.7, "longitude": 85.3, "is_deployed": True},
        )
    )
    package = ok(
        await http.post(
            f"{core}/api/admin/packages",
            headers=admin,
            json={"name": "1 hour", "duration_minutes": 60, "price_paisa": 1000},
        ),
        201,
    )
    renter = ok(
        await http.post(
            f"{core}/api/renters/register",
            json={"email": f"r{uuid.uuid4().hex[:8]}@example.com", "password": "renter-password-1"},
        ),
        201,
    )
    ok(
        await http.post(
            f"{core}/api/admin/wallets/{renter['renter']['id']}/adjustments",
            headers=admin,
            json={"amount_paisa": 5000, "reason": "smoke test"},
        )
    )
    banks_before = len(cabinet.state.banks())
    started = await http.post(
        f"{core_urls[1]}/api/rentals",
        headers={"Authorization": f"Bearer {renter['access_token']}"},
        json={"station_id": station["id"], "package_id": package["id"]},
    )
    # 201: core's signed command was accepted by the ingest, published, and the cabinet's eject answered.
    assert started.status_code == 201, started.text
    assert started.json()["data"]["status"] == "ACTIVE"
    assert len(cabinet.state.banks()) == banks_before - 1


def test_bootstrap_accounts_is_idempotent_and_rotates_the_service_password(tmp_path: Path) -> None:
    """The one-shot job may run on every `up`: the second run creates nothing and syncs a new password."""
    chargeghar = str(Path(sys.executable).parent / "chargeghar")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "CORE_ENVIRONMENT": "test",
        "CORE_DB__URL": f"sqlite+aiosqlite:///{tmp_path / 'core.sqlite3'}",
        "CHARGEGHAR_ADMIN_EMAIL": "admin@chargeghar.local",
        "CHARGEGHAR_ADMIN_PASSWORD": "a-long-admin-password-0123",
        "CHARGEGHAR_SERVICE_EMAIL": "ingest@chargeghar.local",
        "CHARGEGHAR_SERVICE_PASSWORD": "first-service-password-0123",
    }

    def run(**overrides: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [chargeghar, "bootstrap-accounts", "--migrate"],
            env={**env, **overrides},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )

    first = run()
    assert first.returncode == 0, first.stderr
    assert "created admin account" in first.stdout and "created service account" in first.stdout
    again = run(CHARGEGHAR_SERVICE_PASSWORD="rotated-service-password-0123")
    assert again.returncode == 0, again.stderr
    assert "admin account admin@chargeghar.local exists already" in again.stdout
    assert "updated the password of service account" in again.stdout
    placeholder = run(CHARGEGHAR_ADMIN_PASSWORD="replace-with-a-long-random-password")
    assert placeholder.returncode == 2 and "placeholder" in placeholder.stderr
    # An existing account of another role is never silently promoted.
    clash = run(CHARGEGHAR_SERVICE_EMAIL="admin@chargeghar.local")
    assert clash.returncode == 1 and "role admin" in clash.stderr
