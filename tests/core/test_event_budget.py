"""Round trips of the small station events (``iot.event_writes``), counted on the request's connection.

The request session joins the test's transaction in savepoint mode, so its BEGIN/COMMIT are the
SAVEPOINT/RELEASE pair and are counted: on PostgreSQL an applied ``returned`` (no open rental), ``status``,
``slot_event``, ``return_failed`` or ``command_result`` is SAVEPOINT, ONE statement (claim, station lock,
apply, stored result, sync-log row) and RELEASE. SQLite runs the same definitions one by one (no
data-modifying CTEs), so it only has a ceiling.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from chargeghar_core.rentals.station_events import RentalReturnOutcome, ReturnContext
from core_support import (
    CoreClient,
    StatementCounter,
    ask_rentals_always,
    full_event,
    new_bank_serial,
    new_imei,
    on_postgres,
    returned_event,
    sent_by,
    status_event,
)
from sqlalchemy.ext.asyncio import AsyncSession


def _slot_event(imei: str, bank: str, slot: int, state_code: int = 1) -> dict[str, Any]:
    return {
        "type": "slot_event",
        "timestamp": int(time.time()),
        "device": {"serial_number": imei, "imei": imei},
        "slot_number": slot,
        "state_code": state_code,
        "state_name": "SUCCESS" if state_code == 1 else "FAIL",
        "slot_status": "OCCUPIED",
        "power_bank_serial": bank,
        "power_bank_status": "AVAILABLE",
        "event_id": str(uuid.uuid4()),
    }


def _return_failed(imei: str, slot: int) -> dict[str, Any]:
    return {
        "type": "return_failed",
        "timestamp": int(time.time()),
        "device": {"imei": imei},
        "slot_number": slot,
        "state_code": 0x24,
        "state_name": "LOCK_FAILED",
        "power_bank_serial": None,
        "event_id": str(uuid.uuid4()),
    }


def _command_result(imei: str) -> dict[str, Any]:
    return {
        "type": "command_result",
        "timestamp": int(time.time()),
        "device": {"imei": imei},
        "command_id": f"c-{uuid.uuid4().hex[:8]}",
        "cmd": "popup_sn",
        "outcome": "ok",
        "reply_cmd": "0x31",
        "reply": {"result": 1},
        "elapsed_ms": 100,
    }


async def test_small_events_cost_one_statement_besides_begin_and_commit(
    client: CoreClient, statement_counter: StatementCounter
) -> None:
    imei = new_imei()
    bank, other = new_bank_serial(), new_bank_serial()
    assert (await client.sync(full_event(imei, {1: None, 2: bank, 3: None}))).status_code == 200
    sends: dict[str, Callable[[], Awaitable[Any]]] = {
        "returned": lambda: client.sync(returned_event(imei, bank, 1)),
        "returned_unknown_bank": lambda: client.sync(returned_event(imei, other, 3)),
        "status": lambda: client.sync(status_event(imei, "OFFLINE")),
        "slot_event": lambda: client.sync(_slot_event(imei, bank, 2)),
        "failed_slot_event": lambda: client.sync(_slot_event(imei, bank, 2, state_code=3)),
        "return_failed": lambda: client.sync(_return_failed(imei, 1)),
        "command_result": lambda: client.sync(_command_result(imei)),
    }
    counts = {name: len(await sent_by(statement_counter, send)) for name, send in sends.items()}
    if on_postgres(client):
        # SAVEPOINT (BEGIN), the event's one statement, RELEASE (COMMIT).
        assert counts == dict.fromkeys(sends, 3), counts
    else:
        # SQLite: the claim and the station lock, calc, then each write alone; a return also asks the
        # rentals domain (SQLite has no open-rental flag in its claim).
        assert all(count <= 20 for count in counts.values()), counts


async def test_the_first_status_of_a_new_station_costs_more_but_is_bounded(
    client: CoreClient, statement_counter: StatementCounter
) -> None:
    statements = await sent_by(statement_counter, lambda: client.sync(status_event(new_imei(), "ONLINE")))
    # PostgreSQL: the one statement finds no station; the placeholder is created and locked (insert +
    # select) and the status applied to it: 3 + 3.
    assert len(statements) <= (6 if on_postgres(client) else 12), statements


async def test_a_duplicate_small_event_is_answered_from_its_stored_result(
    client: CoreClient, statement_counter: StatementCounter
) -> None:
    imei = new_imei()
    assert (await client.sync(full_event(imei, {1: None}))).status_code == 200
    event = status_event(imei, "ONLINE")
    first = await client.sync(event)
    statements = await sent_by(statement_counter, lambda: client.sync(event))
    assert first.json()["data"]["applied"] is True
    # PostgreSQL: the one statement claims nothing, then the stored result is read and the DUPLICATE row
    # written.
    assert len(statements) <= (5 if on_postgres(client) else 8), statements


async def test_a_return_with_an_open_rental_goes_through_the_rentals_step(
    client: CoreClient,
    statement_counter: StatementCounter,
    monkeypatch: pytest.MonkeyPatch,
    session: AsyncSession,
) -> None:
    async def complete(
        _session: AsyncSession, _settings: Any, _currency: str, context: ReturnContext
    ) -> RentalReturnOutcome:
        return RentalReturnOutcome("r-1", "RNT-1", "COMPLETED", True, "0.00")

    ask_rentals_always(monkeypatch, complete_open_rental=complete)
    imei = new_imei()
    bank = new_bank_serial()
    assert (await client.sync(full_event(imei, {1: None, 2: bank}))).status_code == 200
    statements = await sent_by(statement_counter, lambda: client.sync(returned_event(imei, bank, 1)))
    # The rentals step needs the bank row and the open rental before the set-based write: SAVEPOINT, claim
    # + lock, the bank, [the rentals' own statements: none with this stand-in], the slot write (result and
    # sync log included), RELEASE. A real open rental adds its lock, transition, charges and notification.
    assert len(statements) <= (5 if on_postgres(client) else 16), statements
