"""Console renters: search, the wallet and its ledger, and the account status (the renters service,
audited with the logged-in account; refused for a viewer and without the CSRF token)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from chargeghar_core.auth.models import Role
from chargeghar_core.renters.models import RenterProfile
from console_support import ConsoleUser
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from test_console_rentals import LATE_FEE, PRICE, add_renter, completed_rental, staff_audit

Login = Callable[..., Awaitable[ConsoleUser]]


def renter_ids(html: str) -> set[str]:
    return set(re.findall(r'data-testid="renter-row" data-user-id="([^"]+)"', html))


async def profile_of(session: AsyncSession, user_id: object) -> RenterProfile:
    rows = await session.execute(
        select(RenterProfile)
        .where(RenterProfile.user_id == user_id)
        .execution_options(populate_existing=True)
    )
    return rows.scalar_one()


async def test_search_finds_renters_by_email_or_name(console_login: Login, session: AsyncSession) -> None:
    viewer = await console_login(Role.VIEWER)
    asha = await add_renter(session, name="Asha Gurung")
    bikash = await add_renter(session, name="Bikash Thapa")
    page = await viewer.get("/console/renters", params={"q": "asha gur"})
    assert page.status_code == 200 and 'data-testid="renters-table"' in page.text
    assert renter_ids(page.text) == {str(asha.id)}
    by_mail = await viewer.get("/console/renters", params={"q": bikash.email})
    assert renter_ids(by_mail.text) == {str(bikash.id)}
    everyone = await viewer.get("/console/renters")
    assert {str(asha.id), str(bikash.id)} <= renter_ids(
        everyone.text
    ) and 'data-testid="pager"' in everyone.text
    assert "data-action" not in everyone.text


async def test_detail_shows_balance_dues_ledger_and_rentals(
    console_login: Login, session: AsyncSession
) -> None:
    viewer = await console_login(Role.VIEWER)
    renter = await add_renter(session, balance_paisa=20_000)
    rental = await completed_rental(session, renter=renter, due_paisa=700)
    page = await viewer.get(f"/console/renters/{renter.id}")
    assert page.status_code == 200, page.text
    balance = 20_000 - PRICE - LATE_FEE
    assert f'data-testid="wallet-balance">Rs {balance // 100}.{balance % 100:02d}<' in page.text
    assert 'data-testid="renter-dues">Rs 7.00<' in page.text
    # Top-up, package charge and late fee, newest first.
    kinds = re.findall(r'data-testid="ledger-row">\s*<td>[^<]*</td>\s*<td>([A-Z_]+)</td>', page.text)
    assert kinds == ["LATE_FEE", "RENTAL_CHARGE", "TOPUP"]
    assert f"/console/rentals/{rental.id}" in page.text and rental.code in page.text
    assert "data-action" not in page.text
    assert (await viewer.get(f"/console/renters/{viewer.user.id}")).status_code == 404  # staff: no renter


async def test_suspend_and_activate_through_the_service_with_an_audit_row(
    console_login: Login, session: AsyncSession
) -> None:
    admin = await console_login(Role.ADMIN)
    renter = await add_renter(session)
    page = await admin.get(f"/console/renters/{renter.id}")
    assert 'data-action="set-renter-status"' in page.text

    done = await admin.post(
        f"/console/renters/{renter.id}/status", {"status": "SUSPENDED", "reason": "fraud check"}
    )
    assert done.status_code == 303
    after = await admin.get(done.headers["location"])
    assert "flash-ok" in after.text and "Account suspended" in after.text
    profile = await profile_of(session, renter.id)
    assert profile.status == "SUSPENDED" and profile.status_reason == "fraud check"
    audit = await staff_audit(session, admin.user, "renter.status")
    assert [(a.target_id, a.details["status_before"], a.details["status"]) for a in audit] == [
        (str(renter.id), "ACTIVE", "SUSPENDED")
    ]

    await admin.post(f"/console/renters/{renter.id}/status", {"status": "ACTIVE", "reason": "cleared"})
    assert (await profile_of(session, renter.id)).status == "ACTIVE"
    for form in ({"status": "BANNED", "reason": "nope"}, {"status": "SUSPENDED", "reason": ""}):
        refused = await admin.post(f"/console/renters/{renter.id}/status", form)
        assert "flash-error" in (await admin.get(refused.headers["location"])).text
    assert (await profile_of(session, renter.id)).status == "ACTIVE"
    assert len(await staff_audit(session, admin.user, "renter.status")) == 2


async def test_viewer_and_missing_csrf_cannot_change_a_status(
    console_login: Login, session: AsyncSession
) -> None:
    renter = await add_renter(session)
    viewer = await console_login(Role.VIEWER)
    await viewer.get(f"/console/renters/{renter.id}")
    refused = await viewer.post(
        f"/console/renters/{renter.id}/status", {"status": "SUSPENDED", "reason": "mine"}
    )
    assert refused.status_code == 403
    staff = await console_login(Role.STAFF)
    forged = await staff.post(
        f"/console/renters/{renter.id}/status", {"status": "SUSPENDED", "reason": "forged"}, csrf=""
    )
    assert forged.status_code == 403 and "CSRF token missing or invalid" in forged.text
    assert (await profile_of(session, renter.id)).status == "ACTIVE"
