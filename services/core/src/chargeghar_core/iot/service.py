"""Applying station events (contract.md §2): idempotency, stale detection, snapshot reconciliation.

One :class:`StationEventProcessor` call applies one event inside the caller's transaction (the request's,
or a savepoint per event in a batch) and only flushes. A full snapshot costs a constant number of SQL
statements whatever the slot count: every slot and every bank is written by one multi-row upsert. On
PostgreSQL a snapshot (or a batch of snapshots of distinct stations) is applied by ONE statement that
claims, locks, checks and writes (``iot.snapshots``; a single sync is then one round trip, BEGIN and COMMIT
included); a snapshot it cannot apply (new station, stale, repeated, a bank out on a rental) and SQLite
take the step-by-step path (``iot.repository.SnapshotWriter``).

Rentals are an ordinary domain: returns, snapshots and late command replies call
``chargeghar_core.rentals.station_events`` directly, inside the event's transaction — and only for banks the
claim found with an open rental (a snapshot of a station with none never queries the rentals).
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from chargeghar_protocol.contract import (
    CommandAuditEvent,
    CommandResultEvent,
    ErrorCode,
    FullEvent,
    FullSyncResult,
    PowerBankStatus,
    ReturnedEvent,
    ReturnFailedEvent,
    SlotEvent,
    SlotStatus,
    StationEvent,
    StationStatus,
    StatusEvent,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from chargeghar_core.iot import event_writes
from chargeghar_core.iot.repository import (
    ClaimResult,
    ProcessedEventRepository,
    SnapshotFinish,
    SnapshotWriter,
    SyncLogRow,
)
from chargeghar_core.iot.snapshots import PlannedSlot, SnapshotPlan, SnapshotRepository, applicable_together
from chargeghar_core.kit.db import dialect_name, utcnow
from chargeghar_core.kit.errors import CoreError, ValidationFailed
from chargeghar_core.kit.guard import sanitize_json, strip_unstorable
from chargeghar_core.powerbanks.models import BankCondition, PowerBank
from chargeghar_core.powerbanks.repository import (
    BATTERY_UNKNOWN_KEY,
    BankObservation,
    PowerBankRepository,
)
from chargeghar_core.powerbanks.service import ModelCatalog, resolve_model
from chargeghar_core.rentals import station_events as rental_events
from chargeghar_core.rentals.runtime import RentalRuntime
from chargeghar_core.rentals.station_events import ReturnContext
from chargeghar_core.stations.models import Station, StationStatusHistory, SyncLog, SyncOutcome
from chargeghar_core.stations.repository import SlotObservation, StationRepository

logger = structlog.get_logger(__name__)

# The error code a failed event is answered with, by event type (contract.md §2 item 6).
FAILURE_CODES: Mapping[str, str] = {
    "full": ErrorCode.SYNC_ERROR.value,
    "returned": ErrorCode.RETURN_ERROR.value,
    "status": ErrorCode.STATUS_ERROR.value,
    "command_result": ErrorCode.SYNC_ERROR.value,
    "slot_event": ErrorCode.SYNC_ERROR.value,
    "return_failed": ErrorCode.RETURN_ERROR.value,
    "command_audit": ErrorCode.SYNC_ERROR.value,
}

# Device views of a bank that mean "the cabinet reports a fault" (contract.md §2.1 vocabulary): they set
# the bank's condition, never its operator status.
_DEVICE_FAULT_STATUSES = frozenset({PowerBankStatus.MAINTENANCE, PowerBankStatus.DAMAGED})
_RETURN_SUCCESS_STATE = 0x01


class EventProcessingFailed(CoreError):
    """An unexpected error while applying an event: answered 500 with the type's code, never a bare 500."""

    status_code = 500
    code = ErrorCode.SYNC_ERROR.value
    default_message = "Station event could not be processed"


@dataclass(frozen=True, slots=True)
class EventOutcome:
    outcome: SyncOutcome
    message: str
    data: dict[str, Any]
    station_id: uuid.UUID | None
    # True when the result and the sync-log row were already written with the event's last statement.
    finished: bool = False


@dataclass(frozen=True, slots=True)
class EventContext:
    event_key: str
    received_at: datetime
    payload_json: str  # the event as received, stored in the sync log
    started: float  # time.perf_counter() when the request started, for the sync log's duration
    # ``sig:<signature>`` when the event key is not the signature itself (an X-Event-Id or a body event_id):
    # claimed too, so a signed request replayed under a new event id is a duplicate, not applied again.
    replay_key: str | None = None


@dataclass(slots=True)
class BatchClaims:
    """Keys claimed and stations locked up front for a whole batch (PostgreSQL): two statements per batch
    instead of one per event. Only valid inside the transaction (or savepoint) that made them."""

    claimed: set[str]
    stations: dict[str, Station]
    # Serials named by the batch's events that have an open rental (None: not looked up).
    rented: frozenset[str] | None = None

    def take_claim(self, event_key: str) -> bool:
        """True for the first event with this key: a repeat within the batch is a duplicate."""
        if event_key in self.claimed:
            self.claimed.discard(event_key)
            return True
        return False


