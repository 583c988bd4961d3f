"""Power-bank administration: one bank's whole story, and the operator status an admin sets (audited)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.audit.models import StaffAuditEntry
from chargeghar_core.audit.service import record_staff_action
from chargeghar_core.auth.tokens import TokenClaims
from chargeghar_core.kit.errors import Conflict, NotFound
from chargeghar_core.powerbanks.models import (
    BankCondition,
    OperatorStatus,
    PowerBank,
    PowerBankConditionHistory,
    PowerBankModel,
    PowerBankStatus,
)
from chargeghar_core.powerbanks.repository import PowerBankRepository
from chargeghar_core.powerbanks.schemas import (
    BankLocation,
    BankRentalView,
    BatteryReading,
    ConditionChangeView,
    OperatorActionView,
    OperatorStatusChange,
    PowerBankDetail,
    PowerBankModelCreate,
    PowerBankStatusUpdate,
    PowerBankView,
)
from chargeghar_core.powerbanks.service import ModelCatalog
from chargeghar_core.rentals.models import OPEN_STATUSES, Rental
from chargeghar_core.stations.models import Station

HISTORY_LIMIT = 50
RENTALS_LIMIT = 20
ACTIONS_LIMIT = 20
AUDIT_TARGET = "power_bank"
AUDIT_ACTION = "power_bank.status"

_TARGET_STATUS: dict[OperatorStatusChange, str] = {
    OperatorStatusChange.AVAILABLE: PowerBankStatus.AVAILABLE.value,
    OperatorStatusChange.MAINTENANCE: PowerBankStatus.MAINTENANCE.value,
    OperatorStatusChange.RETIRED: OperatorStatus.RETIRED,
    OperatorStatusChange.LOST: OperatorStatus.LOST,
    OperatorStatusChange.FOUND: PowerBankStatus.AVAILABLE.value,
}


class BankOnRental(Conflict):
    code = "BANK_ON_RENTAL"
    default_message = "The bank is out on an open rental; end the rental first"


class BankNotLost(Conflict):
    code = "BANK_NOT_LOST"
    default_message = "Only a LOST bank can be found"


async def bank_detail(session: AsyncSession, bank_id: uuid.UUID) -> PowerBankDetail:
    """Six queries whatever the bank's history: bank + station, open rental, conditions, rentals, actions."""
    row = (
        await session.execute(
            select(PowerBank, Station.name, Station.serial_number)
            .outerjoin(Station, Station.id == PowerBank.current_station_id)
            .where(PowerBank.id == bank_id)
        )
    ).one_or_none()
    if row is None:
        raise NotFound("No such power bank")
    bank, station_name, station_serial = row
    key = str(bank_id)
    conditions = (
        await session.scalars(
            select(PowerBankConditionHistory)
            .where(PowerBankConditionHistory.power_bank_id == bank_id)
            .order_by(PowerBankConditionHistory.changed_at.desc(), PowerBankConditionHistory.id)
            .limit(HISTORY_LIMIT)
        )
    ).all()
    rentals = (
        await session.scalars(
            select(Rental)
            .where(Rental.power_bank_id == bank_id)
            .order_by(Rental.created_at.desc(), Rental.id)
            .limit(RENTALS_LIMIT)
        )
    ).all()
    actions = (
        await session.scalars(
            select(StaffAuditEntry)
            .where(StaffAuditEntry.target_type == AUDIT_TARGET, StaffAuditEntry.target_id == key)
            .order_by(StaffAuditEntry.created_at.desc(), StaffAuditEntry.id)
            .limit(ACTIONS_LIMIT)
        )
    ).all()
    open_rental = next((rental for rental in rentals if rental.status in OPEN_STATUSES), None)
    if open_rental is None and bank.status == PowerBankStatus.RENTED.value:
        open_rental = await _open_rental(session, bank_id)
    if bank.current_station_id is not None:
        location = BankLocation(
            where="in_slot",
            station_id=bank.current_station_id,
            station_name=station_name,
            station_serial=station_serial,
            slot_number=bank.current_slot_number,
        )
    elif open_rental is not None:
        location = BankLocation(
            where="on_rental",
            station_id=open_rental.station_id,
            slot_number=open_rental.slot_number,
            rental_id=open_rental.id,
            rental_code=open_rental.code,
        )
    else:
        location = BankLocation(where="unknown")
    return PowerBankDetail(
        **PowerBankView.model_validate(bank).model_dump(),
        condition=bank.condition,
        condition_code=bank.condition_code,
        condition_changed_at=bank.condition_changed_at,
        rentable=(
            bank.status == PowerBankStatus.AVAILABLE.value
            and bank.condition == BankCondition.HEALTHY
            and bank.current_station_id is not None
        ),
        location=location,
        condition_history=[ConditionChangeView.model_validate(item) for item in conditions],
        battery_history=_battery_history(bank, rentals),
        rentals=[_rental_view(rental) for rental in rentals],
        operator_actions=[
            OperatorActionView(
                at=action.created_at,
                actor_email=action.actor_email,
                action=action.action,
                details=action.details,
                outcome=action.outcome,
            )
            for action in actions
        ],
    )


