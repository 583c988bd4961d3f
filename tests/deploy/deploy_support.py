"""Read the shipped deploy files (compose.yaml, the k8s manifests, the env examples, the Dockerfile) into
the command line and the environment each service would get, and map them onto local servers.

Nothing here knows a setting by heart except the mapping of the in-cluster host names onto 127.0.0.1: the
environment is what the files say, with the placeholders replaced the way an operator is told to.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"

# The env examples the operations guide tells users to copy: compose's own .env, then one per service.
COMPOSE_ENV_EXAMPLE = DEPLOY / "env.example"
SERVICE_ENV_EXAMPLES = {"core.env": DEPLOY / "core.env.example", "ingest.env": DEPLOY / "ingest.env.example"}

PLACEHOLDER_MARK = "replace-with"

# The same server locations and CI rule as tests/conftest.py (whose module name other test folders'
# conftest files shadow, so it cannot be imported from here).
POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_SERVICES = os.environ.get("CHARGEGHAR_REQUIRE_SERVICES", "") not in ("", "0", "false", "no")


def service_unavailable(name: str, detail: str) -> None:
    message = f"{name} not available ({detail})"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message}; CHARGEGHAR_REQUIRE_SERVICES=1 makes this a failure", pytrace=False)
    pytest.skip(message)


def tcp_reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def fresh_postgres_database() -> AsyncIterator[str]:
    """A database of its own (dropped afterwards); yields its async SQLAlchemy URL."""
    import asyncpg

    name = f"cg_deploy_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    parts = urlsplit(POSTGRES_ADMIN_URL)
    try:
        yield urlunsplit(("postgresql+asyncpg", parts.netloc, "/" + name, "", ""))
    finally:
        admin = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[?-])([^}]*))?\}")


@dataclass
class ServiceSpec:
    """One process to start: its argv and exactly the environment the deploy files give it."""

    name: str
    argv: list[str]
    env: dict[str, str]
    # Kubernetes init containers run first, to completion (argv lists).
    init: list[list[str]] = field(default_factory=list)


@dataclass
class Stack:
    accounts: ServiceSpec
    core: ServiceSpec
    ingest: ServiceSpec
    # The values the operator filled in: admin login, etc.
    filled: dict[str, str]


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return values


def fill_placeholders(values: dict[str, str], filled: dict[str, str], scope: str) -> dict[str, str]:
    """Replace every ``replace-with-…`` value by a random one, as the operator is told to.

    ``filled`` remembers the choice per (scope, key), so one value referenced twice stays one value.
    """
    result = {}
    for key, value in values.items():
        if PLACEHOLDER_MARK in value:
            slot = f"{scope}:{key}"
            if slot not in filled:
                filled[slot] = secrets.token_hex(24)
            # A placeholder inside a URL (the database password) is replaced in place.
            value = re.sub(r"replace-with[A-Za-z0-9+\-]*", filled[slot], value)
        result[key] = value
    return result


def interpolate(text: str, variables: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:?message}``, ``${VAR:-default}`` and ``$$``."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        value = variables.get(name)
        if value:
            return value
        if operator in (":-", "-"):
            return argument or ""
        raise AssertionError(f"compose.yaml needs {name} ({argument}) but the env example does not set it")

    return INTERPOLATION.sub(one, text)


def dockerfile_env() -> dict[str, str]:
    """ENV of the image's final stage (PATH aside: the local venv provides the commands)."""
    stages = (DEPLOY / "Dockerfile").read_text().split("\nFROM ")
    env: dict[str, str] = {}
    for line in stages[-1].replace("\\\n", " ").splitlines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                key, _, value = pair.partition("=")
                if key != "PATH":
                    env[key] = value
    return env


def _as_env(environment: Any) -> dict[str, str]:
    if environment is None:
        return {}
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {str(key): str(value) for key, value in environment.items()}


def compose_stack() -> Stack:
    filled: dict[str, str] = {}
    variables = fill_placeholders(read_env_file(COMPOSE_ENV_EXAMPLE), filled, ".env")
    env_files = {
        name: fill_placeholders(read_env_file(path), filled, name)
        for name, path in SERVICE_ENV_EXAMPLES.items()
    }
    compose = yaml.safe_load(interpolate((DEPLOY / "compose.yaml").read_text(), variables))
    image_env = dockerfile_env()

    def spec(name: str) -> ServiceSpec:
        service = compose["services"][name]
        files = service.get("env_file", [])
        env = dict(image_env)
        for env_file in [files] if isinstance(files, str) else files:
            env.update(env_files[env_file])
        env.update(_as_env(service.get("environment")))
        return ServiceSpec(name, [str(arg) for arg in service["command"]], env)

    return Stack(spec("accounts"), spec("core"), spec("ingest"), {**variables})