class StationEventProcessor:
    def __init__(self, session: AsyncSession, rentals: RentalRuntime, catalog: ModelCatalog) -> None:
        self.session = session
        self.rentals = rentals
        self.catalog = catalog
        self.stations = StationRepository(session)
        self.banks = PowerBankRepository(session)
        self.processed = ProcessedEventRepository(session)

    async def claim_batch(self, events: Sequence[tuple[StationEvent, EventContext]]) -> BatchClaims | None:
        """Claim and lock for a whole batch up front (PostgreSQL; None elsewhere: claimed per event)."""
        if not events or dialect_name(self.session) != "postgresql":
            return None
        claimed, stations, rented = await self.processed.claim_and_lock_many(
            [(context.event_key, event.type) for event, context in events],
            [event.device.identity for event, _ in events],
            events[0][1].received_at,
            sorted({serial for event, _ in events for serial in _serials_named(event)}),
        )
        return BatchClaims(claimed, stations, rented)

    async def process(
        self, event: StationEvent, context: EventContext, batch: BatchClaims | None = None
    ) -> EventOutcome:
        """Apply ``event`` once. A repeat of an applied event answers the first result as a duplicate.

        ``batch``: the claims and locks :meth:`claim_batch` made for the batch this event belongs to."""
        _check_identifier_lengths(event)
        if batch is None and (direct := await self._apply_direct(event, context)) is not None:
            # PostgreSQL, a small event type: claimed, locked and applied by one statement (event_writes).
            return direct
        if batch is None and isinstance(event, FullEvent):
            # PostgreSQL: the whole snapshot in one statement (iot.snapshots); None: the general path below
            # (a new station, a stale or repeated snapshot, a bank out on a rental, SQLite).
            snapshot = await self.apply_snapshots_at_once([(event, context)])
            if snapshot is not None:
                return snapshot[0]
        if batch is None:
            # One statement on PostgreSQL: the signature's replay claim, the event's claim (both released
            # again if the event fails), the station row lock (held until the transaction ends: two events
            # of one station apply one after the other, and the stale check sees the newest observed_at),
            # and which of the banks the event names have an open rental.
            claim = await self.processed.claim_and_lock(
                context.event_key,
                event.type,
                event.device.identity,
                context.received_at,
                replay_key=context.replay_key,
                serials=_serials_named(event),
            )
            if claim.replayed:
                logger.warning("station_event_signature_replayed", event_key=context.event_key)
        else:
            # Locked already; the in-memory row is current: every write to it in this transaction goes
            # through the ORM or is mirrored into it (see _apply_full).
            claim = ClaimResult(
                claimed=batch.take_claim(context.event_key),
                station=batch.stations.get(event.device.identity),
                rented=batch.rented,
            )
        if not claim.claimed:
            return await self._duplicate(event, context)
        with structlog.contextvars.bound_contextvars(
            correlation_id=event.correlation_id, event_key=context.event_key
        ):
            outcome = await self._apply(event, claim.station, context, claim.rented)
        if not outcome.finished:
            await self.processed.complete_and_log(
                context.event_key,
                outcome=outcome.outcome.value,
                station_id=outcome.station_id,
                result=outcome.data,
                log=self._log_row(event, context, outcome.outcome, outcome.station_id),
            )
        await self.session.flush()
        return outcome

    async def _apply(
        self,
        event: StationEvent,
        station: Station | None,
        context: EventContext,
        rented: frozenset[str] | None,
    ) -> EventOutcome:
        if isinstance(event, FullEvent):
            outcome = await self._apply_full(event, station, context, rented)
        elif isinstance(event, ReturnedEvent):
            outcome = await self._apply_returned(event, station, context, rented)
        elif isinstance(event, StatusEvent):
            outcome = await self._apply_status(event, station, context)
        elif isinstance(event, SlotEvent):
            outcome = await self._apply_slot_event(event, station, context)
        elif isinstance(event, ReturnFailedEvent):
            outcome = await self._apply_return_failed(event, station, context)
        elif isinstance(event, CommandAuditEvent):
            outcome = self._apply_command_audit(event, station)
        else:
            outcome = await self._apply_command_result(event, station, context)
        return outcome

    async def _duplicate(self, event: StationEvent, context: EventContext) -> EventOutcome:
        outcome, result, station_id = await self.processed.stored(context.event_key)
        data = {**(result or {}), "duplicate": True}
        await self.processed.add_log(self._log_row(event, context, SyncOutcome.DUPLICATE, station_id))
        logger.info("station_event_duplicate", event_key=context.event_key, first_outcome=outcome)
        return EventOutcome(SyncOutcome.DUPLICATE, "Duplicate event; already processed", data, station_id)

    @staticmethod
    def _log_row(
        event: StationEvent, context: EventContext, outcome: SyncOutcome, station_id: uuid.UUID | None
    ) -> SyncLogRow:
        return SyncLogRow(
            station_id=station_id,
            station_key=event.device.identity[:64],
            event_type=event.type,
            event_id=context.event_key,
            outcome=outcome.value,
            payload_json=context.payload_json,
            duration_ms=round((time.perf_counter() - context.started) * 1000, 3),
            created_at=context.received_at,
        )

    # ------------------------------------------------------------------ stations

    async def _create_station(self, event: StationEvent, now: datetime) -> Station:
        """A station seen for the first time: a placeholder, not deployed, locked like the others."""
        imei = event.device.identity
        serial = event.device.serial_number or imei
        if isinstance(event, FullEvent):
            serial = event.station.serial_number or serial
        name = f"New station {imei}"
        if not await self.stations.insert_placeholder(imei=imei, serial_number=serial, name=name, now=now):
            # Either a concurrent event created it (found below) or another station owns that serial.
            station = await self.stations.lock_by_imei(imei)
            if station is not None:
                return station
            await self.stations.insert_placeholder(
                imei=imei, serial_number=f"IMEI-{imei}", name=name, now=now
            )
        station = await self.stations.lock_by_imei(imei)
        if station is None:
            raise EventProcessingFailed(f"Station {imei} could not be created")
        logger.info("station_created", imei=imei, station_id=str(station.id))
        return station

    @staticmethod
    def _status_change(
        station: Station,
        new_status: str,
        trigger: str,
        at: datetime,
        *,
        channel: str | None = None,
        channel_changed: bool = False,
    ) -> StationStatusHistory | None:
        """The history row of a status change (None when the status stays), with the time spent before.

        ``channel_changed``: a presence channel changed state even though the station's status stays; the
        row (previous status = status) records which channel it was."""
        if station.status == new_status and not channel_changed:
            return None
        previous_duration = None
        if station.status_changed_at is not None:
            previous_duration = max(0.0, (at - station.status_changed_at).total_seconds())
        return StationStatusHistory(
            id=uuid.uuid4(),
            station_id=station.id,
            previous_status=station.status,
            status=new_status,
            trigger=trigger,
            changed_at=at,
            previous_duration_s=previous_duration,
            channel=channel,
        )

    async def _change_status(
        self,
        station: Station,
        new_status: str,
        trigger: str,
        at: datetime,
        *,
        channel: str | None = None,
        channel_changed: bool = False,
    ) -> bool:
        change = self._status_change(
            station, new_status, trigger, at, channel=channel, channel_changed=channel_changed
        )
        if change is None:
            return False
        await self.stations.add_history(change)
        if station.status != new_status:
            station.status = new_status
            station.status_changed_at = at
        return True

    # ------------------------------------------------------------------ full

    async def _apply_full(
        self, event: FullEvent, station: Station | None, context: EventContext, rented: frozenset[str] | None
    ) -> EventOutcome:
        now = context.received_at
        observed_at = event.observed_at or now
        station = station or await self._create_station(event, now)
        if station.observed_at is not None and observed_at < station.observed_at:
            data = FullSyncResult(
                station_id=str(station.id),
                station_serial=station.serial_number,
                slots_updated=0,
                powerbanks_updated=0,
                returns_reconciled=0,
                applied=False,
                timestamp=now,
            ).to_wire()
            logger.info("snapshot_stale", station_id=str(station.id), observed_at=observed_at.isoformat())
            return EventOutcome(
                SyncOutcome.STALE,
                "Older snapshot than the one applied; recorded, not applied",
                data,
                station.id,
            )

        slot_rows, bank_rows = self._snapshot_rows(event, station.id)
        serials = [bank.serial_number for bank in bank_rows]
        if rented is not None:
            # The claim already looked: only banks with an open rental go to the rentals domain.
            serials = [serial for serial in serials if serial in rented]
        returns = 0
        if serials:
            # Before the banks are marked present: close the rentals of banks back in a slot.
            returns = await rental_events.reconcile_snapshot(
                self.session,
                self.rentals.settings,
                self.rentals.payment_settings.currency,
                station_id=station.id,
                bank_serials=serials,
                observed_at=observed_at,
                event_key=context.event_key,
            )
        if bank_rows:
            prefixes = await self.catalog.prefixes(self.banks.model_prefixes)
            bank_rows = [self._with_model(bank, prefixes) for bank in bank_rows]
        writer = SnapshotWriter(self.session)
        bank_ids = await writer.write_banks(station.id, bank_rows, now)
        slots = []
        for row in slot_rows:
            written = bank_ids.get(row.bank_serial) if row.bank_serial else None
            battery = row.battery_level
            if battery is None:
                # Unknown now (0xFF): the slot shows the bank's last known level, never a made-up 0.
                battery = written.battery_level if written is not None else 0
            slots.append(
                SlotObservation(
                    slot_number=row.slot_number,
                    status=row.status,
                    battery_level=battery,
                    power_bank_id=written.id if written is not None else None,
                    metadata=row.metadata,
                )
            )
        # The cabinet's size: as reported, or larger when the snapshot lists a higher slot. Slots beyond it
        # exist only if it shrank, so the DELETE is needed only then.
        highest = max([event.station.total_slots, *(slot.slot_number for slot in slots)])
        if highest < station.total_slots:
            await self.stations.delete_slots_above(station.id, highest)

        device = event.device
        # No status in the snapshot (an HTTP upload): HTTP life says nothing about the MQTT link commands
        # need, so the station keeps the status its presence events gave it.
        new_status = _effective_status(station, device.status.value if device.status else station.status)
        change = self._status_change(station, new_status, "full", observed_at)
        if change is not None:
            await self.stations.add_history(change)
            await self.session.flush()
        data = FullSyncResult(
            station_id=str(station.id),
            station_serial=station.serial_number,
            slots_updated=len(slots),
            powerbanks_updated=len(bank_ids),
            returns_reconciled=returns,
            applied=True,
            timestamp=now,
        ).to_wire()
        finish = SnapshotFinish(
            station_values={
                "status": new_status,
                "status_changed_at": observed_at if change is not None else station.status_changed_at,
                "total_slots": highest,
                "hardware_info": _merged_hardware_info(station.hardware_info, event),
                "last_heartbeat": device.last_heartbeat or observed_at,
                "observed_at": observed_at,
                "modified_at": now,
            },
            event_key=context.event_key,
            result=data,
            log=self._log_row(event, context, SyncOutcome.SUCCESS, station.id),
        )
        await writer.write_slots_and_finish(station.id, slots, finish, now)
        # The row was written with SQL: keep the loaded object equal to it (the next event of this station
        # in the same batch reads observed_at and status from it), without making it dirty.
        for name, value in finish.station_values.items():
            set_committed_value(station, name, value)
        return EventOutcome(SyncOutcome.SUCCESS, "Station data synchronised", data, station.id, finished=True)

    async def apply_snapshots_at_once(
        self, events: Sequence[tuple[StationEvent, EventContext]]
    ) -> list[EventOutcome] | None:
        """PostgreSQL: apply full snapshots (of distinct stations) all at once with one statement, or none
        of them (None: nothing was written, take the general path). See ``iot.snapshots``."""
        snapshots = SnapshotRepository(self.session)
        if not snapshots.available or not events:
            return None
        full = [(event, context) for event, context in events if isinstance(event, FullEvent)]
        if len(full) != len(events):
            return None
        try:
            for event, _ in full:
                _check_identifier_lengths(event)
        except ValidationFailed:
            return None
        prefixes = await self.catalog.prefixes(self.banks.model_prefixes)
        plans = [self._snapshot_plan(event, context, prefixes) for event, context in full]
        if not applicable_together(plans):
            return None
        applied = await snapshots.apply(plans)
        if applied is None:
            return None
        outcomes = []
        for plan, written in zip(plans, applied, strict=True):
            data = {
                **plan.result,
                "station_id": str(written.station_id),
                "station_serial": written.station_serial,
            }
            outcomes.append(
                EventOutcome(
                    SyncOutcome.SUCCESS, "Station data synchronised", data, written.station_id, finished=True
                )
            )
        return outcomes

    def _snapshot_plan(
        self, event: FullEvent, context: EventContext, prefixes: list[tuple[str, str, int]]
    ) -> SnapshotPlan:
        """Everything of a snapshot that does not depend on its station's row (the statement reads that)."""
        now = context.received_at
        observed_at = event.observed_at or now
        slot_rows, bank_rows = self._snapshot_rows(event, None)
        highest = max([event.station.total_slots, *(row.slot_number for row in slot_rows)])
        device = event.device
        result = FullSyncResult(
            station_id="",
            station_serial="",
            slots_updated=len(slot_rows),
            powerbanks_updated=len(bank_rows),
            returns_reconciled=0,
            applied=True,
            timestamp=now,
        ).to_wire()
        return SnapshotPlan(
            event_key=context.event_key,
            event_type=event.type,
            replay_key=context.replay_key,
            imei=event.device.identity,
            observed_at=observed_at,
            device_status=device.status.value if device.status else None,
            total_slots=highest,
            hardware_patch=_merged_hardware_info({}, event),
            last_heartbeat=device.last_heartbeat or observed_at,
            result=result,
            payload_json=context.payload_json,
            duration_ms=round((time.perf_counter() - context.started) * 1000, 3),
            now=now,
            banks=[self._with_model(bank, prefixes) for bank in bank_rows],
            slots=[
                PlannedSlot(row.slot_number, row.status, row.battery_level, row.bank_serial, row.metadata)
                for row in slot_rows
            ],
        )

    def _snapshot_rows(
        self, event: FullEvent, station_id: uuid.UUID | None
    ) -> tuple[list[_SlotRow], list[BankObservation]]:
        """Slots and banks of a snapshot, each bank in at most one slot (the first slot naming it wins)."""
        slot_rows: dict[int, _SlotRow] = {}
        for slot in event.slots:
            metadata = slot.slot_metadata.to_wire()
            if slot.battery_level is None and slot.power_bank_serial:
                metadata[BATTERY_UNKNOWN_KEY] = True
            slot_rows[slot.slot_number] = _SlotRow(
                slot_number=slot.slot_number,
                status=slot.status.value,
                battery_level=slot.battery_level if slot.power_bank_serial else (slot.battery_level or 0),
                bank_serial=slot.power_bank_serial or None,
                metadata=metadata,
            )
        banks_by_serial = {bank.serial_number: bank for bank in event.power_banks}
        bank_slot: dict[str, int] = {}
        for row in slot_rows.values():
            if row.bank_serial is None:
                continue
            if row.bank_serial in bank_slot:
                logger.warning("bank_in_two_slots", serial=row.bank_serial, slot=row.slot_number)
                row.bank_serial = None
                continue
            bank_slot[row.bank_serial] = row.slot_number
        # A bank listed with current_slot whose slot did not name it: link it when that slot is free.
        for serial, bank in banks_by_serial.items():
            if serial in bank_slot or bank.current_slot is None:
                continue
            row_for_slot = slot_rows.get(bank.current_slot)
            if row_for_slot is not None and row_for_slot.bank_serial is None:
                row_for_slot.bank_serial = serial
                bank_slot[serial] = bank.current_slot

        observations: list[BankObservation] = []
        for serial, slot_number in bank_slot.items():
            listed = banks_by_serial.get(serial)
            slot_row = slot_rows[slot_number]
            condition, code = _snapshot_condition(listed.status if listed else None, slot_row)
            battery = listed.battery_level if listed else None
            observations.append(
                BankObservation(
                    serial_number=serial,
                    model="",
                    capacity_mah=0,
                    # In a slot: not rented. A device fault is the bank's condition, not its status.
                    status=PowerBankStatus.AVAILABLE.value,
                    battery_level=battery if battery is not None else slot_row.battery_level,
                    hardware_info=listed.hardware_info.to_wire() if listed else {},
                    station_id=station_id,
                    slot_number=slot_number,
                    condition=condition,
                    condition_code=code,
                )
            )
        return list(slot_rows.values()), observations

    @staticmethod
    def _with_model(bank: BankObservation, prefixes: list[tuple[str, str, int]]) -> BankObservation:
        spec = resolve_model(bank.serial_number, prefixes)
        return BankObservation(
            serial_number=bank.serial_number,
            model=spec.model,
            capacity_mah=spec.capacity_mah,
            status=bank.status,
            battery_level=bank.battery_level,
            hardware_info=bank.hardware_info,
            station_id=bank.station_id,
            slot_number=bank.slot_number,
            condition=bank.condition,
            condition_code=bank.condition_code,
        )

    # ------------------------------------------------------------------ returned, slots, command results
    # Set-based (iot.event_writes): one statement on PostgreSQL applies the event and writes its result and
    # sync-log row; called through _apply_direct it also claims the event and locks the station.

    async def _apply_direct(self, event: StationEvent, context: EventContext) -> EventOutcome | None:
        """PostgreSQL, a single event (not a batch) of a small type: claim, lock, apply, result and sync log
        in ONE statement. None when the event takes the general path (another type, SQLite)."""
        if dialect_name(self.session) != "postgresql" or not isinstance(
            event, StatusEvent | SlotEvent | ReturnedEvent | ReturnFailedEvent | CommandResultEvent
        ):
            return None
        if isinstance(event, ReturnedEvent) and not event_writes.RETURNS_PROBE_RENTALS:
            return None
        with structlog.contextvars.bound_contextvars(
            correlation_id=event.correlation_id, event_key=context.event_key
        ):
            outcome = await self._direct_outcome(event, context)
        if not outcome.finished and outcome.outcome is not SyncOutcome.DUPLICATE:
            await self.processed.complete_and_log(
                context.event_key,
                outcome=outcome.outcome.value,
                station_id=outcome.station_id,
                result=outcome.data,
                log=self._log_row(event, context, outcome.outcome, outcome.station_id),
            )
        return outcome

    async def _direct_outcome(
        self,
        event: StatusEvent | SlotEvent | ReturnedEvent | ReturnFailedEvent | CommandResultEvent,
        context: EventContext,
    ) -> EventOutcome:
        if isinstance(event, StatusEvent):
            status_applied = await self._write_status(event, None, context)
            if status_applied.claimed and status_applied.calc is None:
                # Claimed, but no station yet: create it (locked) and apply to it.
                return await self._apply_status(event, None, context)
            applied = status_applied
        elif isinstance(event, CommandResultEvent):
            applied = await self._write_command_result(event, context, direct=True)
        else:
            applied = await self._write_slot(event, None, context, None)
        if not applied.claimed:
            return await self._duplicate(event, context)
        if applied.replayed:
            logger.warning("station_event_signature_replayed", event_key=context.event_key)
        if isinstance(event, StatusEvent):
            return self._status_outcome(applied, None)
        if isinstance(event, CommandResultEvent):
            return await self._command_result_outcome(event, applied, context)
        if applied.calc is None:
            raise _unknown_station(event)
        if applied.calc.get("rental_open"):
            # The returned bank has an open rental: the rentals domain closes it (more statements).
            station = await self.stations.lock_by_imei(event.device.identity)
            assert isinstance(event, ReturnedEvent)
            return await self._apply_returned(event, station, context, None)
        return self._slot_outcome(event, applied, None, context.received_at)

    def _event_keys(self, event: StationEvent, context: EventContext) -> event_writes.EventKeys:
        return event_writes.EventKeys(
            event_key=context.event_key,
            event_type=event.type,
            imei=event.device.identity,
            now=context.received_at,
            replay_key=context.replay_key,
            station_key=event.device.identity[:64],
            payload_json=context.payload_json,
            duration_ms=round((time.perf_counter() - context.started) * 1000, 3),
        )

    async def _apply_returned(
        self,
        event: ReturnedEvent,
        station: Station | None,
        context: EventContext,
        rented: frozenset[str] | None,
    ) -> EventOutcome:
        info = event.return_event
        if station is None:
            raise _unknown_station(event)
        rental = None
        if rented is None or info.power_bank_serial in rented:
            # Possibly an open rental (the claim said so, or did not look): the rentals domain decides.
            bank = await self._bank_for_serial(info.power_bank_serial, context.received_at)
            returned_at = info.returned_at or event.observed_at or context.received_at
            # Device HTTP only (forgeable sign): a claim until MQTT, a `check` or a snapshot corroborates it.
            source = info.source or info.hardware_info.get("source")
            await self._known_slot(station, info.slot_number, "return_event.slot_number")
            rental = await rental_events.complete_open_rental(
                self.session,
                self.rentals.settings,
                self.rentals.payment_settings.currency,
                ReturnContext(
                    station_id=station.id,
                    station_serial=station.serial_number,
                    slot_number=info.slot_number,
                    power_bank_id=bank.id,
                    power_bank_serial=bank.serial_number,
                    battery_level=info.battery_level,
                    returned_at=returned_at,
                    condition=info.condition,
                    event_key=context.event_key,
                    corroborated=source != "http",
                ),
            )
            if rental is not None and rental.claimed_only:
                # The bank is still out on its rental as far as anything corroborated says: leave it and
                # the slot as they are.
                claim: dict[str, Any] = {
                    "station_id": str(station.id),
                    "station_serial": station.serial_number,
                    "power_bank_serial": bank.serial_number,
                    "slot_number": info.slot_number,
                    "rehomed": False,
                    "return_claimed": True,
                    "rental_id": rental.rental_id,
                    "rental_code": rental.rental_code,
                    "rental_status": rental.rental_status,
                }
                message = "Return claimed; awaiting confirmation"
                return EventOutcome(SyncOutcome.SUCCESS, message, claim, station.id)
        applied = await self._write_slot(event, station, context, rental)
        return self._slot_outcome(event, applied, station, context.received_at)

    async def _write_slot(
        self,
        event: ReturnedEvent | SlotEvent | ReturnFailedEvent,
        station: Station | None,
        context: EventContext,
        rental: rental_events.RentalReturnOutcome | None,
    ) -> event_writes.Applied:
        """The set-based write of a bank (or nothing) reported in a slot; ``station`` None: direct."""
        now = context.received_at
        slot, stale_fields, condition_at = self._slot_input(event, now, rental)
        if slot.bank_serial is not None:
            spec = resolve_model(slot.bank_serial, await self.catalog.prefixes(self.banks.model_prefixes))
            slot = dataclasses.replace(slot, new_bank_model=spec.model, new_bank_capacity=spec.capacity_mah)
        return await event_writes.apply_slot(
            self.session,
            dialect_name(self.session),
            self._event_keys(event, context),
            slot,
            station,
            stale_fields=stale_fields,
            condition_at=condition_at,
            # Direct: the claim also finds whether the returned bank has an open rental.
            probe_rental=station is None and isinstance(event, ReturnedEvent),
        )

    @staticmethod
    def _slot_input(
        event: ReturnedEvent | SlotEvent | ReturnFailedEvent,
        now: datetime,
        rental: rental_events.RentalReturnOutcome | None,
    ) -> tuple[event_writes.SlotInput, dict[str, Any], datetime]:
        observed_at = event.observed_at or now
        if isinstance(event, ReturnedEvent):
            info = event.return_event
            returned_at = info.returned_at or event.observed_at or now
            damaged = info.condition.upper() == PowerBankStatus.DAMAGED.value
            result: dict[str, Any] = {
                "power_bank_serial": info.power_bank_serial,
                "slot_number": info.slot_number,
                "rehomed": rental is None,
                "rental_id": None,
                "rental_code": None,
                "rental_status": None,
                "returned_on_time": None,
                "amount_due": None,
            }
            if rental is not None:
                result.update(
                    rental_id=rental.rental_id,
                    rental_code=rental.rental_code,
                    rental_status=rental.rental_status,
                    returned_on_time=rental.returned_on_time,
                    amount_due=rental.amount_due,
                    **rental.extra,
                )
            slot = event_writes.SlotInput(
                kind="returned",
                slot_number=info.slot_number,
                observed_at=observed_at,
                slot_status=SlotStatus.OCCUPIED.value,
                battery_level=info.battery_level,
                bank_serial=info.power_bank_serial,
                new_bank_model="",
                new_bank_capacity=0,
                # The device (or bridge) says the bank came back damaged: a condition, not an operator
                # decision. Otherwise the return says nothing about the condition.
                bank_condition=BankCondition.FAULT if damaged else None,
                bank_condition_code=PowerBankStatus.DAMAGED.value if damaged else None,
                bank_hardware_info=info.hardware_info or None,
                metadata_patch={"last_return_at": returned_at.isoformat()},
                fault_code=None,
                stale_by_snapshot=False,
                moves_bank=True,
                heartbeat=event.device.last_heartbeat or now,
                result_fields=result,
            )
            return slot, {}, returned_at
        code = f"0x{event.state_code:02x}"
        if isinstance(event, ReturnFailedEvent):
            result = {
                "slot_number": event.slot_number,
                "state_code": code,
                "state_name": event.state_name,
                "power_bank_serial": event.power_bank_serial,
            }
            failure = {
                "state_code": code,
                "state_name": event.state_name,
                "power_bank_serial": event.power_bank_serial,
                "at": observed_at.isoformat(),
            }
            # A 0x40 that is not a return: nothing changes hands, the slot only keeps a note.
            slot = event_writes.SlotInput(
                kind="return_failed",
                slot_number=event.slot_number,
                observed_at=observed_at,
                slot_status=None,
                battery_level=None,
                bank_serial=None,
                new_bank_model="",
                new_bank_capacity=0,
                bank_condition=None,
                bank_condition_code=None,
                bank_hardware_info=None,
                metadata_patch={"last_return_failure": failure},
                fault_code=code,
                stale_by_snapshot=False,
                moves_bank=False,
                heartbeat=None,
                result_fields=result,
            )
            return slot, {}, observed_at
        fault = event.power_bank_status in _DEVICE_FAULT_STATUSES
        result = {
            "slot_number": event.slot_number,
            "slot_status": event.slot_status.value,
            "power_bank_serial": event.power_bank_serial,
            "applied": True,
        }
        slot = event_writes.SlotInput(
            kind="slot_event",
            slot_number=event.slot_number,
            observed_at=observed_at,
            slot_status=event.slot_status.value,
            battery_level=event.battery_level,
            bank_serial=event.power_bank_serial or None,
            new_bank_model="",
            new_bank_capacity=0,
            bank_condition=BankCondition.FAULT if fault else BankCondition.HEALTHY,
            bank_condition_code=code if fault else None,
            bank_hardware_info=None,
            metadata_patch={
                "state_code": event.state_code,
                "state_name": event.state_name,
                "state_description": event.state_description,
                "control_index": event.control_index,
                "last_updated": observed_at.isoformat(),
            },
            fault_code=code if event.state_code != _RETURN_SUCCESS_STATE else None,
            stale_by_snapshot=True,
            moves_bank=True,
            heartbeat=None,
            result_fields=result,
        )
        return slot, {**result, "applied": False}, observed_at

    def _slot_outcome(
        self,
        event: ReturnedEvent | SlotEvent | ReturnFailedEvent,
        applied: event_writes.Applied,
        station: Station | None,
        now: datetime,
    ) -> EventOutcome:
        calc = applied.calc
        if calc is None:
            raise _unknown_station(event)
        slot_number = (
            event.return_event.slot_number if isinstance(event, ReturnedEvent) else event.slot_number
        )
        if calc["refused"]:
            field = "return_event.slot_number" if isinstance(event, ReturnedEvent) else "slot_number"
            total = station.total_slots if station is not None else calc["total_slots"]
            raise ValidationFailed(
                f"Station {calc['station_serial']} has no slot {slot_number}",
                details={field: [f"unknown slot (station has {total})"]},
            )
        data: dict[str, Any] = dict(calc["result"])
        station_id: uuid.UUID = calc["station_id"]
        if calc["stale"]:
            return EventOutcome(
                SyncOutcome.STALE,
                "Older than the last snapshot; not applied",
                data,
                station_id,
                finished=True,
            )
        if isinstance(event, ReturnedEvent):
            if station is not None:
                heartbeat = event.device.last_heartbeat or now
                event_writes.mirror_station(
                    station, {"last_heartbeat": max(filter(None, [station.last_heartbeat, heartbeat]))}
                )
            message = "Power bank re-homed" if data["rehomed"] else "Rental returned"
            return EventOutcome(SyncOutcome.SUCCESS, message, data, station_id, finished=True)
        if isinstance(event, ReturnFailedEvent):
            logger.warning(
                "return_failed",
                station_id=str(station_id),
                slot=event.slot_number,
                code=data["state_code"],
                state=event.state_name,
                power_bank_serial=event.power_bank_serial,
            )
            return EventOutcome(
                SyncOutcome.SUCCESS, "Failed return recorded", data, station_id, finished=True
            )
        if event.state_code != _RETURN_SUCCESS_STATE:
            code = f"0x{event.state_code:02x}"
            logger.info("slot_event_failed", station_id=str(station_id), slot=event.slot_number, code=code)
        return EventOutcome(SyncOutcome.SUCCESS, "Slot updated", data, station_id, finished=True)

    async def _known_slot(self, station: Station, slot_number: int, field: str) -> None:
        """400 when the cabinet's layout has no slot ``slot_number`` (checked before the rentals domain
        closes anything). Layout = 1..total_slots from the last snapshot; before any snapshot, the slots
        known."""
        in_layout = 1 <= slot_number <= station.total_slots
        if station.total_slots == 0:
            in_layout = await self.stations.get_slot(station.id, slot_number) is not None
        if not in_layout:
            raise ValidationFailed(
                f"Station {station.serial_number} has no slot {slot_number}",
                details={field: [f"unknown slot (station has {station.total_slots})"]},
            )

    async def _bank_for_serial(self, serial: str, now: datetime) -> PowerBank:
        bank = await self.banks.get_by_serial(serial)
        if bank is not None:
            return bank
        spec = resolve_model(serial, await self.catalog.prefixes(self.banks.model_prefixes))
        await self.banks.upsert_observed(
            [
                BankObservation(
                    serial_number=serial,
                    model=spec.model,
                    capacity_mah=spec.capacity_mah,
                    status=PowerBankStatus.AVAILABLE.value,
                    battery_level=0,
                    hardware_info={},
                    station_id=None,
                    slot_number=None,
                )
            ],
            now,
        )
        created = await self.banks.get_by_serial(serial)
        if created is None:
            raise EventProcessingFailed(f"Power bank {serial} could not be created")
        logger.info("power_bank_created", serial=serial, model=spec.model)
        return created

    # ------------------------------------------------------------------ status

    async def _apply_status(
        self, event: StatusEvent, station: Station | None, context: EventContext
    ) -> EventOutcome:
        station = station or await self._create_station(event, context.received_at)
        applied = await self._write_status(event, station, context)
        return self._status_outcome(applied, station)

    async def _write_status(
        self, event: StatusEvent, station: Station | None, context: EventContext
    ) -> event_writes.Applied:
        status = event_writes.StatusInput(
            reported=event.device.status.value,
            observed_at=event.observed_at or context.received_at,
            channel=event.channel,
            channels={name: value.value for name, value in event.channels.items()}
            if event.channels
            else None,
            hardware_info=event.device.hardware_info.to_wire() if event.device.hardware_info else None,
            last_heartbeat=event.device.last_heartbeat,
        )
        return await event_writes.apply_status(
            self.session, dialect_name(self.session), self._event_keys(event, context), status, station
        )

    @staticmethod
    def _status_outcome(applied: event_writes.Applied, station: Station | None) -> EventOutcome:
        calc = applied.calc
        if calc is None:
            raise EventProcessingFailed("Station status could not be applied")
        data: dict[str, Any] = dict(calc["result"])
        if calc["stale"]:
            return EventOutcome(
                SyncOutcome.STALE,
                "Older than the last status change; not applied",
                data,
                calc["station_id"],
                finished=True,
            )
        if station is not None:
            event_writes.mirror_station(
                station,
                {
                    "status": calc["new_status"],
                    "status_changed_at": calc["status_changed_at"],
                    "hardware_info": calc["hardware_info"],
                    "last_heartbeat": calc["last_heartbeat"],
                },
            )
        return EventOutcome(
            SyncOutcome.SUCCESS, "Station status recorded", data, calc["station_id"], finished=True
        )

    # ------------------------------------------------------------------ slot_event

    async def _apply_slot_event(
        self, event: SlotEvent, station: Station | None, context: EventContext
    ) -> EventOutcome:
        if station is None:
            raise _unknown_station(event)
        applied = await self._write_slot(event, station, context, None)
        return self._slot_outcome(event, applied, station, context.received_at)

    # ------------------------------------------------------------------ return_failed

    async def _apply_return_failed(
        self, event: ReturnFailedEvent, station: Station | None, context: EventContext
    ) -> EventOutcome:
        """A 0x40 that is not a return: recorded (sync log), counted per state code, noted on the slot.
        Nothing changes hands: no rental is closed and no bank moves."""
        if station is None:
            raise _unknown_station(event)
        applied = await self._write_slot(event, station, context, None)
        return self._slot_outcome(event, applied, station, context.received_at)

    # ------------------------------------------------------------------ command_result

    async def _apply_command_result(
        self, event: CommandResultEvent, station: Station | None, context: EventContext
    ) -> EventOutcome:
        applied = await self._write_command_result(event, context, direct=False)
        return await self._command_result_outcome(event, applied, context)

    async def _write_command_result(
        self, event: CommandResultEvent, context: EventContext, *, direct: bool
    ) -> event_writes.Applied:
        reply = event.reply or {}
        serial = str(reply["sn"]) if event.cmd in ("popup_sn", "popup") and reply.get("sn") else None
        return await event_writes.apply_command_record(
            self.session,
            dialect_name(self.session),
            self._event_keys(event, context),
            result_fields={
                "command_id": event.command_id,
                "cmd": event.cmd,
                "outcome": event.outcome,
                "acknowledged": True,
                "settled": None,
            },
            command_id=event.command_id,
            reply_serial=serial,
            settles=True,
            direct=direct,
        )

    async def _command_result_outcome(
        self, event: CommandResultEvent, applied: event_writes.Applied, context: EventContext
    ) -> EventOutcome:
        calc = applied.calc
        if calc is None:
            raise EventProcessingFailed("Command result could not be recorded")
        station_id: uuid.UUID | None = calc["station_id"]
        data: dict[str, Any] = dict(calc["result"])
        if not calc["refused"]:
            return EventOutcome(
                SyncOutcome.SUCCESS, "Command result recorded", data, station_id, finished=True
            )
        # A pending rental may be settled by this late reply: the rentals domain decides, then the result
        # and the sync-log row are written (by process() or _apply_direct: the outcome is not finished).
        data["settled"] = await rental_events.settle_command_result(
            self.session, self.rentals.settings, self.rentals.payment_settings.currency, event, station_id
        )
        return EventOutcome(SyncOutcome.SUCCESS, "Command result recorded", data, station_id)

    @staticmethod
    def _apply_command_audit(event: CommandAuditEvent, station: Station | None) -> EventOutcome:
        """A command the ingest sent or refused: recorded in the sync log only (the audit trail of every
        replica in one place), never a change to the station. An unknown station is recorded too."""
        station_id = station.id if station is not None else None
        data: dict[str, Any] = {
            "station_id": str(station_id) if station_id else None,
            "command_id": event.command_id,
            "cmd": event.cmd,
            "outcome": event.outcome,
            "refusal_code": event.refusal_code,
            "recorded": True,
        }
        return EventOutcome(SyncOutcome.SUCCESS, "Command audit recorded", data, station_id)