async def set_operator_status(
    session: AsyncSession, bank_id: uuid.UUID, update: PowerBankStatusUpdate, actor: TokenClaims
) -> PowerBank:
    """Set the operator status; the audit row is written in the same transaction as the change."""
    bank = await session.scalar(select(PowerBank).where(PowerBank.id == bank_id).with_for_update())
    if bank is None:
        raise NotFound("No such power bank")
    rental = await _open_rental(session, bank_id)
    if rental is not None:
        raise BankOnRental(details={"rental_id": str(rental.id), "rental_status": rental.status})
    if update.status is OperatorStatusChange.FOUND and bank.status != OperatorStatus.LOST:
        raise BankNotLost(details={"status": bank.status})
    previous = bank.status
    target = _TARGET_STATUS[update.status]
    changed = previous != target
    if changed:
        bank.status = target
        bank.modified_at = datetime.now(UTC)
    await record_staff_action(
        session,
        actor=actor,
        action=AUDIT_ACTION,
        target_type=AUDIT_TARGET,
        target_id=str(bank.id),
        station_id=bank.current_station_id,
        details={
            "serial_number": bank.serial_number,
            "requested": update.status.value,
            "from": previous,
            "to": target,
            "reason": update.reason,
        },
        outcome="applied" if changed else "unchanged",
    )
    return bank


async def _open_rental(session: AsyncSession, bank_id: uuid.UUID) -> Rental | None:
    return await session.scalar(
        select(Rental).where(Rental.power_bank_id == bank_id, Rental.status.in_(OPEN_STATUSES)).limit(1)
    )


def _battery_history(bank: PowerBank, rentals: Sequence[Rental]) -> list[BatteryReading]:
    readings: list[BatteryReading] = []
    if bank.last_seen_at is not None:
        readings.append(
            BatteryReading(at=bank.last_seen_at, battery_level=bank.battery_level, source="last_report")
        )
    for rental in rentals:
        if rental.battery_at_return is not None and rental.ended_at is not None:
            readings.append(
                BatteryReading(
                    at=rental.ended_at, battery_level=rental.battery_at_return, source="rental_return"
                )
            )
        if rental.battery_at_start is not None and rental.started_at is not None:
            readings.append(
                BatteryReading(
                    at=rental.started_at, battery_level=rental.battery_at_start, source="rental_start"
                )
            )
    readings.sort(key=lambda reading: reading.at, reverse=True)
    return readings


def _rental_view(rental: Rental) -> BankRentalView:
    return BankRentalView(
        id=rental.id,
        code=rental.code,
        status=rental.status,
        user_id=rental.user_id,
        station_id=rental.station_id,
        slot_number=rental.slot_number,
        started_at=rental.started_at,
        due_at=rental.due_at,
        ended_at=rental.ended_at,
        return_station_id=rental.return_station_id,
        battery_at_start=rental.battery_at_start,
        battery_at_return=rental.battery_at_return,
        charged_paisa=rental.charged_paisa,
        created_at=rental.created_at,
    )


async def create_model(
    session: AsyncSession, catalog: ModelCatalog, body: PowerBankModelCreate, actor: TokenClaims
) -> PowerBankModel:
    """Map a serial prefix to a model and capacity (one prefix, one mapping), audited; the process's model
    cache is dropped so the next snapshot sees it (other replicas within the catalog's TTL)."""
    repository = PowerBankRepository(session)
    if await repository.prefix_mapped(body.serial_prefix):
        raise Conflict(f"Prefix {body.serial_prefix} is mapped already", code="PREFIX_TAKEN")
    row = PowerBankModel(
        id=uuid.uuid4(), serial_prefix=body.serial_prefix, model=body.model, capacity_mah=body.capacity_mah
    )
    await repository.add_model(row)
    catalog.invalidate()
    await record_staff_action(
        session,
        actor=actor,
        action="powerbank_model.create",
        target_type="powerbank_model",
        target_id=str(row.id),
        details=body.model_dump(mode="json"),
        outcome="applied",
    )
    return row
