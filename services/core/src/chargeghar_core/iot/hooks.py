"""Seams where the rentals domain plugs into station-event processing.

Core ships "no rentals" defaults; the rentals issue implements these protocols and installs them with
:func:`chargeghar_core.app.create_app` (``hooks=IotHooks(...)``). Every hook runs inside the event's
transaction with the event's session: it may read and write, must only ``flush()``, and its work is rolled
back together with the event when anything fails — which is what makes "closed exactly once" hold.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from chargeghar_protocol.contract import CommandResultEvent
from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True, slots=True)
class ReturnContext:
    """A bank was inserted into a slot (a ``returned`` event)."""

    station_id: uuid.UUID
    station_serial: str
    slot_number: int
    power_bank_id: uuid.UUID
    power_bank_serial: str
    battery_level: int | None
    returned_at: datetime
    condition: str
    event_key: str
    # False for a return reported only over device HTTP: the rentals domain records it as a claim on the
    # open rental instead of completing it (design: "money follows corroborated facts").
    corroborated: bool = True


@dataclass(frozen=True, slots=True)
class RentalReturnOutcome:
    """What the rentals domain answers for a return that completed an open rental (contract.md §2.2)."""

    rental_id: str
    rental_code: str
    rental_status: str
    returned_on_time: bool
    amount_due: str
    extra: dict[str, Any] = field(default_factory=dict)
    # True when the return was only claimed: the rental stays out and the bank is not placed in the slot.
    claimed_only: bool = False


class ReturnHandler(Protocol):
    async def complete_open_rental(
        self, session: AsyncSession, context: ReturnContext
    ) -> RentalReturnOutcome | None:
        """Complete the open rental of ``context.power_bank_id`` if there is one; None when none is open."""
        ...


class SnapshotReturnReconciler(Protocol):
    async def reconcile_snapshot(
        self,
        session: AsyncSession,
        *,
        station_id: uuid.UUID,
        bank_serials: Sequence[str],
        observed_at: datetime,
        event_key: str,
    ) -> int:
        """A full snapshot shows these banks in the station's slots: close, as returns at this station, any
        rental still open for one of them (returned while the station was offline). Returns how many were
        closed. Called before the banks are marked present; use one set-based query, not a loop."""
        ...


class CommandResultHandler(Protocol):
    async def settle(
        self, session: AsyncSession, event: CommandResultEvent, station_id: uuid.UUID | None
    ) -> dict[str, Any] | None:
        """A device reply that arrived after its waiter gave up: settle what it decides (e.g. a pending
        rental). Returns data to include in the answer, or None."""
        ...


class NoOpenRentals:
    """Default until the rentals domain exists: no rental is ever open, every return is a re-homing."""

    async def complete_open_rental(
        self, session: AsyncSession, context: ReturnContext
    ) -> RentalReturnOutcome | None:
        return None

    async def reconcile_snapshot(
        self,
        session: AsyncSession,
        *,
        station_id: uuid.UUID,
        bank_serials: Sequence[str],
        observed_at: datetime,
        event_key: str,
    ) -> int:
        return 0


class NoPendingCommands:
    async def settle(
        self, session: AsyncSession, event: CommandResultEvent, station_id: uuid.UUID | None
    ) -> dict[str, Any] | None:
        return None


@dataclass(frozen=True, slots=True)
class IotHooks:
    returns: ReturnHandler = field(default_factory=NoOpenRentals)
    snapshot_returns: SnapshotReturnReconciler = field(default_factory=NoOpenRentals)
    command_results: CommandResultHandler = field(default_factory=NoPendingCommands)
