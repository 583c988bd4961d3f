"""Helpers of the console's browser tests: the staff accounts, the admin and renter API calls that set the
scene (deploy a station, rent a bank), the login through the console's form, and the screenshots kept as
test artefacts.

The API calls here only *prepare* what a test then does in the browser; what a test asserts about the
console it reads from the rendered pages (and, to prove an action went through the audited path, from the
admin API afterwards).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from chargeghar_core.payments.providers import payment_signature
from chargeghar_ingest.simulator.device import CabinetConfig, VirtualCabinet
from chargeghar_ingest.simulator.fleet import Fleet
from chargeghar_ingest.simulator.stack import LocalStack
from playwright.async_api import Locator, Page
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

# The sandbox provider's development secret (CORE_PAYMENTS__SANDBOX_SECRET's default).
SANDBOX_SECRET = "sandbox-secret"
# Desktop width of the screenshots; the phone-width ones are 390 px wide (an iPhone 12-15 in CSS pixels).
DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
# Every console page's navigation links (the contract's selectors).
NAV_LINKS = (
    "nav-dashboard",
    "nav-stations",
    "nav-powerbanks",
    "nav-rentals",
    "nav-renters",
    "nav-money",
    "nav-sync-log",
    "nav-parked",
    "nav-audit",
    "nav-config",
)
PACKAGE_PRICE_PAISA = 5000


@dataclass(frozen=True)
class StaffLogin:
    email: str
    password: str
    role: str


class ArtefactShooter:
    """Writes full-page PNGs of the pages the tests visit to ``var/artifacts/console/`` (CI keeps them)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.taken: list[Path] = []

    async def shoot(self, page: Page, name: str) -> Path:
        # Charts and the map draw after load; the network going quiet is the sign they are done (a picture
        # taken a little early is still a picture: no test fails on it).
        with contextlib.suppress(PlaywrightTimeoutError):
            await page.wait_for_load_state("networkidle", timeout=5_000)
        path = self.directory / f"console-{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        return path


