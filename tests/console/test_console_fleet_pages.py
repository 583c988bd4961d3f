"""Dashboard, stations, power banks and configuration pages: what they show, the actions they run through
the API's service functions (audited), CSRF and the viewer role."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from chargeghar_core.audit.models import StaffAuditEntry
from chargeghar_core.auth.models import Role
from chargeghar_core.devices.models import Device
from chargeghar_core.powerbanks.models import PowerBank, PowerBankModel
from chargeghar_core.pricing.models import LateFeePolicy, RentalPackage, StationDiscount
from chargeghar_core.stations.models import Station
from console_support import ConsoleUser, FakeIngest, add_open_rental, add_station, new_bank_serial, new_imei
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

Login = Callable[..., Awaitable[ConsoleUser]]


async def _audit(session: AsyncSession, actor: ConsoleUser, action: str) -> list[StaffAuditEntry]:
    rows = await session.scalars(
        select(StaffAuditEntry)
        .where(StaffAuditEntry.actor_id == actor.user.id, StaffAuditEntry.action == action)
        .order_by(StaffAuditEntry.created_at)
    )
    return list(rows)


def _flash(response: httpx.Response) -> tuple[str, str]:
    match = re.search(r'data-testid="flash" class="flash flash-(ok|error)"[^>]*>([^<]*)<', response.text)
    assert match is not None, "no flash on the page"
    return match.group(1), match.group(2)


async def _follow(user: ConsoleUser, response: httpx.Response) -> httpx.Response:
    assert response.status_code == 303, response.text
    return await user.get(response.headers["location"])


async def test_dashboard_shows_the_api_numbers_and_refreshes_as_a_fragment(
    console_login: Login, session: AsyncSession
) -> None:
    await add_station(session, {1: new_bank_serial(), 2: None})
    admin = await console_login(Role.ADMIN)
    page = await admin.get("/console/")
    for testid in ("dashboard-counts", "dashboard-money", "dashboard-sync"):
        assert f'data-testid="{testid}"' in page.text
    assert 'hx-get="/console/dashboard/panels"' in page.text and "every 10s" in page.text
    online = re.search(r'data-count="stations-online">(\d+)<', page.text)
    assert online is not None and int(online.group(1)) >= 1
    fragment = await admin.get("/console/dashboard/panels")
    assert fragment.status_code == 200
    assert "<nav" not in fragment.text and 'data-testid="dashboard-counts"' in fragment.text


async def test_station_list_filters_maps_and_pages(console_login: Login, session: AsyncSession) -> None:
    kathmandu = await add_station(session, {1: new_bank_serial()})
    offline = await add_station(session, {1: None}, status="OFFLINE", latitude=0.0, longitude=0.0)
    viewer = await console_login(Role.VIEWER)
    page = await viewer.get("/console/stations")
    assert f'data-imei="{kathmandu.imei}"' in page.text and f'data-imei="{offline.imei}"' in page.text
    assert 'id="station-map"' in page.text and "station-map-data" in page.text
    assert "tile.openstreetmap.org" in page.headers["content-security-policy"]
    only_offline = await viewer.get("/console/stations", params={"status": "OFFLINE"})
    assert f'data-imei="{offline.imei}"' in only_offline.text
    assert f'data-imei="{kathmandu.imei}"' not in only_offline.text
    searched = await viewer.get("/console/stations", params={"q": kathmandu.name})
    assert (
        f'data-imei="{kathmandu.imei}"' in searched.text
        and f'data-imei="{offline.imei}"' not in searched.text
    )
    # A station without coordinates only: no map.
    no_map = await viewer.get("/console/stations", params={"q": offline.name})
    assert 'id="station-map"' not in no_map.text


async def test_station_detail_shows_slots_banks_and_battery(
    console_login: Login, session: AsyncSession
) -> None:
    serial = new_bank_serial()
    station = await add_station(session, {1: serial, 2: None}, battery=64)
    staff = await console_login(Role.STAFF)
    page = await staff.get(f"/console/stations/{station.imei}")
    assert page.status_code == 200
    assert 'data-testid="station-status">ONLINE<' in page.text
    row = re.search(r'<tr data-testid="slot-row" data-slot="1">(.*?)</tr>', page.text, re.S)
    assert row is not None and serial in row.group(1) and "64%" in row.group(1)
    assert 'data-action="eject-slot" data-slot="1"' in page.text
    assert 'data-action="eject-slot" data-slot="2"' not in page.text  # empty slot: nothing to eject
    assert 'data-action="check"' in page.text and 'data-action="reboot"' in page.text
    assert (await staff.get(f"/console/stations/{new_imei()}")).status_code == 404


async def test_eject_confirms_then_runs_the_staff_command_once_and_audits(
    console_login: Login, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    serial = new_bank_serial()
    station = await add_station(session, {3: serial})
    staff = await console_login(Role.STAFF)
    confirm = await staff.get(f"/console/stations/{station.imei}/eject", params={"slot": 3})
    assert confirm.status_code == 200
    assert 'data-testid="confirm-submit"' in confirm.text and 'data-testid="confirm-cancel"' in confirm.text
    assert serial in confirm.text
    assert fake_ingest.received == []  # nothing sent before the confirmation
    done = await _follow(staff, await staff.post(f"/console/stations/{station.imei}/eject", {"slot": "3"}))
    assert _flash(done) == ("ok", _flash(done)[1]) and "Eject of slot 3: done" in _flash(done)[1]
    assert fake_ingest.received == [{"imei": station.imei, "cmd": "popup", "data": "3"}]
    rows = await _audit(session, staff, "device.command")
    assert len(rows) == 1 and rows[0].outcome == "ok" and rows[0].station_id == station.id
    assert rows[0].details["power_bank_serial"] == serial

    # By bank serial, with the station refusing: the refusal is the flash, audited too.
    fake_ingest.refuse = "DEVICE_BUSY"
    refused = await _follow(
        staff, await staff.post(f"/console/stations/{station.imei}/eject", {"serial": serial})
    )
    kind, text = _flash(refused)
    assert kind == "error" and "DEVICE_BUSY" in text
    assert len(fake_ingest.received) == 2 and fake_ingest.received[1]["cmd"] == "popup_sn"
    outcomes = [row.outcome for row in await _audit(session, staff, "device.command")]
    assert outcomes == ["ok", "not_sent:DEVICE_BUSY"]


async def test_eject_of_a_bank_on_an_open_rental_is_refused_before_sending(
    console_login: Login, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    serial = new_bank_serial()
    station = await add_station(session, {1: serial})
    await add_open_rental(session, station, serial)
    admin = await console_login(Role.ADMIN)
    page = await _follow(admin, await admin.post(f"/console/stations/{station.imei}/eject", {"slot": "1"}))
    kind, text = _flash(page)
    assert kind == "error" and "open rental" in text
    assert fake_ingest.received == []


async def test_check_and_reboot_are_sent_and_audited(
    console_login: Login, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    station = await add_station(session, {1: None})
    admin = await console_login(Role.ADMIN)
    for action in ("check", "reboot"):
        page = await _follow(admin, await admin.post(f"/console/stations/{station.imei}/{action}"))
        assert _flash(page)[0] == "ok"
    assert [item["cmd"] for item in fake_ingest.received] == ["check", "reboot"]
    rows = await _audit(session, admin, "device.command")
    assert [row.details["request"]["cmd"] for row in rows] == ["check", "reboot"]
    fake_ingest.outcome = "timeout"
    page = await _follow(admin, await admin.post(f"/console/stations/{station.imei}/check"))
    assert _flash(page)[0] == "error" and "no answer" in _flash(page)[1]


async def test_posts_without_or_with_a_wrong_csrf_token_are_refused(
    console_login: Login, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    station = await add_station(session, {1: None})
    admin = await console_login(Role.ADMIN)
    for token in ("", "not-the-token"):
        refused = await admin.post(f"/console/stations/{station.imei}/check", csrf=token)
        assert refused.status_code == 403
        assert "CSRF token missing or invalid" in refused.text
    # The htmx header is accepted in place of the form field.
    via_header = await admin.http.post(
        f"/console/stations/{station.imei}/check", headers={"X-CSRF-Token": admin.csrf}
    )
    assert via_header.status_code == 303
    assert len(fake_ingest.received) == 1
    assert len(await _audit(session, admin, "device.command")) == 1


async def test_viewer_sees_no_action_and_every_action_post_is_refused(
    console_login: Login, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    serial = new_bank_serial()
    station = await add_station(session, {1: serial})
    bank_id = await session.scalar(select(PowerBank.id).where(PowerBank.serial_number == serial))
    undeployed = await add_station(session, {1: None})
    undeployed_row = await session.get(Station, undeployed.id)
    assert undeployed_row is not None
    undeployed_row.is_deployed = False
    session.add(Device(id=uuid.uuid4(), imei=new_imei(), status="pending"))
    await session.commit()
    viewer = await console_login(Role.VIEWER)
    for path in (
        "/console/",
        "/console/stations",
        f"/console/stations/{station.imei}",
        "/console/powerbanks",
        f"/console/powerbanks/{bank_id}",
        "/console/config",
    ):
        page = await viewer.get(path)
        assert page.status_code == 200, path
        assert "data-action" not in page.text, path
        assert 'data-testid="logout"' in page.text
    assert (
        await viewer.get(f"/console/stations/{station.imei}/eject", params={"slot": 1})
    ).status_code == 403
    posts: list[tuple[str, dict[str, Any]]] = [
        (f"/console/stations/{station.imei}/check", {}),
        (f"/console/stations/{station.imei}/eject", {"slot": "1"}),
        (f"/console/powerbanks/{bank_id}/status", {"status": "maintenance", "reason": "viewer try"}),
        ("/console/config/models", {"serial_prefix": "77", "model": "X", "capacity_mah": "1000"}),
    ]
    for path, data in posts:
        refused = await viewer.post(path, data)
        assert refused.status_code == 403, path
        assert "read-only" in refused.text
    assert fake_ingest.received == []
    bank = await session.get(PowerBank, bank_id)
    assert bank is not None
    await session.refresh(bank)
    assert bank.status == "AVAILABLE"


async def test_bank_status_with_a_reason_is_audited_and_refused_on_an_open_rental(
    console_login: Login, session: AsyncSession
) -> None:
    serial = new_bank_serial()
    station = await add_station(session, {1: serial})
    bank_id = await session.scalar(select(PowerBank.id).where(PowerBank.serial_number == serial))
    staff = await console_login(Role.STAFF)
    page = await staff.get(f"/console/powerbanks/{bank_id}")
    assert (
        'data-testid="bank-status">AVAILABLE<' in page.text and 'data-testid="bank-status-form"' in page.text
    )
    listed = await staff.get("/console/powerbanks", params={"q": serial, "condition": "HEALTHY"})
    assert f'data-serial="{serial}"' in listed.text
    faulty = await staff.get("/console/powerbanks", params={"q": serial, "condition": "FAULT"})
    assert f'data-serial="{serial}"' not in faulty.text

    no_reason = await _follow(
        staff, await staff.post(f"/console/powerbanks/{bank_id}/status", {"status": "maintenance"})
    )
    assert _flash(no_reason)[0] == "error"
    done = await _follow(
        staff,
        await staff.post(
            f"/console/powerbanks/{bank_id}/status", {"status": "maintenance", "reason": "cracked case"}
        ),
    )
    assert _flash(done)[0] == "ok" and 'data-testid="bank-status">MAINTENANCE<' in done.text
    rows = await _audit(session, staff, "power_bank.status")
    assert (
        len(rows) == 1
        and rows[0].details["reason"] == "cracked case"
        and rows[0].details["to"] == "MAINTENANCE"
    )
    assert "cracked case" in done.text  # the operator actions table

    await add_open_rental(session, station, serial)
    refused = await _follow(
        staff,
        await staff.post(f"/console/powerbanks/{bank_id}/status", {"status": "retired", "reason": "old one"}),
    )
    kind, text = _flash(refused)
    assert kind == "error" and "open rental" in text
    assert len(await _audit(session, staff, "power_bank.status")) == 1


async def test_configuration_changes_go_through_the_services_and_are_audited(
    console_login: Login, session: AsyncSession
) -> None:
    admin = await console_login(Role.ADMIN)
    assert (await admin.get("/console/config")).status_code == 200
    prefix = uuid.uuid4().hex[:6]

    async def post(path: str, data: dict[str, Any]) -> tuple[str, str]:
        page = await _follow(admin, await admin.post(path, data))
        return _flash(page)

    assert (await post("/console/config/policies", {"name": f"P1 {prefix}", "is_default": "on"}))[0] == "ok"
    assert (await post("/console/config/policies", {"name": f"P2 {prefix}", "is_default": "on"}))[0] == "ok"
    defaults = (await session.scalars(select(LateFeePolicy).where(LateFeePolicy.is_default.is_(True)))).all()
    assert [policy.name for policy in defaults] == [
        f"P2 {prefix}"
    ]  # the pricing service's single-default rule
    policy = defaults[0]

    created = await post(
        "/console/config/packages",
        {
            "name": f"Hour {prefix}",
            "duration_minutes": "60",
            "price_paisa": "5000",
            "payment_model": "PREPAID",
            "late_fee_policy_id": str(policy.id),
            "is_active": "on",
        },
    )
    assert created[0] == "ok"
    package = await session.scalar(select(RentalPackage).where(RentalPackage.name == f"Hour {prefix}"))
    assert package is not None and package.late_fee_policy_id == policy.id
    saved = await post(
        f"/console/config/packages/{package.id}", {"name": package.name, "price_paisa": "6000"}
    )
    assert saved[0] == "ok"
    await session.refresh(package)
    assert package.price_paisa == 6000 and package.is_active is False
    bad = await post("/console/config/packages", {"name": "x", "duration_minutes": "0", "price_paisa": "1"})
    assert bad[0] == "error" and "duration_minutes" in bad[1]

    station = await add_station(session, {1: None})
    assert (
        await post(
            "/console/config/discounts", {"imei": station.imei, "percent_bp": "1500", "is_active": "on"}
        )
    )[0] == "ok"
    discount = await session.scalar(select(StationDiscount).where(StationDiscount.station_id == station.id))
    assert discount is not None and discount.percent_bp == 1500
    assert (await post(f"/console/config/discounts/{station.id}/delete", {}))[0] == "ok"

    assert (
        await post(
            "/console/config/models", {"serial_prefix": prefix, "model": "CG-10K", "capacity_mah": "10000"}
        )
    )[0] == "ok"
    assert (
        await session.scalar(select(PowerBankModel).where(PowerBankModel.serial_prefix == prefix)) is not None
    )
    taken = await post(
        "/console/config/models", {"serial_prefix": prefix, "model": "CG-10K", "capacity_mah": "10000"}
    )
    assert taken[0] == "error" and "mapped already" in taken[1]

    imei = new_imei()
    assert (await post("/console/config/devices", {"imei": imei, "note": "mall"}))[0] == "ok"
    assert (await post(f"/console/config/devices/{imei}/revoke", {}))[0] == "ok"
    assert (await post(f"/console/config/devices/{imei}/approve", {"note": "back"}))[0] == "ok"

    fresh = await add_station(session, {1: None})
    row = await session.get(Station, fresh.id)
    assert row is not None
    row.is_deployed = False
    await session.commit()
    no_location = await post(
        f"/console/config/stations/{fresh.id}/deploy", {"name": "New", "latitude": "", "longitude": ""}
    )
    deployed = await post(
        f"/console/config/stations/{fresh.id}/deploy",
        {"name": "Thamel", "serial_number": f"CG-{prefix}", "latitude": "27.715", "longitude": "85.312"},
    )
    assert deployed[0] == "ok"
    await session.refresh(row)
    assert row.is_deployed and row.name == "Thamel"
    assert no_location[0] in ("ok", "error")

    actions = [
        entry.action
        for entry in (
            await session.scalars(
                select(StaffAuditEntry)
                .where(StaffAuditEntry.actor_id == admin.user.id)
                .order_by(StaffAuditEntry.created_at)
            )
        ).all()
    ]
    for expected in (
        "late_fee_policy.create",
        "package.create",
        "package.update",
        "station_discount.set",
        "station_discount.remove",
        "powerbank_model.create",
        "device.register",
        "device.revoke",
        "device.approve",
        "station.configure",
    ):
        assert expected in actions, expected


async def test_pages_of_a_long_list_keep_the_filters(console_login: Login, session: AsyncSession) -> None:
    prefix = f"Page{uuid.uuid4().hex[:5]}"
    for number in range(27):
        station = await add_station(session, {1: None})
        row = await session.get(Station, station.id)
        assert row is not None
        row.name = f"{prefix} {number:02d}"
    await session.commit()
    viewer = await console_login(Role.VIEWER)
    first = await viewer.get("/console/stations", params={"q": prefix, "status": "ONLINE"})
    assert first.text.count('data-testid="station-row"') == 25
    assert "1–25 of 27" in first.text
    link = re.search(r'href="([^"]+)" rel="next"', first.text)
    assert link is not None
    second = await viewer.get(link.group(1).replace("&amp;", "&"))
    assert second.text.count('data-testid="station-row"') == 2 and "26–27 of 27" in second.text
