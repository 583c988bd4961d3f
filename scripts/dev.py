"""`make dev`: the whole system on one machine, from a fresh checkout.

Starts, as child processes: an MQTT broker (the embedded one, unless something already listens on the broker
port), core on SQLite (migrated; an ingest service account and a dev admin are created), the ingest pointing
at core and the broker, and the station simulator. A default late-fee policy and rental packages are seeded
so a renter can rent at once. The simulated stations are deployed through core's admin API as they appear
(dev only: core hides undeployed stations from the public list), so ``GET /api/stations`` shows them, their
slots and banks within a minute. The banner names the operator console (``/console``) and the dev admin
who logs in there; the admin's password is printed by the run that creates it, later runs say where it is.

Ctrl-C, SIGTERM, or the death of the ``make`` that started it stops everything, the simulator first. A port
that is taken is an error (nothing moves silently to another port). Files (SQLite, spool, logs, the dev
admin's credentials) live in ``var/dev/``, the database at core's default path ``var/dev/core.sqlite3``
so that ``uv run chargeghar …`` commands run from the checkout use it too; ``--fresh`` starts from empty.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import httpx
from chargeghar_ingest.simulator.fleet import generate_imeis
from chargeghar_ingest.simulator.stack import (
    LocalStack,
    ServiceProcess,
    StackConfig,
    StackError,
    embedded_broker_process,
    free_port,
    port_open,
    python_module,
    wait_for_port,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
VAR_DIR = REPO_ROOT / "var" / "dev"
ADMIN_EMAIL = "admin@chargeghar.local"
# Generated on the first run, kept (mode 0600) next to the dev database it belongs to.
ADMIN_CREDENTIALS = VAR_DIR / "admin-credentials.json"
# What `make dev` seeds when core has no package yet (prices in paisa: Rs 50 per hour, Rs 300 per day).
DEV_LATE_FEE_POLICY = {
    "name": "Standard late fee",
    "rate_multiplier_bp": 15000,
    "grace_minutes": 10,
    "daily_cap_paisa": 50000,
    "is_default": True,
}
DEV_PACKAGES = (
    {"name": "1 hour", "description": "Prepaid hour", "duration_minutes": 60, "price_paisa": 5000},
    {"name": "1 day", "description": "Prepaid day", "duration_minutes": 1440, "price_paisa": 30000},
)
# Simulated stations are placed on a small grid around Kathmandu's Durbar Marg.
MAP_ORIGIN = (27.7104, 85.3180)
GRID_STEP_DEG = 0.004
STATUS_EVERY_S = 20.0
POLL_S = 2.0


class StopRequested(Exception):
    """SIGTERM or SIGINT arrived."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stations", type=int, default=10)
    parser.add_argument("--slots", type=int, default=12)
    parser.add_argument("--speed", type=float, default=60.0, help="simulated seconds per real second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--core-port", type=int, default=8000, help="must be free")
    parser.add_argument("--ingest-port", type=int, default=8100, help="must be free")
    parser.add_argument("--broker-port", type=int, default=1883)
    parser.add_argument("--fresh", action="store_true", help="delete var/dev (database, spool, logs) first")
    parser.add_argument("--no-deploy", action="store_true", help="leave simulated stations undeployed")
    return parser.parse_args(argv)


def require_free(port: int, what: str, flag: str) -> int:
    """Refuse a taken port: moving silently elsewhere left core sending rental commands to the old one."""
    if port_open("127.0.0.1", port):
        suggestion = free_port()
        raise StackError(
            f"port {port} for the {what} is already taken (another `make dev`, or another program).\n"
            f"Stop that program, or choose another port: make dev DEV_ARGS='{flag} {suggestion}'"
        )
    return port


