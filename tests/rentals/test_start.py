"""Starting a rental (flow 3): reserve, commit, eject through the ingest, settle exactly once."""

from __future__ import annotations

import uuid

from chargeghar_core.payments.models import LedgerEntry, Wallet
from chargeghar_core.powerbanks.models import PowerBank
from chargeghar_core.rentals.models import Rental
from chargeghar_core.stations.models import Station, StationSlot
from rentals_support import (
    FakeIngest,
    RentalsClient,
    add_package,
    add_renter,
    add_station,
    command_result_event,
    free_port,
    new_bank_serial,
    rental_settings,
    running_rentals_app,
)
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


async def _balance(session: AsyncSession, user_id: uuid.UUID) -> int:
    value = await session.scalar(
        select(Wallet.balance_paisa)
        .where(Wallet.user_id == user_id)
        .execution_options(populate_existing=True)
    )
    return int(value or 0)


async def _ledger_kinds(session: AsyncSession, user_id: uuid.UUID) -> list[tuple[str, int]]:
    rows = await session.execute(
        select(LedgerEntry.kind, LedgerEntry.amount_paisa)
        .where(LedgerEntry.user_id == user_id)
        .order_by(LedgerEntry.created_at, LedgerEntry.id)
    )
    return [(kind, amount) for kind, amount in rows]


async def _bank(session: AsyncSession, serial: str) -> PowerBank:
    rows = await session.execute(
        select(PowerBank).where(PowerBank.serial_number == serial).execution_options(populate_existing=True)
    )
    return rows.scalar_one()


async def _rental(session: AsyncSession, rental_id: str) -> Rental:
    rows = await session.execute(
        select(Rental).where(Rental.id == uuid.UUID(rental_id)).execution_options(populate_existing=True)
    )
    return rows.scalar_one()


