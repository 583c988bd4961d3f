"""Run the system as child processes: broker, core, ingest (for `make dev`, end-to-end tests, benchmarks).

Each part is a :class:`ServiceProcess`: started with its settings as environment variables, its output
appended to a log file, stopped with SIGTERM (SIGKILL after a grace period) or killed outright. On Linux every
child also dies with the process that started it (:func:`die_with_parent`), so a runner that is killed
(SIGKILL, a CI time limit) leaves no broker or service behind. Nothing here imports core or ingest code; the
parts are reached only over their command lines and HTTP APIs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

__all__ = [
    "LocalStack",
    "ServiceProcess",
    "StackConfig",
    "StackError",
    "die_with_parent",
    "embedded_broker_process",
    "free_port",
    "mosquitto_config",
    "mosquitto_process",
    "port_open",
    "python_module",
    "wait_for_http",
    "wait_for_port",
]


class StackError(RuntimeError):
    """A child process did not start, or a start-up step failed."""


# Run by the child's own interpreter before it becomes the real command: prctl(PR_SET_PDEATHSIG, SIGKILL)
# survives the exec. Done in a fresh process rather than in a Popen preexec_fn, which is unsafe when the
# parent has threads (pytest, asyncio executors). If the parent died before the prctl, nobody would send the
# signal: the getppid check covers that window.
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_PDEATHSIG) failed: errno %d" % ctypes.get_errno())
if os.getppid() != int(sys.argv[1]):
    sys.exit("parent exited before the child started")
os.execvp(sys.argv[2], sys.argv[2:])
"""


def die_with_parent(command: Sequence[str]) -> list[str]:
    """``command`` made to die (SIGKILL) when the process starting it dies, even by SIGKILL (Linux only).

    The kernel sends the signal when the *thread* that started the child ends: start children from the
    main thread or from a thread that lives as long as they should (``asyncio.to_thread`` workers do).
    """
    if not sys.platform.startswith("linux"):
        return list(command)
    return [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *command]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, within_s: float, process: ServiceProcess | None = None) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if process is not None:
            process.check_alive()
        time.sleep(0.1)
    raise StackError(f"nothing listens on {host}:{port} after {within_s:.0f}s")


def wait_for_http(url: str, within_s: float, process: ServiceProcess | None = None) -> None:
    """Poll ``url`` until it answers 2xx (the service's health endpoint)."""
    deadline = time.monotonic() + within_s
    last_error = "no answer"
    while time.monotonic() < deadline:
        if process is not None:
            process.check_alive()
        try:
            response = httpx.get(url, timeout=2.0)
            if response.is_success:
                return
            last_error = f"HTTP {response.status_code}"
        except httpx.HTTPError as error:
            last_error = str(error) or type(error).__name__
        time.sleep(0.2)
    raise StackError(f"{url} not healthy after {within_s:.0f}s ({last_error})")


@dataclass
class ServiceProcess:
    """One child process with its own environment and log file."""

    name: str
    command: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    cwd: Path | None = None
    # False only for a child meant to outlive its starter (none so far).
    dies_with_parent: bool = True
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self) -> ServiceProcess:
        if self.process is not None and self.process.poll() is None:
            raise StackError(f"{self.name} is already running")
        environment = {**os.environ, **self.env}
        output: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
            output = self._log
        command = die_with_parent(self.command) if self.dies_with_parent else list(self.command)
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and fixed arguments
            command,
            env=environment,
            cwd=self.cwd,
            stdout=output,
            stderr=subprocess.STDOUT,
            # Own process group: Ctrl-C in the terminal reaches the runner, which stops children in order.
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise StackError(f"{self.name} exited with status {self.process.returncode}{self._log_tail()}")

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace_s``; returns the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._close_log()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL at once (a crash, as far as the process can tell)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None

    def _log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "\n--- last lines of " + str(self.log_path) + " ---\n" + "\n".join(text)


def python_module(module: str, *args: str) -> list[str]:
    """Command line running ``python -m module args`` with this interpreter (the workspace venv)."""
    return [sys.executable, "-m", module, *args]


