"""Browser tests of the operator console: headless Chromium (Playwright) against the real system.

Core and the ingest run as child processes on a fresh PostgreSQL database and the test broker (as in
tests/e2e); simulated cabinets run in the test process and answer core's commands over MQTT. Playwright's
async API shares the test event loop with the cabinets, so a cabinet answers an eject while the browser
waits for the page. The browser is Debian's ``chromium`` (never one Playwright downloads): without it the
tests skip, or fail under ``CHARGEGHAR_REQUIRE_SERVICES=1`` (CI), like a missing server.

Screenshots of every page visited go to ``var/artifacts/console/`` (``scripts/console_screenshots.py`` copies
them into ``docs/images/``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from chargeghar_ingest.simulator.device import VirtualCabinet
from chargeghar_ingest.simulator.fleet import Fleet, FleetConfig
from chargeghar_ingest.simulator.stack import LocalStack, StackConfig, StackError, free_port
from console_browser_support import (
    DESKTOP,
    ArtefactShooter,
    CoreApi,
    DeployedFleet,
    FinishedRental,
    StaffLogin,
    cabinet_config,
    login,
    poll,
)
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

REQUIRE_SERVICES = os.environ.get("CHARGEGHAR_REQUIRE_SERVICES", "") not in ("", "0", "false", "no")
STAFF_PASSWORD = "console-browser-password"


def chromium_executable() -> str | None:
    """Debian's chromium (``CHROMIUM`` may name another binary); None when there is none."""
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.fixture(scope="session")
def chromium_path() -> str:
    found = chromium_executable()
    if found is None:
        message = "no chromium executable (install Debian's `chromium` package, or set CHROMIUM)"
        if REQUIRE_SERVICES:
            pytest.fail(f"{message}; CHARGEGHAR_REQUIRE_SERVICES=1 makes this a failure", pytrace=False)
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def artefacts(repo_root: Path) -> ArtefactShooter:
    return ArtefactShooter(repo_root / "var" / "artifacts" / "console")


@pytest.fixture(scope="session")
def console_stack(
    chromium_path: str,
    postgres_url: str,
    mqtt_broker: tuple[str, int],
    tmp_path_factory: pytest.TempPathFactory,
    repo_root: Path,
) -> Iterator[LocalStack]:
    """Core + ingest on PostgreSQL; core sends its device commands to this ingest."""
    host, port = mqtt_broker
    tag = uuid.uuid4().hex[:8]
    ingest_port = free_port()
    config = StackConfig(
        var_dir=tmp_path_factory.mktemp("console"),
        database_url=postgres_url,
        broker_host=host,
        broker_port=port,
        topic_prefix=f"/console{tag}",
        service_email=f"ingest-{tag}@browser.test",
        ingest_port=ingest_port,
        repo_root=repo_root,
        log_level="WARNING",
        core_env={
            "CORE_RENTALS__INGEST_URL": f"http://127.0.0.1:{ingest_port}",
            # A bank back at once would otherwise end the rental for free: nothing left to refund.
            "CORE_RENTALS__FREE_CANCEL_MINUTES": "0",
            # No map tiles from the internet (CI may have none): the markers are drawn on a blank map.
            "CORE_CONSOLE__MAP_TILE_URL": "",
        },
        ingest_env={"INGEST_CORE__RETRY_INITIAL_S": "0.2", "INGEST_CORE__RETRY_MAX_S": "2"},
    )
    stack = LocalStack(config)
    try:
        stack.prepare()
        stack.start()
    except StackError:
        stack.stop()
        raise
    try:
        yield stack
    finally:
        stack.stop()


def _create_staff(stack: LocalStack, role: str) -> StaffLogin:
    account = StaffLogin(f"{role}-{uuid.uuid4().hex[:6]}@browser.test", STAFF_PASSWORD, role)
    result = stack.run_cli(
        "create-admin", "--email", account.email, "--password", account.password, "--role", role
    )
    assert result.returncode == 0, f"create-admin --role {role} failed:\n{result.stdout}\n{result.stderr}"
    return account


@pytest.fixture(scope="session")
def admin_account(console_stack: LocalStack) -> StaffLogin:
    return _create_staff(console_stack, "admin")


