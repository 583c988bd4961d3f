"""Concurrent starts against real, committed, concurrent sessions (PostgreSQL in CI; SQLite locally, where
writers are serialised by the database lock)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from chargeghar_core.kit.db import create_sessionmaker
from chargeghar_core.payments.models import LedgerEntry, Wallet
from chargeghar_core.rentals.models import Rental
from chargeghar_core.stations.models import Station
from rentals_support import (
    FakeIngest,
    RentalsClient,
    add_package,
    add_renter,
    add_station,
    new_bank_serial,
    rental_settings,
    running_rentals_app,
)
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession


@pytest.fixture
async def committed_client(
    rentals_committed_url: str, fake_ingest: FakeIngest
) -> AsyncIterator[RentalsClient]:
    settings = rental_settings(fake_ingest.base_url, busy_retry_s=20.0, start_wait_s=30.0)
    async with running_rentals_app(rentals_committed_url, settings) as client:
        yield client


@pytest.fixture
async def committed_session(committed_engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with create_sessionmaker(committed_engine)() as session:
        yield session


async def test_twenty_concurrent_starts_for_three_banks_make_exactly_three_rentals(
    committed_client: RentalsClient, committed_session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    banks: dict[int, str | None] = {1: new_bank_serial(), 2: new_bank_serial(), 3: new_bank_serial(), 4: None}
    imei = await add_station(committed_client, committed_session, banks)
    fake_ingest.cabinet(imei, banks)
    station_id = await committed_session.scalar(select(Station.id).where(Station.imei == imei))
    package = await add_package(committed_session, price_paisa=5000)
    renters = [await add_renter(committed_session, balance_paisa=5000) for _ in range(20)]

    responses = await asyncio.gather(
        *(committed_client.start(renter, station_id=station_id, package_id=package) for renter in renters)
    )

    statuses = Counter((r.status_code, r.json().get("error")) for r in responses)
    assert statuses == {(201, None): 3, (409, "NO_POWER_BANK_AVAILABLE"): 17}, statuses
    rentals = (
        (await committed_session.execute(select(Rental).where(Rental.station_id == station_id)))
        .scalars()
        .all()
    )
    assert len(rentals) == 3
    assert sorted(r.power_bank_serial for r in rentals) == sorted(s for s in banks.values() if s)
    assert {r.status for r in rentals} == {"ACTIVE"}
    # Everyone who got nothing paid nothing; the three who rented paid once.
    rows = await committed_session.execute(
        select(Wallet.user_id, Wallet.balance_paisa).where(Wallet.user_id.in_(renters))
    )
    balances = {user_id: balance for user_id, balance in rows}
    winners = {r.user_id for r in rentals}
    assert all(balances[u] == (0 if u in winners else 5000) for u in renters)
    assert len(fake_ingest.commands_for(imei, "popup_sn")) == 3


async def test_two_concurrent_starts_by_one_renter_make_one_rental(
    committed_client: RentalsClient, committed_session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    banks: dict[int, str | None] = {1: new_bank_serial(), 2: new_bank_serial(), 3: new_bank_serial()}
    imei = await add_station(committed_client, committed_session, banks)
    fake_ingest.cabinet(imei, banks)
    station_id = await committed_session.scalar(select(Station.id).where(Station.imei == imei))
    package = await add_package(committed_session, price_paisa=5000)
    renter = await add_renter(committed_session, balance_paisa=20_000)

    responses = await asyncio.gather(
        *(committed_client.start(renter, station_id=station_id, package_id=package) for _ in range(2))
    )

    statuses = sorted((r.status_code, r.json().get("error")) for r in responses)
    assert statuses == [(201, None), (409, "RENTAL_ALREADY_OPEN")]
    count = await committed_session.scalar(
        select(func.count()).select_from(Rental).where(Rental.user_id == renter)
    )
    assert count == 1
    charges = await committed_session.scalar(
        select(func.count())
        .select_from(LedgerEntry)
        .where(LedgerEntry.user_id == renter, LedgerEntry.kind == "RENTAL_CHARGE")
    )
    assert charges == 1
    assert uuid.UUID(
        responses[0].json()["data"]["id"]
        if responses[0].status_code == 201
        else responses[1].json()["data"]["id"]
    )


async def test_a_station_busy_for_longer_than_the_retry_window_cancels_and_refunds(
    rentals_committed_url: str, committed_session: AsyncSession, fake_ingest: FakeIngest
) -> None:
    banks: dict[int, str | None] = {1: new_bank_serial(), 2: new_bank_serial()}
    settings = rental_settings(fake_ingest.base_url, busy_retry_s=0.5, start_wait_s=30.0)
    async with running_rentals_app(rentals_committed_url, settings) as client:
        imei = await add_station(client, committed_session, banks)
        fake_ingest.cabinet(imei, banks, popup_delay_s=2.0)
        station_id = await committed_session.scalar(select(Station.id).where(Station.imei == imei))
        package = await add_package(committed_session, price_paisa=5000)
        first, second = [await add_renter(committed_session, balance_paisa=5000) for _ in range(2)]

        slow = asyncio.create_task(client.start(first, station_id=station_id, package_id=package))
        # Once the fake ingest has the first eject, it holds the station's single command slot (for 2 s).
        while not fake_ingest.commands_for(imei, "popup_sn") and not slow.done():
            await asyncio.sleep(0.01)
        refused = await client.start(second, station_id=station_id, package_id=package)
        served = await slow

    assert served.status_code == 201, served.text
    assert (refused.status_code, refused.json()["error"]) == (409, "POPUP_FAILED")
    assert refused.json()["details"]["rental"]["end_reason"] == "popup_not_sent:DEVICE_BUSY"
    balance = await committed_session.scalar(
        select(Wallet.balance_paisa).where(Wallet.user_id == second).execution_options(populate_existing=True)
    )
    assert balance == 5000