def failure_log_entry(
    *, event_type: str, station_key: str | None, context: EventContext, error: str
) -> SyncLog:
    """The FAILED sync-log row of an event; ``station_id`` is resolved when it is written.

    Every text is made storable (NUL and lone surrogates stripped, lengths capped): the row must be
    written precisely when the event held something the database refuses."""
    return SyncLog(
        id=uuid.uuid4(),
        station_id=None,
        station_key=strip_unstorable(station_key)[:MAX_IDENTIFIER_LENGTH] if station_key else None,
        event_type=strip_unstorable(event_type)[:32],
        event_id=strip_unstorable(context.event_key)[:200],
        outcome=SyncOutcome.FAILED.value,
        payload=sanitize_json(_payload_dict(context.payload_json)),
        error=strip_unstorable(error)[:MAX_ERROR_LENGTH],
        duration_ms=round((time.perf_counter() - context.started) * 1000, 3),
        created_at=utcnow(),
    )


@dataclass(slots=True)
class _SlotRow:
    slot_number: int
    status: str
    battery_level: int | None  # None: unknown (0xFF)
    bank_serial: str | None
    metadata: dict[str, Any]


def _snapshot_condition(listed: PowerBankStatus | None, slot: _SlotRow) -> tuple[str, str | None]:
    """A bank's device-reported condition from a snapshot: the device's MAINTENANCE/DAMAGED (or a slot in
    ERROR holding it) is a fault with the slot's error code; anything else is healthy."""
    if listed in _DEVICE_FAULT_STATUSES or slot.status == SlotStatus.ERROR.value:
        code = slot.metadata.get("error_code")
        text = str(code) if code else (listed.value if listed is not None else SlotStatus.ERROR.value)
        return BankCondition.FAULT, text[:16]
    return BankCondition.HEALTHY, None