def k8s_documents() -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        documents.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return documents


def k8s_stack() -> Stack:
    filled: dict[str, str] = {}
    documents = k8s_documents()
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in documents if d["kind"] == "ConfigMap"}
    secrets_ = {
        d["metadata"]["name"]: fill_placeholders(d.get("stringData", {}), filled, d["metadata"]["name"])
        for d in documents
        if d["kind"] == "Secret"
    }
    workloads = {
        d["metadata"]["name"]: d for d in documents if d["kind"] in ("Deployment", "StatefulSet", "Job")
    }
    image_env = dockerfile_env()

    def container_env(container: dict[str, Any], pod_name: str) -> dict[str, str]:
        env = dict(image_env)
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(config_maps[source["configMapRef"]["name"]])
            else:
                env.update(secrets_[source["secretRef"]["name"]])
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = str(item["value"])
                continue
            ref = item["valueFrom"]
            if "secretKeyRef" in ref:
                env[item["name"]] = secrets_[ref["secretKeyRef"]["name"]][ref["secretKeyRef"]["key"]]
            elif "configMapKeyRef" in ref:
                env[item["name"]] = config_maps[ref["configMapKeyRef"]["name"]][ref["configMapKeyRef"]["key"]]
            else:
                assert ref["fieldRef"]["fieldPath"] == "metadata.name", ref
                env[item["name"]] = pod_name
        return {key: str(value) for key, value in env.items()}

    def spec(workload: str, pod_name: str) -> ServiceSpec:
        pod = workloads[workload]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        init = [[str(arg) for arg in c["command"]] for c in pod.get("initContainers", [])]
        return ServiceSpec(
            workload, [str(arg) for arg in container["command"]], container_env(container, pod_name), init
        )

    variables = {
        "ADMIN_EMAIL": secrets_["chargeghar-admin"]["email"],
        "ADMIN_PASSWORD": secrets_["chargeghar-admin"]["password"],
    }
    return Stack(
        spec("chargeghar-accounts", "chargeghar-accounts-x1"),
        spec("chargeghar-core", "chargeghar-core-5d9f-abcde"),
        spec("chargeghar-ingest", "chargeghar-ingest-0"),
        variables,
    )


@dataclass
class LocalServers:
    """Where the in-cluster names point in this test run."""

    database_url: str
    redis_host: str
    redis_port: int
    broker_port: int
    core_ports: list[int]
    ingest_port: int
    spool_dir: Path
    redis_prefix: str


CORE_HOSTS = {"core", "chargeghar-core"}
INGEST_HOSTS = {"ingest", "chargeghar-ingest"}


def localize(spec: ServiceSpec, servers: LocalServers, replica: int = 0) -> tuple[list[str], dict[str, str]]:
    """The spec's argv and env with the cluster's host names mapped onto the local servers."""
    env: dict[str, str] = {}
    for key, value in spec.env.items():
        if value.startswith(("http://", "https://", "redis://", "postgresql")):
            parts = urlsplit(value)
            if parts.hostname == "postgres":
                value = servers.database_url
            elif parts.hostname == "redis":
                value = urlunsplit(
                    (parts.scheme, f"{servers.redis_host}:{servers.redis_port}", parts.path, "", "")
                )
            elif parts.hostname in CORE_HOSTS:
                value = urlunsplit(parts._replace(netloc=f"127.0.0.1:{servers.core_ports[0]}"))
            elif parts.hostname in INGEST_HOSTS:
                value = urlunsplit(parts._replace(netloc=f"127.0.0.1:{servers.ingest_port}"))
        elif value.startswith("/spool/"):
            value = str(servers.spool_dir / value.removeprefix("/spool/"))
        env[key] = value
    if env.get("INGEST_MQTT__HOST") in ("emqx", "mosquitto"):
        env["INGEST_MQTT__HOST"] = "127.0.0.1"
        env["INGEST_MQTT__PORT"] = str(servers.broker_port)
    # Shared local Redis: keys of this run get their own prefix (the deploy files use the default).
    env["CORE_REDIS__PREFIX"] = f"{servers.redis_prefix}core:"
    env["INGEST_REDIS__KEY_PREFIX"] = f"{servers.redis_prefix}ingest:"

    argv = list(spec.argv)
    for index, arg in enumerate(argv[:-1]):
        if arg == "--host":
            argv[index + 1] = "127.0.0.1"  # bound to loopback only: nothing leaves this machine
        if arg == "--port":
            argv[index + 1] = str(
                servers.core_ports[replica] if argv[index + 1] == "8000" else servers.ingest_port
            )
    # The image's PATH starts with its venv's bin; here that is the venv running the tests.
    argv[0] = str(Path(sys.executable).parent / argv[0])
    return argv, env