async def test_start_pops_the_fullest_bank_and_answers_201_with_the_active_rental(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    low, full, mid = new_bank_serial(), new_bank_serial(), new_bank_serial()
    imei = await add_station(
        client, session, {1: low, 2: full, 3: mid, 4: None}, battery={1: 30, 2: 100, 3: 70}
    )
    fake_ingest.cabinet(imei, {1: low, 2: full, 3: mid, 4: None})
    renter = await add_renter(session, balance_paisa=10_000)
    package = await add_package(session, price_paisa=5000, duration_minutes=60)
    station_id = await session.scalar(select(Station.id).where(Station.imei == imei))

    response = await client.start(renter, station_id=station_id, package_id=package)

    assert response.status_code == 201, response.text
    data = response.json()["data"]
    assert data["status"] == "ACTIVE"
    assert data["power_bank_serial"] == full and data["slot_number"] == 2
    assert data["battery_at_start"] == 100
    assert data["charged_paisa"] == 5000
    started = data["started_at"]
    assert started is not None and data["due_at"] is not None
    assert fake_ingest.commands_for(imei, "popup_sn")[0]["data"] == full
    assert await _balance(session, renter) == 5000
    assert await _ledger_kinds(session, renter) == [("ADJUSTMENT", 10_000), ("RENTAL_CHARGE", -5000)]
    bank = await _bank(session, full)
    assert (bank.status, bank.current_station_id, bank.current_slot_number) == ("RENTED", None, None)
    slot = (
        await session.execute(
            select(StationSlot)
            .where(StationSlot.station_id == station_id, StationSlot.slot_number == 2)
            .execution_options(populate_existing=True)
        )
    ).scalar_one()
    assert (slot.status, slot.power_bank_id) == ("AVAILABLE", None)

    active = await client.http.get("/api/rentals/active", headers=client.renter_headers(renter))
    assert active.json()["data"]["id"] == data["id"]


async def test_a_named_bank_is_taken_by_station_serial(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    first, second = new_bank_serial(), new_bank_serial()
    imei = await add_station(client, session, {1: first, 2: second})
    fake_ingest.cabinet(imei, {1: first, 2: second})
    renter = await add_renter(session, balance_paisa=5000)
    package = await add_package(session)
    serial = await session.scalar(select(Station.serial_number).where(Station.imei == imei))

    response = await client.start(renter, station_serial=serial, package_id=package, power_bank_serial=first)

    assert response.status_code == 201, response.text
    assert response.json()["data"]["power_bank_serial"] == first


async def test_popup_failure_with_the_bank_still_in_its_slot_cancels_and_refunds_exactly_once(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    serial = new_bank_serial()
    imei = await add_station(client, session, {1: serial})
    fake_ingest.cabinet(imei, {1: serial}, popup_mode="failed")
    renter = await add_renter(session, balance_paisa=8000)
    package = await add_package(session, price_paisa=5000)
    station_id = await session.scalar(select(Station.id).where(Station.imei == imei))

    response = await client.start(renter, station_id=station_id, package_id=package)

    assert response.status_code == 409
    assert response.json()["error"] == "POPUP_FAILED"
    rental_data = response.json()["details"]["rental"]
    assert rental_data["status"] == "CANCELLED" and rental_data["refunded_paisa"] == 5000
    assert [c["cmd"] for c in fake_ingest.commands_for(imei)] == ["popup_sn", "check"]
    assert await _balance(session, renter) == 8000
    assert await _ledger_kinds(session, renter) == [
        ("ADJUSTMENT", 8000),
        ("RENTAL_CHARGE", -5000),
        ("REFUND", 5000),
    ]
    bank = await _bank(session, serial)
    assert bank.status == "AVAILABLE" and bank.current_slot_number == 1

    # The same failure reported late (a command_result), twice: nothing changes, no second refund.
    rental = await _rental(session, rental_data["id"])
    for _ in range(2):
        late = command_result_event(
            imei, command_id=rental.popup_command_id, cmd="popup_sn", outcome="failed", reply={"sn": serial}
        )
        assert (await client.sync(late)).status_code == 200
    assert await _balance(session, renter) == 8000
    assert len(await _ledger_kinds(session, renter)) == 3

    # The bank can be rented again right away.
    fake_ingest.cabinets[imei].popup_mode = "ok"
    again = await client.start(renter, station_id=station_id, package_id=package)
    assert again.status_code == 201, again.text


async def test_popup_timeout_with_the_bank_gone_activates_without_refund(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    serial = new_bank_serial()
    imei = await add_station(client, session, {1: serial})
    fake_ingest.cabinet(imei, {1: serial}, popup_mode="timeout_ejected")
    renter = await add_renter(session, balance_paisa=5000)
    package = await add_package(session, price_paisa=5000)
    station_id = await session.scalar(select(Station.id).where(Station.imei == imei))

    response = await client.start(renter, station_id=station_id, package_id=package)

    assert response.status_code == 201, response.text
    data = response.json()["data"]
    assert data["status"] == "ACTIVE" and data["refunded_paisa"] == 0
    # The earliest the bank can have left is when the eject was asked for: the due time counts from then.
    assert data["started_at"] == data["popup_requested_at"]
    assert await _balance(session, renter) == 0
    assert (await _bank(session, serial)).status == "RENTED"


async def test_timeout_then_late_success_is_active_and_never_refunded(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    serial = new_bank_serial()
    imei = await add_station(client, session, {1: serial})
    fake_ingest.cabinet(imei, {1: serial}, popup_mode="timeout", check_mode="timeout")
    renter = await add_renter(session, balance_paisa=5000)
    package = await add_package(session, price_paisa=5000)
    station_id = await session.scalar(select(Station.id).where(Station.imei == imei))

    response = await client.start(renter, station_id=station_id, package_id=package)

    # Neither the eject nor the check could decide: the rental stays pending, the client can poll it.
    assert response.status_code == 202, response.text
    rental_id = response.json()["data"]["id"]
    await client.runtime.drain(10)
    polled = await client.http.get(f"/api/rentals/{rental_id}", headers=client.renter_headers(renter))
    assert polled.json()["data"]["status"] == "PENDING_POPUP"

    rental = await _rental(session, rental_id)
    late_ok = command_result_event(
        imei,
        command_id=rental.popup_command_id,
        cmd="popup_sn",
        outcome="ok",
        reply={"cmd": "0x31", "sn": serial, "hole": 1, "succeeded": True},
    )
    answer = await client.sync(late_ok)
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["settled"]["rental_status"] == "ACTIVE"
    replay = await client.sync(late_ok)  # same reply delivered again under another event id
    assert replay.status_code == 200

    rental = await _rental(session, rental_id)
    assert rental.status == "ACTIVE" and rental.refunded_paisa == 0
    assert await _balance(session, renter) == 0
    assert [kind for kind, _ in await _ledger_kinds(session, renter)] == ["ADJUSTMENT", "RENTAL_CHARGE"]


async def test_late_check_reply_settles_a_pending_rental(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    serial = new_bank_serial()
    imei = await add_station(client, session, {1: serial})
    fake_ingest.cabinet(imei, {1: serial}, popup_mode="timeout", check_mode="timeout")
    renter = await add_renter(session, balance_paisa=5000)
    package = await add_package(session, price_paisa=5000)
    station_id = await session.scalar(select(Station.id).where(Station.imei == imei))
    response = await client.start(renter, station_id=station_id, package_id=package)
    assert response.status_code == 202
    await client.runtime.drain(10)
    rental = await _rental(session, response.json()["data"]["id"])
    assert rental.awaiting_check and rental.check_command_id

    check_reply = {"cmd": "0x10", "holes": [{"index": 1, "sn": serial, "has_bank": True}]}
    event = command_result_event(
        imei, command_id=rental.check_command_id, cmd="check", outcome="ok", reply=check_reply
    )
    assert (await client.sync(event)).status_code == 200

    rental = await _rental(session, str(rental.id))
    assert rental.status == "CANCELLED" and rental.refunded_paisa == 5000
    assert await _balance(session, renter) == 5000


async def test_ingest_unreachable_cancels_cleanly_and_refunds(
    rentals_database_url: str,
    test_sessionmaker: async_sessionmaker[AsyncSession],
    session: AsyncSession,
    fake_ingest: FakeIngest,
) -> None:
    closed_port = free_port()  # nothing listens there
    settings = rental_settings(f"http://127.0.0.1:{closed_port}")
    async with running_rentals_app(rentals_database_url, settings, sessionmaker=test_sessionmaker) as client:
        serial = new_bank_serial()
        imei = await add_station(client, session, {1: serial})
        renter = await add_renter(session, balance_paisa=5000)
        package = await add_package(session, price_paisa=5000)
        station_id = await session.scalar(select(Station.id).where(Station.imei == imei))

        response = await client.start(renter, station_id=station_id, package_id=package)

    assert response.status_code == 409 and response.json()["error"] == "POPUP_FAILED"
    assert response.json()["details"]["rental"]["end_reason"] == "popup_not_sent:INGEST_UNREACHABLE"
    assert await _balance(session, renter) == 5000
    assert (await _bank(session, serial)).status == "AVAILABLE"


async def test_offline_station_reply_cancels_without_a_check(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    serial = new_bank_serial()
    imei = await add_station(client, session, {1: serial})
    fake_ingest.cabinet(imei, {1: serial}, online=False)
    renter = await add_renter(session, balance_paisa=5000)
    package = await add_package(session)
    station_id = await session.scalar(select(Station.id).where(Station.imei == imei))

    response = await client.start(renter, station_id=station_id, package_id=package)

    assert response.status_code == 409 and response.json()["error"] == "POPUP_FAILED"
    assert [c["cmd"] for c in fake_ingest.commands_for(imei)] == ["popup_sn"]
    assert await _balance(session, renter) == 5000


# --------------------------------------------------------------------------------------------- prerequisites


async def test_prerequisites_are_checked_before_anything_is_reserved(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    serial = new_bank_serial()
    imei = await add_station(client, session, {1: serial, 2: None})
    fake_ingest.cabinet(imei, {1: serial, 2: None})
    station_id = await session.scalar(select(Station.id).where(Station.imei == imei))
    package = await add_package(session, price_paisa=5000)
    inactive_package = await add_package(session, is_active=False)

    poor = await add_renter(session, balance_paisa=4999)
    response = await client.start(poor, station_id=station_id, package_id=package)
    assert (response.status_code, response.json()["error"]) == (402, "INSUFFICIENT_FUNDS")

    renter = await add_renter(session, balance_paisa=20_000)
    response = await client.start(renter, station_id=station_id, package_id=inactive_package)
    assert (response.status_code, response.json()["error"]) == (409, "PACKAGE_UNAVAILABLE")

    response = await client.start(renter, station_id=uuid.uuid4(), package_id=package)
    assert (response.status_code, response.json()["error"]) == (404, "STATION_NOT_FOUND")

    await session.execute(update(Station).where(Station.id == station_id).values(status="OFFLINE"))
    await session.commit()
    response = await client.start(renter, station_id=station_id, package_id=package)
    assert (response.status_code, response.json()["error"]) == (409, "STATION_UNAVAILABLE")
    await session.execute(update(Station).where(Station.id == station_id).values(status="ONLINE"))
    await session.commit()

    await session.execute(update(PowerBank).where(PowerBank.serial_number == serial).values(battery_level=10))
    await session.commit()
    response = await client.start(renter, station_id=station_id, package_id=package)
    assert (response.status_code, response.json()["error"]) == (409, "NO_POWER_BANK_AVAILABLE")
    await session.execute(update(PowerBank).where(PowerBank.serial_number == serial).values(battery_level=90))
    await session.commit()

    first = await client.start(renter, station_id=station_id, package_id=package)
    assert first.status_code == 201
    second = await client.start(renter, station_id=station_id, package_id=package)
    assert (second.status_code, second.json()["error"]) == (409, "RENTAL_ALREADY_OPEN")

    staff = await client.http.post(
        "/api/rentals",
        json={"station_id": str(station_id), "package_id": str(package)},
        headers=client.staff_headers(),
    )
    assert staff.status_code == 403
    assert fake_ingest.commands_for(imei, "popup_sn") == [fake_ingest.commands_for(imei, "popup_sn")[0]]


async def test_a_suspended_renter_cannot_start(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    from chargeghar_core.renters.models import RenterProfile

    serial = new_bank_serial()
    imei = await add_station(client, session, {1: serial})
    station_id = await session.scalar(select(Station.id).where(Station.imei == imei))
    renter = await add_renter(session, balance_paisa=9000)
    await session.execute(
        update(RenterProfile).where(RenterProfile.user_id == renter).values(status="SUSPENDED")
    )
    await session.commit()
    response = await client.start(renter, station_id=station_id, package_id=await add_package(session))
    assert (response.status_code, response.json()["error"]) == (403, "ACCOUNT_NOT_ACTIVE")


async def test_availability_hides_reserved_and_low_banks(
    client: RentalsClient, session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    low, full, mid = new_bank_serial(), new_bank_serial(), new_bank_serial()
    imei = await add_station(client, session, {1: low, 2: full, 3: mid}, battery={1: 5, 2: 100, 3: 70})
    fake_ingest.cabinet(imei, {1: low, 2: full, 3: mid})
    serial = await session.scalar(select(Station.serial_number).where(Station.imei == imei))

    before = (await client.http.get(f"/api/rentals/availability/{serial}")).json()["data"]
    assert [b["power_bank_serial"] for b in before["banks"]] == [full, mid]
    renter = await add_renter(session, balance_paisa=5000)
    assert (
        await client.start(renter, station_serial=serial, package_id=await add_package(session))
    ).status_code == 201
    after = (await client.http.get(f"/api/rentals/availability/{serial}")).json()["data"]
    assert (after["rentable_banks"], after["banks"][0]["power_bank_serial"]) == (1, mid)
    assert (await client.http.get("/api/rentals/availability/nope")).status_code == 404
