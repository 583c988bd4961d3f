"""Applying station events (contract.md §2): idempotency, stale detection, snapshot reconciliation.

One :class:`StationEventProcessor` call applies one event inside the caller's transaction (the request's,
or a savepoint per event in a batch) and only flushes. A full snapshot costs a constant number of SQL
statements whatever the slot count: every slot and every bank is written by one multi-row upsert. On
PostgreSQL an applied snapshot is three statements (claim + station lock, banks, slots + station + result +
sync log; see ``iot.repository``), on SQLite the same steps one by one.
"""

from __future__ import annotations

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

from chargeghar_core.iot.hooks import IotHooks, ReturnContext
from chargeghar_core.iot.repository import (
    ProcessedEventRepository,
    SnapshotFinish,
    SnapshotWriter,
    SyncLogRow,
)
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

_OPERATOR_HELD_BANK_STATUSES = frozenset({PowerBankStatus.MAINTENANCE.value, PowerBankStatus.DAMAGED.value})
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

    def take_claim(self, event_key: str) -> bool:
        """True for the first event with this key: a repeat within the batch is a duplicate."""
        if event_key in self.claimed:
            self.claimed.discard(event_key)
            return True
        return False


class StationEventProcessor:
    def __init__(self, session: AsyncSession, hooks: IotHooks, catalog: ModelCatalog) -> None:
        self.session = session
        self.hooks = hooks
        self.catalog = catalog
        self.stations = StationRepository(session)
        self.banks = PowerBankRepository(session)
        self.processed = ProcessedEventRepository(session)

    async def claim_batch(self, events: Sequence[tuple[StationEvent, EventContext]]) -> BatchClaims | None:
        """Claim and lock for a whole batch up front (PostgreSQL; None elsewhere: claimed per event)."""
        if not events or dialect_name(self.session) != "postgresql":
            return None
        claimed, stations = await self.processed.claim_and_lock_many(
            [(context.event_key, event.type) for event, context in events],
            [event.device.identity for event, _ in events],
            events[0][1].received_at,
        )
        return BatchClaims(claimed, stations)

    async def process(
        self, event: StationEvent, context: EventContext, batch: BatchClaims | None = None
    ) -> EventOutcome:
        """Apply ``event`` once. A repeat of an applied event answers the first result as a duplicate.

        ``batch``: the claims and locks :meth:`claim_batch` made for the batch this event belongs to."""
        _check_identifier_lengths(event)
        if batch is None and context.replay_key is not None:
            # Claimed first and in the same transaction: released again if the event fails.
            if not await self.processed.claim(context.replay_key, event.type, context.received_at):
                logger.warning("station_event_signature_replayed", event_key=context.event_key)
                return await self._duplicate(event, context)
        if batch is None:
            # The station row stays locked until the transaction ends: two events of one station apply
            # one after the other, and the stale check below sees the newest observed_at.
            claimed, station = await self.processed.claim_and_lock(
                context.event_key, event.type, event.device.identity, context.received_at
            )
        else:
            # Locked already; the in-memory row is current: every write to it in this transaction goes
            # through the ORM or is mirrored into it (see _apply_full).
            claimed = batch.take_claim(context.event_key)
            station = batch.stations.get(event.device.identity)
        if not claimed:
            return await self._duplicate(event, context)
        with structlog.contextvars.bound_contextvars(
            correlation_id=event.correlation_id, event_key=context.event_key
        ):
            outcome = await self._apply(event, station, context)
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
        self, event: StationEvent, station: Station | None, context: EventContext
    ) -> EventOutcome:
        if isinstance(event, FullEvent):
            outcome = await self._apply_full(event, station, context)
        elif isinstance(event, ReturnedEvent):
            outcome = await self._apply_returned(event, station, context)
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
        self, event: FullEvent, station: Station | None, context: EventContext
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
        returns = await self.hooks.snapshot_returns.reconcile_snapshot(
            self.session,
            station_id=station.id,
            bank_serials=[bank.serial_number for bank in bank_rows],
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

    def _snapshot_rows(
        self, event: FullEvent, station_id: uuid.UUID
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

    # ------------------------------------------------------------------ returned

    async def _apply_returned(
        self, event: ReturnedEvent, station: Station | None, context: EventContext
    ) -> EventOutcome:
        now = context.received_at
        info = event.return_event
        if station is None:
            raise ValidationFailed(
                f"Unknown station {event.device.identity}",
                details={"device.imei": ["no station with this identity"]},
            )
        existing_slot = await self._known_slot(station, info.slot_number, "return_event.slot_number")
        bank = await self._bank_for_serial(info.power_bank_serial, now)
        returned_at = info.returned_at or event.observed_at or now
        # Device HTTP only (forgeable sign): a claim until MQTT, a `check` or a snapshot corroborates it.
        source = info.source or info.hardware_info.get("source")
        corroborated = source != "http"
        rental = await self.hooks.returns.complete_open_rental(
            self.session,
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
                corroborated=corroborated,
            ),
        )
        if rental is not None and rental.claimed_only:
            # The bank is still out on its rental as far as anything corroborated says: leave it and the
            # slot as they are.
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
        battery = info.battery_level if info.battery_level is not None else bank.battery_level
        metadata = dict(existing_slot.slot_metadata) if existing_slot is not None else {}
        metadata["last_return_at"] = returned_at.isoformat()
        await self.stations.place_in_slot(
            station.id,
            SlotObservation(info.slot_number, SlotStatus.OCCUPIED.value, battery, bank.id, metadata),
            now,
        )
        self._mark_bank_present(bank, station.id, info.slot_number, battery, now)
        if info.condition.upper() == PowerBankStatus.DAMAGED.value:
            # The device (or bridge) says the bank came back damaged: a condition, not an operator decision.
            await self.banks.record_condition(
                bank,
                BankCondition.FAULT,
                PowerBankStatus.DAMAGED.value,
                station_id=station.id,
                slot_number=info.slot_number,
                source="returned",
                at=returned_at,
            )
        if info.hardware_info:
            bank.hardware_info = {**bank.hardware_info, **info.hardware_info}
        station.last_heartbeat = max(
            filter(None, [station.last_heartbeat, event.device.last_heartbeat or now])
        )

        data: dict[str, Any] = {
            "station_id": str(station.id),
            "station_serial": station.serial_number,
            "power_bank_serial": bank.serial_number,
            "slot_number": info.slot_number,
            "battery_level": battery,
            "rehomed": rental is None,
            "rental_id": None,
            "rental_code": None,
            "rental_status": None,
            "returned_on_time": None,
            "amount_due": None,
        }
        if rental is not None:
            data.update(
                rental_id=rental.rental_id,
                rental_code=rental.rental_code,
                rental_status=rental.rental_status,
                returned_on_time=rental.returned_on_time,
                amount_due=rental.amount_due,
                **rental.extra,
            )
        message = "Rental returned" if rental is not None else "Power bank re-homed"
        return EventOutcome(SyncOutcome.SUCCESS, message, data, station.id)

    async def _known_slot(self, station: Station, slot_number: int, field: str) -> Any:
        """The station's slot ``slot_number`` (None when not written yet); 400 when the cabinet's layout has
        no such slot. Layout = 1..total_slots from the last snapshot; before any snapshot, the slots known."""
        existing_slot = await self.stations.get_slot(station.id, slot_number)
        in_layout = 1 <= slot_number <= station.total_slots
        if station.total_slots == 0:
            in_layout = existing_slot is not None
        if not in_layout:
            raise ValidationFailed(
                f"Station {station.serial_number} has no slot {slot_number}",
                details={field: [f"unknown slot (station has {station.total_slots})"]},
            )
        return existing_slot

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

    @staticmethod
    def _mark_bank_present(
        bank: PowerBank, station_id: uuid.UUID, slot_number: int, battery: int, now: datetime
    ) -> None:
        bank.current_station_id = station_id
        bank.current_slot_number = slot_number
        bank.battery_level = battery
        bank.last_seen_at = now
        if bank.status not in _OPERATOR_HELD_BANK_STATUSES:
            # Physically in a slot means not rented; the return hook has closed any open rental already.
            bank.status = PowerBankStatus.AVAILABLE.value

    # ------------------------------------------------------------------ status

    async def _apply_status(
        self, event: StatusEvent, station: Station | None, context: EventContext
    ) -> EventOutcome:
        now = context.received_at
        observed_at = event.observed_at or now
        station = station or await self._create_station(event, now)
        new_status = _effective_status(station, event.device.status.value)
        if station.status_changed_at is not None and observed_at < station.status_changed_at:
            data = {
                "station_id": str(station.id),
                "station_serial": station.serial_number,
                "status": station.status,
                "status_changed": False,
                "applied": False,
            }
            return EventOutcome(
                SyncOutcome.STALE, "Older than the last status change; not applied", data, station.id
            )
        channel_changed = False
        hardware = dict(station.hardware_info)
        if event.channels:
            known = dict(hardware.get("channels") or {})
            reported = {name: status.value for name, status in event.channels.items()}
            channel_changed = event.channel is not None and known.get(event.channel) != reported.get(
                event.channel
            )
            hardware["channels"] = {**known, **reported}
        changed = await self._change_status(
            station, new_status, "status", observed_at, channel=event.channel, channel_changed=channel_changed
        )
        if event.device.hardware_info is not None:
            hardware.update(event.device.hardware_info.to_wire())
        if hardware != station.hardware_info:
            station.hardware_info = hardware
        if event.device.last_heartbeat is not None:
            station.last_heartbeat = event.device.last_heartbeat
        elif new_status != StationStatus.OFFLINE.value:
            # An OFFLINE event reports silence: it is not a sign of life, so it does not move the heartbeat.
            station.last_heartbeat = observed_at
        data = {
            "station_id": str(station.id),
            "station_serial": station.serial_number,
            "status": station.status,
            "status_changed": changed,
            "applied": True,
        }
        return EventOutcome(SyncOutcome.SUCCESS, "Station status recorded", data, station.id)

    # ------------------------------------------------------------------ slot_event

    async def _apply_slot_event(
        self, event: SlotEvent, station: Station | None, context: EventContext
    ) -> EventOutcome:
        now = context.received_at
        observed_at = event.observed_at or now
        if station is None:
            raise ValidationFailed(
                f"Unknown station {event.device.identity}",
                details={"device.imei": ["no station with this identity"]},
            )
        data: dict[str, Any] = {
            "station_id": str(station.id),
            "station_serial": station.serial_number,
            "slot_number": event.slot_number,
            "slot_status": event.slot_status.value,
            "power_bank_serial": event.power_bank_serial,
            "applied": False,
        }
        if station.observed_at is not None and observed_at < station.observed_at:
            return EventOutcome(
                SyncOutcome.STALE, "Older than the last snapshot; not applied", data, station.id
            )

        existing_slot = await self._known_slot(station, event.slot_number, "slot_number")
        code = f"0x{event.state_code:02x}"
        if event.state_code != _RETURN_SUCCESS_STATE:
            await self.stations.count_fault(station.id, "slot_event", code, observed_at)
            logger.info("slot_event_failed", station_id=str(station.id), slot=event.slot_number, code=code)
        metadata = dict(existing_slot.slot_metadata) if existing_slot is not None else {}
        metadata.update(
            {
                "state_code": event.state_code,
                "state_name": event.state_name,
                "state_description": event.state_description,
                "control_index": event.control_index,
                "last_updated": observed_at.isoformat(),
            }
        )
        battery = event.battery_level or 0
        bank: PowerBank | None = None
        if event.power_bank_serial:
            bank = await self._bank_for_serial(event.power_bank_serial, now)
            battery = event.battery_level if event.battery_level is not None else bank.battery_level
        await self.stations.place_in_slot(
            station.id,
            SlotObservation(
                event.slot_number, event.slot_status.value, battery, bank.id if bank else None, metadata
            ),
            now,
        )
        if bank is not None:
            self._mark_bank_present(bank, station.id, event.slot_number, battery, now)
            fault = event.power_bank_status in _DEVICE_FAULT_STATUSES
            await self.banks.record_condition(
                bank,
                BankCondition.FAULT if fault else BankCondition.HEALTHY,
                code if fault else None,
                station_id=station.id,
                slot_number=event.slot_number,
                source="slot_event",
                at=observed_at,
            )
        data["applied"] = True
        return EventOutcome(SyncOutcome.SUCCESS, "Slot updated", data, station.id)

    # ------------------------------------------------------------------ return_failed

    async def _apply_return_failed(
        self, event: ReturnFailedEvent, station: Station | None, context: EventContext
    ) -> EventOutcome:
        """A 0x40 that is not a return: recorded (sync log), counted per state code, noted on the slot.
        Nothing changes hands: no rental is closed and no bank moves."""
        observed_at = event.observed_at or context.received_at
        if station is None:
            raise ValidationFailed(
                f"Unknown station {event.device.identity}",
                details={"device.imei": ["no station with this identity"]},
            )
        existing_slot = await self._known_slot(station, event.slot_number, "slot_number")
        code = f"0x{event.state_code:02x}"
        await self.stations.count_fault(station.id, "return_failed", code, observed_at)
        if existing_slot is not None:
            existing_slot.slot_metadata = {
                **existing_slot.slot_metadata,
                "last_return_failure": {
                    "state_code": code,
                    "state_name": event.state_name,
                    "power_bank_serial": event.power_bank_serial,
                    "at": observed_at.isoformat(),
                },
            }
        logger.warning(
            "return_failed",
            station_id=str(station.id),
            slot=event.slot_number,
            code=code,
            state=event.state_name,
            power_bank_serial=event.power_bank_serial,
        )
        data: dict[str, Any] = {
            "station_id": str(station.id),
            "station_serial": station.serial_number,
            "slot_number": event.slot_number,
            "state_code": code,
            "state_name": event.state_name,
            "power_bank_serial": event.power_bank_serial,
        }
        return EventOutcome(SyncOutcome.SUCCESS, "Failed return recorded", data, station.id)

    # ------------------------------------------------------------------ command_result

    async def _apply_command_result(
        self, event: CommandResultEvent, station: Station | None, context: EventContext
    ) -> EventOutcome:
        station_id = station.id if station is not None else None
        settled = await self.hooks.command_results.settle(self.session, event, station_id)
        data: dict[str, Any] = {
            "station_id": str(station_id) if station_id else None,
            "command_id": event.command_id,
            "cmd": event.cmd,
            "outcome": event.outcome,
            "acknowledged": True,
            "settled": settled,
        }
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


def _effective_status(station: Station, reported: str) -> str:
    """An operator's maintenance flag pins the station's status; devices report everything else."""
    return StationStatus.MAINTENANCE.value if station.is_maintenance else reported


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