def mosquitto_config(port: int, directory: Path) -> Path:
    """A throwaway Mosquitto configuration: anonymous loopback listener, deep queues, no persistence."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"mosquitto-{port}.conf"
    path.write_text(
        "\n".join(
            [
                f"listener {port} 127.0.0.1",
                "allow_anonymous true",
                "persistence false",
                # The shared test broker drops beyond 1000 queued messages per client; a benchmark must not.
                "max_queued_messages 1000000",
                "max_inflight_messages 0",
                "max_keepalive 65535",
                "log_type error",
                "log_type warning",
                "",
            ]
        )
    )
    return path


def mosquitto_process(port: int, directory: Path) -> ServiceProcess:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        raise StackError("mosquitto is not installed")
    config = mosquitto_config(port, directory)
    return ServiceProcess(
        "mosquitto", [binary, "-c", str(config)], log_path=directory / f"mosquitto-{port}.log"
    )


def embedded_broker_process(port: int, log_path: Path | None = None) -> ServiceProcess:
    return ServiceProcess(
        "broker",
        python_module("chargeghar_ingest.embedded_broker", "--host", "127.0.0.1", "--port", str(port)),
        log_path=log_path,
    )


DEV_HMAC_SECRET = "dev-secret"  # noqa: S105 - the development default both services share
SERVICE_EMAIL = "ingest@chargeghar.local"
SERVICE_PASSWORD = "ingest-dev-password"  # noqa: S105 - local stacks only


@dataclass
class StackConfig:
    """Where the parts of a local stack listen and keep their files."""

    var_dir: Path
    database_url: str
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    topic_prefix: str = ""
    core_port: int = field(default_factory=free_port)
    ingest_port: int = field(default_factory=free_port)
    hmac_secret: str = DEV_HMAC_SECRET
    service_email: str = SERVICE_EMAIL
    service_password: str = SERVICE_PASSWORD
    log_level: str = "INFO"
    # Extra environment for core / ingest (e.g. batch sizes in a benchmark).
    core_env: dict[str, str] = field(default_factory=dict)
    ingest_env: dict[str, str] = field(default_factory=dict)
    repo_root: Path | None = None

    @property
    def core_url(self) -> str:
        return f"http://127.0.0.1:{self.core_port}"

    @property
    def ingest_url(self) -> str:
        return f"http://127.0.0.1:{self.ingest_port}"

    @property
    def spool_path(self) -> Path:
        return self.var_dir / f"ingest-spool-{self.ingest_port}.sqlite3"


class LocalStack:
    """Core and ingest as child processes on one database and one broker (the broker is started apart)."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        config.var_dir.mkdir(parents=True, exist_ok=True)
        self.core = ServiceProcess(
            "core",
            python_module("chargeghar_core", "serve", "--host", "127.0.0.1", "--port", str(config.core_port)),
            env=self.core_environment(),
            log_path=config.var_dir / f"core-{config.core_port}.log",
            cwd=config.repo_root,
        )
        self.ingest = ServiceProcess(
            "ingest",
            python_module("chargeghar_ingest", "--host", "127.0.0.1", "--port", str(config.ingest_port)),
            env=self.ingest_environment(),
            log_path=config.var_dir / f"ingest-{config.ingest_port}.log",
            cwd=config.repo_root,
        )

    def core_environment(self) -> dict[str, str]:
        config = self.config
        return {
            "CORE_ENVIRONMENT": "development",
            "CORE_DB__URL": config.database_url,
            "CORE_HMAC__SECRET": config.hmac_secret,
            "CORE_LOG_LEVEL": config.log_level,
            # The ingest batches events; a per-minute cap on /api/internal would only slow a local stack down.
            "CORE_INTERNAL__RATE_LIMIT_PER_MINUTE": "0",
            **config.core_env,
        }

    def ingest_environment(self) -> dict[str, str]:
        config = self.config
        return {
            "INGEST_ENVIRONMENT": "development",
            "INGEST_LOG_LEVEL": config.log_level,
            "INGEST_MQTT__HOST": config.broker_host,
            "INGEST_MQTT__PORT": str(config.broker_port),
            "INGEST_MQTT__PUBLIC_HOST": config.broker_host,
            "INGEST_MQTT__PUBLIC_PORT": str(config.broker_port),
            "INGEST_MQTT__TOPIC_PREFIX": config.topic_prefix,
            # The default client id (ingest-<hostname>) is one per host; stacks side by side need their own.
            "INGEST_MQTT__CLIENT_ID": f"ingest-{socket.gethostname()}-{config.ingest_port}",
            "INGEST_CORE__BASE_URL": config.core_url,
            "INGEST_CORE__EMAIL": config.service_email,
            "INGEST_CORE__PASSWORD": config.service_password,
            "INGEST_CORE__HMAC_SECRET": config.hmac_secret,
            "INGEST_SPOOL__PATH": str(config.spool_path),
            # Simulated cabinets get credentials at once and are approved in core's device registry.
            "INGEST_DEVICE__PROVISIONING": "open",
            **config.ingest_env,
        }

    def run_cli(self, *args: str, within_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run a ``chargeghar`` subcommand against this stack's database."""
        return subprocess.run(  # noqa: S603 - our own interpreter and fixed arguments
            die_with_parent(python_module("chargeghar_protocol.cli", *args)),
            env={**os.environ, **self.core_environment()},
            cwd=self.config.repo_root,
            capture_output=True,
            text=True,
            timeout=within_s,
            check=False,
        )

    def migrate(self) -> None:
        result = subprocess.run(  # noqa: S603 - our own interpreter and fixed arguments
            die_with_parent(python_module("chargeghar_core", "migrate")),
            env={**os.environ, **self.core_environment()},
            cwd=self.config.repo_root,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(f"migrations failed:\n{result.stdout}\n{result.stderr}")

    def create_account(self, email: str, password: str, *, kind: str = "create-service-account") -> bool:
        """Create an account with the core CLI; False when it already exists."""
        result = self.run_cli(kind, "--email", email, "--password", password)
        if result.returncode == 0:
            return True
        message = (result.stdout + result.stderr).lower()
        if "exist" in message or "taken" in message or "already" in message:
            return False
        raise StackError(f"{kind} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")

    def prepare(self) -> None:
        """Migrate the database and create the ingest's service account."""
        self.migrate()
        self.create_account(self.config.service_email, self.config.service_password)

    def start_core(self, within_s: float = 60.0) -> None:
        self.core.start()
        wait_for_http(f"{self.config.core_url}/health", within_s, self.core)

    def start_ingest(self, within_s: float = 60.0) -> None:
        self.ingest.start()
        wait_for_http(f"{self.config.ingest_url}/health", within_s, self.ingest)

    def start(self) -> None:
        self.start_core()
        self.start_ingest()

    def stop(self) -> None:
        # Ingest first: it drains into core on the way down where it can.
        self.ingest.stop()
        self.core.stop()
