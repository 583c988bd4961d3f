"""How many SQL statements (round trips) each station event costs, counted on the request's connection.

The request session joins the test's transaction in savepoint mode, so its BEGIN/COMMIT show up as the
SAVEPOINT/RELEASE pair and are counted too: every number here is a count of round trips. A full snapshot
and a batch must cost a constant number whatever their size. (The small events — returned, status,
slot_event, return_failed, command_result — are counted in test_event_budget.py.)
"""

from __future__ import annotations

import uuid

from core_support import (
    INTERNAL_BATCH,
    CoreClient,
    StatementCounter,
    full_event,
    new_bank_serial,
    new_imei,
    on_postgres,
    sent_by,
)


async def _steady_full_sync(client: CoreClient, counter: StatementCounter, slot_count: int) -> list[str]:
    imei = new_imei()
    banks = {n: (new_bank_serial() if n % 2 else None) for n in range(1, slot_count + 1)}
    # The first sync creates the station and banks; the measured one is the steady state (same banks, moved).
    assert (await client.sync(full_event(imei, banks))).status_code == 200
    shifted = {n: banks.get(n - 1) for n in range(1, slot_count + 1)}
    return await sent_by(counter, lambda: client.sync(full_event(imei, shifted, battery=55)))


async def test_full_sync_costs_a_constant_number_of_round_trips(
    client: CoreClient, statement_counter: StatementCounter
) -> None:
    small = await _steady_full_sync(client, statement_counter, 4)
    large = await _steady_full_sync(client, statement_counter, 24)
    assert len(small) == len(large), (small, large)
    # PostgreSQL inside the test's transaction: SAVEPOINT (BEGIN), the station lock, ONE statement that
    # claims, checks and writes everything, RELEASE (COMMIT). Outside a transaction the lock is part of
    # the statement and BEGIN/COMMIT are not sent: see test_snapshot_round_trips.py.
    budget = 4 if on_postgres(client) else 15
    assert len(small) <= budget, small
    assert not any("FROM rentals" in statement and "FOR UPDATE" in statement for statement in small), small


async def _batch(client: CoreClient, counter: StatementCounter, size: int) -> list[str]:
    imeis = [new_imei() for _ in range(size)]
    banks = {imei: new_bank_serial() for imei in imeis}
    first = [{**full_event(imei, {1: banks[imei], 2: None}), "event_id": uuid.uuid4().hex} for imei in imeis]
    assert (await client.post_signed(INTERNAL_BATCH, {"events": first})).status_code == 200
    events = [
        {**full_event(imei, {1: None, 2: banks[imei]}, battery=60), "event_id": uuid.uuid4().hex}
        for imei in imeis
    ]
    statements = await sent_by(counter, lambda: client.post_signed(INTERNAL_BATCH, {"events": events}))
    response = await client.post_signed(INTERNAL_BATCH, {"events": events})
    # Sent again: every event is a duplicate now (the set-based pass steps aside for the general one).
    assert all(item["data"]["duplicate"] for item in response.json()["data"]["results"])
    return statements


async def test_batch_of_full_syncs_costs_a_constant_number_of_round_trips(
    client: CoreClient, statement_counter: StatementCounter
) -> None:
    small = await _batch(client, statement_counter, 5)
    large = await _batch(client, statement_counter, 20)
    if on_postgres(client):
        # SAVEPOINT of the request, SAVEPOINT of the set-based pass, the station locks, ONE statement for
        # every snapshot, two RELEASEs: the same for 5 and for 20 snapshots of 5 and 20 stations.
        assert len(small) == len(large) <= 6, (small, large)
    else:
        # SQLite applies snapshot by snapshot: a bounded number per event.
        assert (len(large) - len(small)) / 15 <= 12, (small, large)
