"""The operator console in a real browser: log in, watch a cabinet appear, eject a bank, set a bank's status,
refund a rental, download the revenue CSV.

Each action is done by clicking through the rendered pages; that it really happened is read back from the
cabinet (the bank left its slot), from later page loads, and from core's admin API (the same audited path
the API uses: an audit row with the logged-in operator as the actor).
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest
from chargeghar_ingest.simulator.device import VirtualCabinet
from chargeghar_ingest.simulator.fleet import generate_imeis
from chargeghar_ingest.simulator.stack import LocalStack
from console_browser_support import (
    NAV_LINKS,
    PHONE,
    ArtefactShooter,
    CoreApi,
    DeployedFleet,
    FinishedRental,
    StaffLogin,
    cabinet_config,
    login,
    option_value,
    reload_until,
    reload_until_gone,
)
from playwright.async_api import Browser, BrowserContext, Page, expect

pytestmark = [pytest.mark.postgres, pytest.mark.mqtt]


async def test_login_lands_on_the_dashboard_with_a_locked_down_session_cookie(
    context: BrowserContext, core_url: str, admin_account: StaffLogin, artefacts: ArtefactShooter
) -> None:
    page = await context.new_page()
    # Not logged in: any page sends the browser to the login form, remembering where it wanted to go.
    await page.goto(f"{core_url}/console/stations")
    assert urlsplit(page.url).path == "/console/login"
    assert parse_qs(urlsplit(page.url).query).get("next") == ["/console/stations"]
    await artefacts.shoot(page, "login")

    await page.fill("input[name=email]", admin_account.email)
    await page.fill("input[name=password]", "not-the-password")
    await page.click("button[type=submit]")
    await expect(page.locator("[data-testid=login-error]")).to_be_visible()
    assert await page.locator("[data-testid=current-user]").count() == 0

    await page.fill("input[name=email]", admin_account.email)
    await page.fill("input[name=password]", admin_account.password)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{core_url}/console/stations")  # back where it wanted to go
    user = page.locator("[data-testid=current-user]")
    await expect(user).to_contain_text(admin_account.email)
    await expect(user).to_contain_text("admin")
    for link in NAV_LINKS:
        await expect(page.locator(f"nav [data-testid={link}]")).to_be_visible()

    cookies = {cookie["name"]: cookie for cookie in await context.cookies(core_url + "/console/")}
    session = cookies["cg_console"]
    assert session["httpOnly"] is True
    assert session["sameSite"] in ("Lax", "Strict")
    assert session["path"] == "/console"

    await page.click("[data-testid=nav-dashboard]")
    await page.wait_for_url(f"{core_url}/console/")
    for part in ("dashboard-counts", "dashboard-money", "dashboard-sync"):
        await expect(page.locator(f"[data-testid={part}]")).to_be_visible()

    # Logging out ends the session on the server: the same cookie no longer opens a page.
    await page.click("[data-testid=logout]")
    await page.wait_for_url(re.compile(r".*/console/login.*"))
    replay = await context.request.get(
        f"{core_url}/console/stations",
        headers={"Cookie": f"cg_console={session['value']}"},
        max_redirects=0,
    )
    assert replay.status == 303 and "/console/login" in replay.headers["location"]


async def test_a_new_cabinet_appears_in_the_stations_list(
    admin_page: Page,
    core_url: str,
    console_stack: LocalStack,
    deployed_fleet: DeployedFleet,
    artefacts: ArtefactShooter,
) -> None:
    page = admin_page
    imei = generate_imeis(1, prefix="86460177", seed=uuid.uuid4().int % 10**9)[0]
    listing = f"{core_url}/console/stations?q={imei}"
    row = page.locator(f"tr[data-testid=station-row][data-imei='{imei}']")
    await page.goto(listing)
    assert await row.count() == 0

    cabinet = VirtualCabinet(cabinet_config(console_stack, imei, first_upload_delay_s=3600.0))
    run = asyncio.create_task(cabinet.run())
    try:
        await cabinet.wait_connected(30)
        await cabinet.upload_now()
        await reload_until(page, listing, row, within_s=60, what=f"station {imei} in the console's list")
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)

    # The search narrowed the list to the new station; the full list shows the fleet, with the map of
    # the stations that have coordinates.
    assert await page.locator("tr[data-testid=station-row]").count() == 1
    await page.goto(f"{core_url}/console/stations")
    for known in deployed_fleet.station_ids:
        await expect(page.locator(f"tr[data-testid=station-row][data-imei='{known}']")).to_be_visible()
    await expect(page.locator("#station-map")).to_be_visible()
    await artefacts.shoot(page, "stations")

    await page.goto(f"{core_url}/console/")
    await artefacts.shoot(page, "dashboard")


async def test_eject_a_bank_with_confirmation_and_see_the_slot_empty(
    admin_page: Page,
    core_url: str,
    core_api: CoreApi,
    admin_account: StaffLogin,
    deployed_fleet: DeployedFleet,
    artefacts: ArtefactShooter,
) -> None:
    page = admin_page
    cabinet = deployed_fleet.cabinet(0)
    occupied = sorted(hole for hole, slot in cabinet.state.slots.items() if slot.bank is not None)
    hole, spared = occupied[0], occupied[1]
    bank = cabinet.state.slots[hole].bank
    assert bank is not None
    serial = str(bank.sn)
    detail = f"{core_url}/console/stations/{cabinet.imei}"
    await page.goto(detail)
    await expect(page.locator("[data-testid=station-status]")).to_contain_text("ONLINE", ignore_case=True)
    slot_row = page.locator(f"tr[data-testid=slot-row][data-slot='{hole}']")
    await expect(slot_row).to_contain_text(serial)
    await expect(slot_row).to_contain_text(re.compile(r"\d+\s*%"))  # the battery level
    for action in ("check", "reboot"):
        await expect(page.locator(f"[data-action={action}]")).to_be_visible()
    await artefacts.shoot(page, "station-detail")

    # Cancelling the confirmation sends nothing: the other bank stays in its slot.
    await page.click(f"[data-action=eject-slot][data-slot='{spared}']")
    await page.click("[data-testid=confirm-cancel]")
    await page.goto(detail)
    assert cabinet.state.slots[spared].bank is not None

    await page.click(f"[data-action=eject-slot][data-slot='{hole}']")
    await artefacts.shoot(page, "eject-confirmation")
    await page.click("[data-testid=confirm-submit]")
    flash = page.locator("[data-testid=flash]")
    await expect(flash).to_be_visible(timeout=45_000)
    await expect(flash).to_have_class(re.compile(r"\bflash-ok\b"))
    assert cabinet.state.slots[hole].bank is None, "the cabinet did not eject the bank"
    assert cabinet.state.slots[spared].bank is not None

    await reload_until_gone(
        page, detail, slot_row.filter(has_text=serial), within_s=30, what=f"slot {hole} shown empty"
    )
    entries = await core_api.audit(action="device", actor_email=admin_account.email)
    ejects = [
        entry
        for entry in entries
        if entry["details"]["imei"] == cabinet.imei and entry["details"]["request"]["cmd"] == "popup"
    ]
    sent = [(str(entry["details"]["request"]["data"]), entry["outcome"]) for entry in ejects]
    assert sent == [(str(hole), "ok")]  # the cancelled one was never sent


async def test_set_a_bank_status_with_a_reason(
    admin_page: Page,
    core_url: str,
    core_api: CoreApi,
    admin_account: StaffLogin,
    deployed_fleet: DeployedFleet,
    artefacts: ArtefactShooter,
) -> None:
    page = admin_page
    cabinet = deployed_fleet.cabinet(0)
    bank = max((slot.bank for slot in cabinet.state.slots.values() if slot.bank), key=lambda b: b.sn)
    serial = str(bank.sn)
    await page.goto(f"{core_url}/console/powerbanks?q={serial}")
    await expect(page.locator("table[data-testid=powerbanks-table]")).to_contain_text(serial)
    await artefacts.shoot(page, "powerbanks")

    bank_id = await core_api.bank_id(serial)
    await page.goto(f"{core_url}/console/powerbanks/{bank_id}")
    await expect(page.locator("[data-testid=bank-status]")).to_contain_text("AVAILABLE", ignore_case=True)
    form = page.locator("[data-testid=bank-status-form]")
    value = await option_value(page, "[data-testid=bank-status-form] select[name=status]", "maintenance")
    await form.locator("select[name=status]").select_option(value)
    reason = f"Cracked casing ({uuid.uuid4().hex[:6]})"
    await form.locator("input[name=reason]").fill(reason)
    await form.locator("[data-action=set-bank-status]").click()
    flash = page.locator("[data-testid=flash]")
    await expect(flash).to_be_visible()
    await expect(flash).to_have_class(re.compile(r"\bflash-ok\b"))
    await expect(page.locator("[data-testid=bank-status]")).to_contain_text("MAINTENANCE", ignore_case=True)
    await artefacts.shoot(page, "powerbank-detail")

    assert (await core_api.admin_get(f"/api/admin/powerbanks/{bank_id}"))["status"] == "MAINTENANCE"
    entries = await core_api.audit(action="power_bank.status", actor_email=admin_account.email)
    assert any(reason in str(entry["details"]) for entry in entries), entries


async def test_refund_a_rental_with_a_reason(
    admin_page: Page,
    core_url: str,
    core_api: CoreApi,
    admin_account: StaffLogin,
    finished_rental: FinishedRental,
    artefacts: ArtefactShooter,
) -> None:
    page = admin_page
    await page.goto(f"{core_url}/console/rentals")
    await expect(page.locator("table[data-testid=rentals-table]")).to_contain_text(
        finished_rental.bank_serial
    )
    await artefacts.shoot(page, "rentals")

    await page.goto(f"{core_url}/console/rentals/{finished_rental.id}")
    await expect(page.locator("[data-testid=rental-status]")).to_contain_text("COMPLETED", ignore_case=True)
    # Reservation → eject → return, each a step of the timeline.
    assert await page.locator("[data-testid=rental-timeline] [data-testid=timeline-item]").count() >= 3
    # (Waiving needs dues; this rental owes nothing, so only the override is offered besides the refund.)
    assert await page.locator("[data-action=override]").count() >= 1
    await artefacts.shoot(page, "rental-detail")

    form = page.locator("[data-testid=refund-form]")
    reason = f"Bank was empty at pick-up ({uuid.uuid4().hex[:6]})"
    await form.locator("input[name=reason]").fill(reason)
    await form.locator("[data-action=refund]").click()
    if await page.locator("[data-testid=confirm-submit]").is_visible():
        await page.click("[data-testid=confirm-submit]")
    flash = page.locator("[data-testid=flash]")
    await expect(flash).to_be_visible()
    await expect(flash).to_have_class(re.compile(r"\bflash-ok\b"))

    rental = await core_api.admin_get("/api/admin/rentals", user_id=finished_rental.user_id)
    refunded = next(item for item in rental["items"] if item["id"] == finished_rental.id)
    assert refunded["refunded_paisa"] == finished_rental.charged_paisa
    entries = await core_api.audit(target_id=finished_rental.id, actor_email=admin_account.email)
    assert any(
        entry["action"] == "rental.refund_to_wallet" and entry["details"]["reason"] == reason
        for entry in entries
    ), entries

    # The renter's wallet shows the refund in the ledger.
    await page.goto(f"{core_url}/console/renters/{finished_rental.user_id}")
    await expect(page.locator("main")).to_contain_text(reason[:20])
    await artefacts.shoot(page, "renter-detail")
    await page.goto(f"{core_url}/console/renters")
    await expect(page.locator("table[data-testid=renters-table]")).to_be_visible()
    await artefacts.shoot(page, "renters")


async def test_download_the_revenue_csv(
    admin_page: Page,
    core_url: str,
    core_api: CoreApi,
    finished_rental: FinishedRental,
    artefacts: ArtefactShooter,
) -> None:
    page = admin_page
    await page.goto(f"{core_url}/console/money")
    await expect(page.locator("[data-testid=revenue-chart]")).to_be_visible()
    await expect(page.locator("table[data-testid=transactions-table]")).to_be_visible()
    await artefacts.shoot(page, "money")

    async with page.expect_download() as download_info:
        await page.click("a[data-testid=revenue-csv]")
    download = await download_info.value
    assert download.suggested_filename.endswith(".csv")
    path = await download.path()
    content = path.read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(content)))
    total = rows[-1]
    assert total[0] == "total", rows
    header = rows[0]
    assert int(total[header.index("rental_charges_paisa")]) >= finished_rental.charged_paisa

    # The same report as the API's CSV over the same days (one implementation of the rule).
    query = parse_qs(urlsplit(download.url).query)
    answer = await core_api.http.get(
        "/api/admin/reports/revenue",
        params={
            "from": query["from"][0],
            "to": query["to"][0],
            "group_by": query.get("group_by", ["day"])[0],
            "format": "csv",
        },
        headers=await core_api._admin_headers(),
    )
    assert answer.status_code == 200
    assert content == answer.text


# The outermost elements reaching past the screen's right edge (for the failure message).
OVERFLOWING = """width => {
    const right = e => e.getBoundingClientRect().right;
    return [...document.querySelectorAll('main *')]
        .filter(e => right(e) > width + 1 && right(e.parentElement) <= width + 1)
        .filter(e => !e.closest('.table-wrap'))
        .slice(0, 5)
        .map(e => `${e.tagName.toLowerCase()}.${e.className} (${Math.round(right(e))}px)`);
}"""


async def test_phone_width_pages_fit_the_screen(
    browser: Browser,
    core_url: str,
    admin_account: StaffLogin,
    deployed_fleet: DeployedFleet,
    artefacts: ArtefactShooter,
) -> None:
    context = await browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)  # type: ignore[arg-type]
    try:
        page = await context.new_page()
        await login(page, core_url, admin_account)
        imei = deployed_fleet.cabinet(0).imei
        for name, path in (
            ("dashboard-phone", "/console/"),
            ("station-detail-phone", f"/console/stations/{imei}"),
        ):
            await page.goto(core_url + path)
            await expect(page.locator("[data-testid=current-user]")).to_be_attached()
            # No sideways scrolling of the whole page: wide tables scroll inside their own box.
            width = await page.evaluate("document.documentElement.scrollWidth")
            if width > PHONE["width"]:
                wide = await page.evaluate(OVERFLOWING, PHONE["width"])
                raise AssertionError(f"{path} is {width}px wide on a {PHONE['width']}px screen: {wide}")
            await artefacts.shoot(page, name)
    finally:
        await context.close()


async def test_the_logs_show_what_happened(
    admin_page: Page,
    core_url: str,
    admin_account: StaffLogin,
    deployed_fleet: DeployedFleet,
    finished_rental: FinishedRental,
    artefacts: ArtefactShooter,
) -> None:
    """The audit log names the operator's actions (the fleet was deployed by the admin, through the API);
    the sync log the cabinets' events."""
    page = admin_page
    await page.goto(f"{core_url}/console/audit")
    audit = page.locator("table[data-testid=audit-table]")
    await expect(audit).to_contain_text(admin_account.email)
    await expect(audit).to_contain_text("station.configure")  # the fleet's deployment
    await artefacts.shoot(page, "audit")

    imei = deployed_fleet.cabinet(0).imei
    await page.goto(f"{core_url}/console/sync-log")
    await expect(page.locator("table[data-testid=sync-log-table]")).to_contain_text(imei)
    await artefacts.shoot(page, "sync-log")

    await page.goto(f"{core_url}/console/parked")
    await expect(page.locator("table[data-testid=parked-table]")).to_be_attached()
    await artefacts.shoot(page, "parked")

    await page.goto(f"{core_url}/console/config")
    # The package rented above: its name as text, or in the input of its edit form.
    package = (
        page.locator("main").get_by_text("1 hour", exact=True).or_(page.locator("main input[value='1 hour']"))
    )
    await expect(package.first).to_be_visible()
    await artefacts.shoot(page, "config")