@pytest.fixture(scope="session")
def viewer_account(console_stack: LocalStack) -> StaffLogin:
    return _create_staff(console_stack, "viewer")


@pytest.fixture(scope="session")
def core_url(console_stack: LocalStack) -> str:
    return console_stack.config.core_url


@pytest.fixture(scope="session")
async def core_api(core_url: str, admin_account: StaffLogin) -> AsyncIterator[CoreApi]:
    api = CoreApi(core_url, admin_account)
    try:
        yield api
    finally:
        await api.aclose()


@pytest.fixture(scope="session")
async def deployed_fleet(console_stack: LocalStack, core_api: CoreApi) -> AsyncIterator[DeployedFleet]:
    """Two simulated cabinets (12 slots, 9 banks each) seen by core, deployed with map coordinates, and a
    package to rent."""
    fleet = Fleet(
        FleetConfig(
            stations=2, slots=12, seed=uuid.uuid4().int % 10**9, cabinet=cabinet_config(console_stack)
        )
    )
    run = asyncio.create_task(fleet.run())
    try:
        await fleet.wait_connected(30)
        station_ids: dict[str, str] = {}
        for index, cabinet in enumerate(fleet.cabinets):

            async def seen(cabinet: VirtualCabinet = cabinet) -> bool:
                station = await core_api.station(cabinet.imei)
                return station is not None and len(station["slots"]) == cabinet.config.slots

            await poll(seen, within_s=60, what=f"core to see cabinet {cabinet.imei}")
            station = await core_api.station(cabinet.imei)
            assert station is not None
            station_ids[cabinet.imei] = str(station["id"])
            await core_api.deploy(station_ids[cabinet.imei], index)
        package_id = await core_api.seed_package()
        yield DeployedFleet(fleet, station_ids, package_id)
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await fleet.aclose()


@pytest.fixture(scope="session")
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium_path, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    context = await browser.new_context(viewport=DESKTOP, accept_downloads=True)  # type: ignore[arg-type]
    # A page that does not answer in time fails the test rather than the 300 s pytest timeout.
    context.set_default_timeout(20_000)
    try:
        yield context
    finally:
        await context.close()


@pytest.fixture
async def admin_page(context: BrowserContext, core_url: str, admin_account: StaffLogin) -> Page:
    page = await context.new_page()
    await login(page, core_url, admin_account)
    return page


@pytest.fixture
async def viewer_context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A browser of its own (its own cookies): the viewer and the admin are two people."""
    context = await browser.new_context(viewport=DESKTOP)  # type: ignore[arg-type]
    context.set_default_timeout(20_000)
    try:
        yield context
    finally:
        await context.close()


@pytest.fixture
async def viewer_page(viewer_context: BrowserContext, core_url: str, viewer_account: StaffLogin) -> Page:
    page = await viewer_context.new_page()
    await login(page, core_url, viewer_account)
    return page


@pytest.fixture(scope="session")
async def finished_rental(deployed_fleet: DeployedFleet, core_api: CoreApi) -> FinishedRental:
    """A renter's rental, started through the renter API (the cabinet ejects the bank) and ended by the bank
    coming back to the cabinet, as a renter would: a completed, charged rental to look at and refund."""
    cabinet = deployed_fleet.cabinet(1)
    renter = await core_api.new_renter(100_000)
    rental = await core_api.rent(renter, deployed_fleet.station_ids[cabinet.imei], deployed_fleet.package_id)
    assert rental["status"] == "ACTIVE", rental
    serial = rental["power_bank_serial"]
    assert int(serial) in cabinet.rented_banks, "the cabinet did not eject the rented bank"
    await cabinet.return_bank(int(serial), via="both")

    async def completed() -> bool:
        return (await core_api.renter_rental(renter, rental["id"]))["status"] == "COMPLETED"

    await poll(completed, within_s=60, what=f"rental {rental['id']} to complete after the return")
    done = await core_api.renter_rental(renter, rental["id"])
    assert done["charged_paisa"] > 0, done
    return FinishedRental(
        id=str(done["id"]),
        user_id=str(done["user_id"]),
        station_imei=cabinet.imei,
        bank_serial=serial,
        charged_paisa=int(done["charged_paisa"]),
    )