def admin_password() -> tuple[str, bool]:
    """The dev admin's password, made once per dev database; True when made by this run.

    The password is printed only by the run that made it; later runs say where it is kept.
    """
    if ADMIN_CREDENTIALS.exists():
        return str(json.loads(ADMIN_CREDENTIALS.read_text())["password"]), False
    password = secrets.token_urlsafe(12)
    ADMIN_CREDENTIALS.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(ADMIN_CREDENTIALS, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump({"email": ADMIN_EMAIL, "password": password}, handle)
    return password, True


def make_ancestor() -> int | None:
    """The pid of the `make` this runs under, if any (Linux /proc): its death stops the dev stack.

    `kill -INT <make>` (not a terminal's Ctrl-C, which reaches the whole process group) ends make but
    reaches none of its children; without this check the stack would run on, orphaned.
    """
    pid = os.getppid()
    for _ in range(8):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if name == "make":
            return pid
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if pid <= 1:
            return None
    return None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_broker(port: int) -> ServiceProcess | None:
    if port_open("127.0.0.1", port):
        print(f"• MQTT broker: using the one already listening on 127.0.0.1:{port}")
        return None
    broker = embedded_broker_process(port, log_path=VAR_DIR / "logs" / "broker.log").start()
    wait_for_port("127.0.0.1", port, 20, broker)
    print(f"• MQTT broker: embedded (amqtt) on 127.0.0.1:{port}")
    return broker


class StationDeployer:
    """Logs in as the dev admin and deploys the simulated stations once core has seen them."""

    def __init__(self, core_url: str, imeis: list[str], password: str) -> None:
        self.client = httpx.Client(base_url=core_url, timeout=10.0)
        self.password = password
        self.position = {imei: index for index, imei in enumerate(imeis)}
        self.deployed: set[str] = set()
        self.token: str | None = None

    def _headers(self) -> dict[str, str]:
        if self.token is None:
            response = self.client.post(
                "/api/admin/login", json={"email": ADMIN_EMAIL, "password": self.password}
            )
            response.raise_for_status()
            self.token = str(response.json()["data"]["access_token"])
        return {"Authorization": f"Bearer {self.token}"}

    def deploy_new(self) -> list[str]:
        if len(self.deployed) == len(self.position):
            return []
        response = self.client.get(
            "/api/admin/stations", params={"deployed": "false", "page_size": 100}, headers=self._headers()
        )
        if response.status_code == 401:
            self.token = None
            return []
        response.raise_for_status()
        newly: list[str] = []
        for station in response.json()["data"]["items"]:
            imei = station.get("imei")
            if imei not in self.position or imei in self.deployed:
                continue
            index = self.position[imei]
            row, column = divmod(index, 4)
            update = {
                "name": f"Simulated station {index + 1:02d}",
                "latitude": round(MAP_ORIGIN[0] + row * GRID_STEP_DEG, 6),
                "longitude": round(MAP_ORIGIN[1] + column * GRID_STEP_DEG, 6),
                "address": "Kathmandu (simulated)",
                "is_deployed": True,
            }
            patched = self.client.patch(
                f"/api/admin/stations/{station['id']}", json=update, headers=self._headers()
            )
            if patched.is_success:
                self.deployed.add(imei)
                newly.append(imei)
        return newly

    def seed_pricing(self) -> list[str]:
        """A default late-fee policy and the dev packages, unless core has packages already."""
        existing = self.client.get("/api/admin/packages", headers=self._headers())
        existing.raise_for_status()
        if existing.json()["data"]:
            return []
        policy = self.client.post(
            "/api/admin/late-fee-policies", json=DEV_LATE_FEE_POLICY, headers=self._headers()
        )
        policy.raise_for_status()
        policy_id = policy.json()["data"]["id"]
        created = []
        for package in DEV_PACKAGES:
            answer = self.client.post(
                "/api/admin/packages",
                json={**package, "payment_model": "PREPAID", "late_fee_policy_id": policy_id},
                headers=self._headers(),
            )
            answer.raise_for_status()
            created.append(f"{package['name']} (Rs {int(package['price_paisa']) // 100})")
        return created

    def close(self) -> None:
        self.client.close()


def public_station_count(core_url: str) -> int:
    try:
        response = httpx.get(f"{core_url}/api/stations", params={"page_size": 1}, timeout=5.0)
        return int(response.json()["data"]["total"]) if response.is_success else -1
    except (httpx.HTTPError, KeyError, ValueError):
        return -1


def admin_lines(password: str, created: bool) -> str:
    """How to log in as the dev admin: the password itself only on the run that created it."""
    kept = ADMIN_CREDENTIALS.relative_to(REPO_ROOT)
    if created:
        return (
            f"  dev admin         {ADMIN_EMAIL}  password {password}\n"
            f"                    (shown once; kept in {kept}; --fresh makes a new one)"
        )
    return f"  dev admin         {ADMIN_EMAIL}  (password in {kept}; --fresh makes a new one)"


def print_banner(
    stack: LocalStack, imeis: list[str], broker_port: int, password: str, *, created: bool
) -> None:
    core, ingest = stack.config.core_url, stack.config.ingest_url
    print(
        f"""
ChargeGhar dev stack is up.
  operator console  {core}/console               (log in as the dev admin)
{admin_lines(password, created)}
  core API docs     {core}/docs
  station list      {core}/api/stations            (deployed stations, with slots via /api/stations/<serial>)
  one station       {core}/api/stations/{imeis[0]}
  admin login       POST {core}/api/admin/login  {{"email": "{ADMIN_EMAIL}", "password": "…"}}
  admin stations    {core}/api/admin/stations      (all stations, deployed or not; bearer token)
  packages          {core}/api/packages            (seeded: rent one with POST /api/rentals as a renter)
  renter sign-up    POST {core}/api/renters/register; top up via the sandbox (README, "Try a rental")
  ingest docs       {ingest}/docs   health {ingest}/health   metrics {ingest}/metrics.json
  MQTT broker       127.0.0.1:{broker_port}
  logs              {VAR_DIR / "logs"}/
Press Ctrl-C to stop.
""",
        flush=True,
    )


def raise_stop(signum: int, frame: FrameType | None) -> None:
    raise StopRequested(signal.Signals(signum).name)


def run(args: argparse.Namespace) -> int:
    if args.fresh and VAR_DIR.exists():
        shutil.rmtree(VAR_DIR)
    logs = VAR_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, raise_stop)
    signal.signal(signal.SIGINT, raise_stop)

    broker: ServiceProcess | None = None
    simulator: ServiceProcess | None = None
    stack: LocalStack | None = None
    deployer: StationDeployer | None = None
    try:
        core_port = require_free(args.core_port, "core API", "--core-port")
        ingest_port = require_free(args.ingest_port, "ingest", "--ingest-port")
        broker = start_broker(args.broker_port)
        config = StackConfig(
            var_dir=VAR_DIR,
            database_url=f"sqlite+aiosqlite:///{VAR_DIR / 'core.sqlite3'}",
            broker_port=args.broker_port,
            core_port=core_port,
            ingest_port=ingest_port,
            repo_root=REPO_ROOT,
        )
        stack = LocalStack(config)
        stack.core.log_path = logs / "core.log"
        stack.ingest.log_path = logs / "ingest.log"
        print("• core: migrating the SQLite database and creating accounts …", flush=True)
        stack.prepare()
        password, created = admin_password()
        stack.create_account(ADMIN_EMAIL, password, kind="create-admin")
        stack.start_core()
        print(f"• core: {config.core_url}", flush=True)
        deployer = StationDeployer(config.core_url, [], password)
        seeded = deployer.seed_pricing()
        if seeded:
            print(f"• core: seeded a late-fee policy and packages: {', '.join(seeded)}", flush=True)
        stack.start_ingest()
        print(f"• ingest: {config.ingest_url}", flush=True)

        imeis = generate_imeis(args.stations, prefix="86460106", seed=args.seed)
        simulator_flags = [
            *("--stations", str(args.stations), "--slots", str(args.slots), "--speed", str(args.speed)),
            *("--seed", str(args.seed), "--ingest-url", config.ingest_url, "--stats-every", "60"),
            # Rented banks come back after 45 simulated minutes, so rentals made in the API complete.
            *("--auto-return-after", "45"),
        ]
        simulator = ServiceProcess(
            "simulator",
            python_module("chargeghar_ingest.simulator", *simulator_flags),
            log_path=logs / "simulator.log",
            cwd=REPO_ROOT,
        ).start()
        print(
            f"• simulator: {args.stations} stations × {args.slots} slots at speed {args.speed:g}", flush=True
        )
        print_banner(stack, imeis, args.broker_port, password, created=created)
        deployer.close()
        deployer = None if args.no_deploy else StationDeployer(config.core_url, imeis, password)
        supervise(stack, simulator, broker, deployer, make_ancestor())
    except StopRequested as stop:
        print(f"\nstopping ({stop}) …", flush=True)
    except StackError as error:
        print(f"\n{error}", file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if deployer is not None:
            deployer.close()
        if simulator is not None:
            simulator.stop()
        if stack is not None:
            stack.stop()
        if broker is not None:
            broker.stop()
        print("stopped.", flush=True)
    return 0


def supervise(
    stack: LocalStack,
    simulator: ServiceProcess,
    broker: ServiceProcess | None,
    deployer: StationDeployer | None,
    make_pid: int | None,
) -> None:
    """Keep deploying new stations and print a status line; fail loudly when a child dies."""
    next_status = time.monotonic() + 5.0
    while True:
        if make_pid is not None and not process_alive(make_pid):
            raise StopRequested("make has exited")
        for child in (stack.core, stack.ingest, simulator, *([broker] if broker else [])):
            child.check_alive()
        if deployer is not None:
            try:
                for imei in deployer.deploy_new():
                    print(f"  deployed station {imei}", flush=True)
            except httpx.HTTPError as error:
                print(f"  (deploying stations failed: {error}; retrying)", flush=True)
        if time.monotonic() >= next_status:
            count = public_station_count(stack.config.core_url)
            print(f"  {time.strftime('%H:%M:%S')} public station list: {count} station(s)", flush=True)
            next_status = time.monotonic() + STATUS_EVERY_S
        time.sleep(POLL_S)


def main() -> int:
    return run(parse_args())


if __name__ == "__main__":
    sys.exit(main())