async def login(page: Page, base_url: str, account: StaffLogin) -> None:
    """Log in through the console's form and land on the dashboard."""
    await page.goto(f"{base_url}/console/login")
    await page.fill("input[name=email]", account.email)
    await page.fill("input[name=password]", account.password)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base_url}/console/**")
    await page.locator("[data-testid=current-user]").wait_for()


async def poll(
    check: Callable[[], Awaitable[bool]], *, within_s: float, what: str, every_s: float = 0.5
) -> None:
    """Wait until ``check()`` is true (the system converging: an upload applied, a return processed)."""
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s:.0f}s waiting for {what}")
        await asyncio.sleep(every_s)


async def reload_until(page: Page, url: str, locator: Locator, *, within_s: float, what: str) -> None:
    """Reload ``url`` until ``locator`` is on it: a server-rendered page shows a change at the next load."""

    async def shown() -> bool:
        await page.goto(url)
        return await locator.count() > 0

    await poll(shown, within_s=within_s, what=what, every_s=1.0)


async def reload_until_gone(page: Page, url: str, locator: Locator, *, within_s: float, what: str) -> None:
    async def gone() -> bool:
        await page.goto(url)
        return await locator.count() == 0

    await poll(gone, within_s=within_s, what=what, every_s=1.0)


async def option_value(page: Page, select: str, wanted: str) -> str:
    """The value of the ``<option>`` of ``select`` whose value or label is ``wanted`` (any case)."""
    options: list[dict[str, str]] = await page.eval_on_selector_all(
        f"{select} option", "options => options.map(o => ({value: o.value, label: o.textContent.trim()}))"
    )
    for option in options:
        if wanted.lower() in (option["value"].lower(), option["label"].lower()):
            return option["value"]
    raise AssertionError(f"no option {wanted!r} in {select}: {options}")


class CoreApi:
    """Core's admin and renter APIs over HTTP, to set up what the browser tests then look at."""

    def __init__(self, core_url: str, admin: StaffLogin) -> None:
        self.http = httpx.AsyncClient(base_url=core_url, timeout=60.0)
        self.admin = admin
        self._token: str | None = None

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _admin_headers(self) -> dict[str, str]:
        if self._token is None:
            answer = await self.http.post(
                "/api/admin/login", json={"email": self.admin.email, "password": self.admin.password}
            )
            answer.raise_for_status()
            self._token = str(answer.json()["data"]["access_token"])
        return {"Authorization": f"Bearer {self._token}"}

    async def admin_get(self, path: str, **params: Any) -> Any:
        answer = await self.http.get(path, params=params, headers=await self._admin_headers())
        answer.raise_for_status()
        return answer.json()["data"]

    async def admin_send(self, method: str, path: str, body: dict[str, Any]) -> Any:
        answer = await self.http.request(method, path, json=body, headers=await self._admin_headers())
        if answer.is_error:
            raise AssertionError(f"{method} {path} answered {answer.status_code}: {answer.text}")
        return answer.json()["data"]

    async def station(self, imei: str) -> dict[str, Any] | None:
        """Core's admin view of the station with this IMEI (with its slots), or None."""
        listing = await self.admin_get("/api/admin/stations", search=imei)
        match = [item for item in listing["items"] if item["imei"] == imei]
        if not match:
            return None
        detail: dict[str, Any] = await self.admin_get(f"/api/admin/stations/{match[0]['id']}")
        return detail

    async def deploy(self, station_id: str, index: int) -> None:
        """What `make dev` does to a simulated station: a name, a place on the map, deployed."""
        await self.admin_send(
            "PATCH",
            f"/api/admin/stations/{station_id}",
            {
                "name": f"Browser test station {index + 1:02d}",
                "latitude": round(27.7104 + index * 0.004, 6),
                "longitude": 85.3180,
                "address": "Kathmandu (simulated)",
                "is_deployed": True,
            },
        )

    async def bank_id(self, serial: str) -> str:
        listing = await self.admin_get("/api/admin/powerbanks", search=serial)
        match = [item for item in listing["items"] if item["serial_number"] == serial]
        assert match, f"core has no power bank {serial}"
        return str(match[0]["id"])

    async def seed_package(self) -> str:
        """A late-fee policy and a prepaid one-hour package (Rs 50), as `make dev` seeds them."""
        policy = await self.admin_send(
            "POST",
            "/api/admin/late-fee-policies",
            {
                "name": "Browser test late fee",
                "rate_multiplier_bp": 15000,
                "grace_minutes": 10,
                "daily_cap_paisa": 50000,
                "is_default": True,
            },
        )
        package = await self.admin_send(
            "POST",
            "/api/admin/packages",
            {
                "name": "1 hour",
                "description": "Prepaid hour",
                "duration_minutes": 60,
                "price_paisa": PACKAGE_PRICE_PAISA,
                "payment_model": "PREPAID",
                "late_fee_policy_id": policy["id"],
            },
        )
        return str(package["id"])

    async def audit(self, **filters: Any) -> list[dict[str, Any]]:
        page = await self.admin_get("/api/admin/audit-log", **filters)
        items: list[dict[str, Any]] = page["items"]
        return items

    async def new_renter(self, balance_paisa: int) -> dict[str, str]:
        """Register a renter and top the wallet up through the sandbox; the renter's auth headers."""
        email = f"renter-{uuid.uuid4().hex[:8]}@browser.test"
        registered = await self.http.post(
            "/api/renters/register", json={"email": email, "password": "renter-password-1"}
        )
        registered.raise_for_status()
        headers = {"Authorization": f"Bearer {registered.json()['data']['access_token']}"}
        created = await self.http.post(
            "/api/payments/topups",
            json={"amount_paisa": balance_paisa, "provider": "sandbox"},
            headers=headers,
        )
        created.raise_for_status()
        payment_id = created.json()["data"]["payment"]["id"]
        order_id = created.json()["data"]["checkout"]["order_id"]
        confirmed = await self.http.post(
            f"/api/payments/topups/{payment_id}/confirm",
            json={
                "provider_payment_id": "pay_browser",
                "signature": payment_signature(order_id, "pay_browser", SANDBOX_SECRET),
            },
            headers=headers,
        )
        confirmed.raise_for_status()
        assert confirmed.json()["data"]["status"] == "CAPTURED", confirmed.text
        return headers

    async def rent(self, renter: dict[str, str], station_id: str, package_id: str) -> dict[str, Any]:
        """Start a rental as the renter; the station (a simulated cabinet) ejects the bank."""
        started = await self.http.post(
            "/api/rentals", json={"station_id": station_id, "package_id": package_id}, headers=renter
        )
        if started.status_code != 201:
            raise AssertionError(f"the rental did not start: {started.status_code} {started.text}")
        rental: dict[str, Any] = started.json()["data"]
        return rental

    async def renter_rental(self, renter: dict[str, str], rental_id: str) -> dict[str, Any]:
        answer = await self.http.get(f"/api/rentals/{rental_id}", headers=renter)
        answer.raise_for_status()
        rental: dict[str, Any] = answer.json()["data"]
        return rental


def cabinet_config(stack: LocalStack, imei: str = "0", **overrides: float) -> CabinetConfig:
    config = stack.config
    settings: dict[str, float] = {
        "first_upload_delay_s": 0.2,
        # A real cabinet reports its slots every few minutes; a few seconds keeps the pages current.
        "upload_interval_s": 4.0,
        "echo_timeout_s": 5.0,
        **overrides,
    }
    return CabinetConfig(
        imei=imei,
        ingest_url=config.ingest_url,
        topic_prefix=config.topic_prefix,
        **settings,  # type: ignore[arg-type]
    )


@dataclass
class DeployedFleet:
    fleet: Fleet
    station_ids: dict[str, str]  # imei -> core's station id
    package_id: str

    def cabinet(self, index: int) -> VirtualCabinet:
        return self.fleet.cabinets[index]


@dataclass(frozen=True)
class FinishedRental:
    id: str
    user_id: str
    station_imei: str
    bank_serial: str
    charged_paisa: int