def _unknown_station(event: StationEvent) -> ValidationFailed:
    return ValidationFailed(
        f"Unknown station {event.device.identity}",
        details={"device.imei": ["no station with this identity"]},
    )


def _effective_status(station: Station, reported: str) -> str:
    """An operator's maintenance flag pins the station's status; devices report everything else."""
    return StationStatus.MAINTENANCE.value if station.is_maintenance else reported


def _serials_named(event: StationEvent) -> list[str]:
    """The bank serials an event names (the claim tells which of them have an open rental)."""
    if isinstance(event, FullEvent):
        named = {slot.power_bank_serial for slot in event.slots if slot.power_bank_serial}
        named.update(bank.serial_number for bank in event.power_banks)
        return sorted(named)
    if isinstance(event, ReturnedEvent):
        return [event.return_event.power_bank_serial]
    return []


# Column widths of the identifiers an event names (stations.imei, power_banks.serial_number).
MAX_IDENTIFIER_LENGTH = 64


def _check_identifier_lengths(event: StationEvent) -> None:
    """The contract leaves identifiers unbounded; the columns are not. Refuse clearly (400 with the field
    path) rather than fail inside the transaction (500)."""
    too_long: dict[str, list[str]] = {}
    message = f"at most {MAX_IDENTIFIER_LENGTH} characters"
    if len(event.device.identity) > MAX_IDENTIFIER_LENGTH:
        too_long["device.imei"] = [message]
    serials: list[tuple[str, str | None]] = []
    if isinstance(event, FullEvent):
        serials += [
            (f"slots.{i}.power_bank_serial", slot.power_bank_serial) for i, slot in enumerate(event.slots)
        ]
        serials += [
            (f"power_banks.{i}.serial_number", bank.serial_number) for i, bank in enumerate(event.power_banks)
        ]
    elif isinstance(event, ReturnedEvent):
        serials.append(("return_event.power_bank_serial", event.return_event.power_bank_serial))
    elif isinstance(event, SlotEvent | ReturnFailedEvent):
        serials.append(("power_bank_serial", event.power_bank_serial))
    for path, serial in serials:
        if serial is not None and len(serial) > MAX_IDENTIFIER_LENGTH:
            too_long[path] = [message]
    if too_long:
        raise ValidationFailed("Identifier too long", details=too_long)


MAX_ERROR_LENGTH = 4000
MAX_RAW_PAYLOAD_LENGTH = 2000


def _payload_dict(payload_json: str) -> dict[str, Any]:
    try:
        value = json.loads(payload_json)
    except (ValueError, RecursionError):
        return {"raw": payload_json[:MAX_RAW_PAYLOAD_LENGTH]}
    return value if isinstance(value, dict) else {"body": value}


def _merged_hardware_info(current: dict[str, Any], event: FullEvent) -> dict[str, Any]:
    device = event.device
    merged = dict(current)
    if device.hardware_info is not None:
        merged.update(device.hardware_info.to_wire())
    if device.signal_strength is not None:
        merged["signal_strength"] = device.signal_strength
    if device.wifi_ssid is not None:
        merged["wifi_ssid"] = device.wifi_ssid
    merged["pinboards"] = [board.to_wire() for board in event.station.pinboards]
    return merged
