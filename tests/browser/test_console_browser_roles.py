"""Who may do what in the console: a viewer sees every page but no action, and no form is accepted without
the session's CSRF token."""

from __future__ import annotations

from urllib.parse import urljoin

import pytest
from console_browser_support import (
    NAV_LINKS,
    ArtefactShooter,
    CoreApi,
    DeployedFleet,
    FinishedRental,
)
from playwright.async_api import BrowserContext, Page, expect

pytestmark = [pytest.mark.postgres, pytest.mark.mqtt]

CSRF_REFUSAL = "CSRF token missing or invalid"


async def console_pages(
    page: Page, core_url: str, core_api: CoreApi, fleet: DeployedFleet, rental: FinishedRental
) -> dict[str, str]:
    """Every console page worth a look: name -> path (plus any config sub-page the config page links)."""
    imei = fleet.cabinet(0).imei
    bank = next(slot.bank for slot in fleet.cabinet(0).state.slots.values() if slot.bank is not None)
    pages = {
        "dashboard": "/console/",
        "stations": "/console/stations",
        "station-detail": f"/console/stations/{imei}",
        "powerbanks": "/console/powerbanks",
        "powerbank-detail": f"/console/powerbanks/{await core_api.bank_id(str(bank.sn))}",
        "rentals": "/console/rentals",
        "rental-detail": f"/console/rentals/{rental.id}",
        "renters": "/console/renters",
        "renter-detail": f"/console/renters/{rental.user_id}",
        "money": "/console/money",
        "sync-log": "/console/sync-log",
        "parked": "/console/parked",
        "audit": "/console/audit",
        "config": "/console/config",
    }
    await page.goto(f"{core_url}/console/config")
    links = await page.eval_on_selector_all(
        "main a[href*='/console/config/']", "links => links.map(a => a.getAttribute('href'))"
    )
    for href in sorted(set(links)):
        path = urljoin(f"{core_url}/console/config/", href).removeprefix(core_url).split("?")[0]
        pages.setdefault("config-" + path.removeprefix("/console/config/").strip("/").replace("/", "-"), path)
    return pages


async def test_a_viewer_sees_every_page_and_no_action(
    viewer_page: Page,
    core_url: str,
    core_api: CoreApi,
    deployed_fleet: DeployedFleet,
    finished_rental: FinishedRental,
    artefacts: ArtefactShooter,
) -> None:
    page = viewer_page
    pages = await console_pages(page, core_url, core_api, deployed_fleet, finished_rental)
    for name, path in pages.items():
        answer = await page.goto(core_url + path)
        assert answer is not None and answer.status == 200, f"{path}: {answer and answer.status}"
        await expect(page.locator("[data-testid=current-user]")).to_contain_text("viewer")
        for link in NAV_LINKS:
            await expect(page.locator(f"nav [data-testid={link}]")).to_be_attached()
        actions = await page.eval_on_selector_all(
            "[data-action]", "found => found.map(e => e.getAttribute('data-action'))"
        )
        assert actions == [], f"a viewer sees actions on {path}: {actions}"
        await artefacts.shoot(page, f"viewer-{name}")


async def test_an_action_posted_by_a_viewer_is_refused(
    admin_page: Page,
    viewer_page: Page,
    core_url: str,
    core_api: CoreApi,
    deployed_fleet: DeployedFleet,
) -> None:
    bank = next(slot.bank for slot in deployed_fleet.cabinet(1).state.slots.values() if slot.bank is not None)
    bank_id = await core_api.bank_id(str(bank.sn))
    detail = f"{core_url}/console/powerbanks/{bank_id}"
    await admin_page.goto(detail)
    action = await admin_page.get_attribute("[data-testid=bank-status-form]", "action")
    target = urljoin(detail, action or "")

    await viewer_page.goto(detail)
    token = await viewer_page.get_attribute("input[name=csrf_token]", "value")
    assert token, "the viewer's page carries no CSRF token (the logout form has one)"
    refused = await viewer_page.context.request.post(
        target, form={"csrf_token": token, "status": "retired", "reason": "a viewer trying"}, max_redirects=0
    )
    assert refused.status == 403
    assert (await core_api.admin_get(f"/api/admin/powerbanks/{bank_id}"))["status"] == "AVAILABLE"


async def test_a_form_without_the_csrf_token_is_refused(
    admin_page: Page,
    context: BrowserContext,
    core_url: str,
    core_api: CoreApi,
    deployed_fleet: DeployedFleet,
) -> None:
    page = admin_page
    bank = next(
        slot.bank
        for slot in reversed(deployed_fleet.cabinet(1).state.slots.values())
        if slot.bank is not None
    )
    bank_id = await core_api.bank_id(str(bank.sn))
    detail = f"{core_url}/console/powerbanks/{bank_id}"
    await page.goto(detail)
    form = page.locator("[data-testid=bank-status-form]")
    target = urljoin(detail, await form.get_attribute("action") or "")
    token = await form.locator("input[name=csrf_token]").get_attribute("value")
    assert token
    body = {"status": "maintenance", "reason": "CSRF probe"}

    # The browser context's requests carry the session cookie, as a forged cross-site form post would.
    missing = await context.request.post(target, form=body, max_redirects=0)
    assert missing.status == 403
    assert CSRF_REFUSAL in await missing.text()
    wrong = await context.request.post(target, form={**body, "csrf_token": token[::-1]}, max_redirects=0)
    assert wrong.status == 403
    assert (await core_api.admin_get(f"/api/admin/powerbanks/{bank_id}"))["status"] == "AVAILABLE"

    # The same post with the session's token goes through: the token was what was missing.
    accepted = await context.request.post(target, form={**body, "csrf_token": token}, max_redirects=0)
    assert accepted.status in (200, 303), accepted.status
    assert (await core_api.admin_get(f"/api/admin/powerbanks/{bank_id}"))["status"] == "MAINTENANCE"

    # The login form is protected too (a login CSRF would sign the victim into the attacker's account).
    login = await context.request.post(
        f"{core_url}/console/login", form={"email": "x@example.com", "password": "whatever"}, max_redirects=0
    )
    assert login.status == 403
