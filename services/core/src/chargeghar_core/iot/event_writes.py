"""Set-based writes of the small station events: ``status``, ``slot_event``, ``returned`` (without an open
rental), ``return_failed``, ``command_result`` and ``command_audit``.

Each event is described once, with SQLAlchemy Core on the table metadata, as three layers:

* ``locked``: the station row as it is before the event (locked), or none;
* ``calc``: one row computed from it with plain SQL expressions: every decision (stale, outside the slot
  layout, status changed, condition changed) and every value to write, including the result the event is
  answered with (a JSON object built in SQL);
* writes: INSERT / UPDATE / upserts reading only ``calc`` and the event's parameters, then the event's
  stored result and its sync-log row.

On PostgreSQL the three layers are ONE statement of data-modifying CTEs. Called with ``direct`` it also makes
the signature's replay claim, the event's claim and the station lock (the same rules as
``ProcessedEventRepository.claim_and_lock``), so an applied event costs one round trip besides
BEGIN/COMMIT. On SQLite (no data-modifying CTEs; writers are serialised anyway) the same definitions run one
by one: ``calc`` is selected first, then each write reads it as a row of bound parameters.

Nothing here loads or writes ORM objects; a caller holding the station as an ORM object (a batch) mirrors the
new values into it with :func:`mirror_station`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    Integer,
    String,
    Uuid,
    and_,
    bindparam,
    case,
    cast,
    exists,
    false,
    func,
    literal,
    not_,
    null,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql import ColumnElement, FromClause
from sqlalchemy.sql.expression import Executable
from sqlalchemy.sql.selectable import CTE

from chargeghar_core.iot.statements import (
    BANK_ROW,
    BANKS,
    CONDITION_ROW,
    CONDITIONS,
    FAULTS,
    HISTORY,
    LOGS,
    RENTALS,
    SLOT_ROW,
    SLOTS,
    STATIONS,
    STATUS_HISTORY_ROW,
    SYNC_LOG_ROW,
    build_object,
    json_from_text,
    json_merged,
    json_or_empty,
    json_text,
    one_of,
    replay_then_claim,
    seconds_between,
    store_result,
    with_keys,
)
from chargeghar_core.kit.db import JSONType, UTCDateTime, insert_for_dialect
from chargeghar_core.powerbanks.models import BankCondition
from chargeghar_core.rentals.models import OPEN_STATUSES, RentalStatus
from chargeghar_core.stations.models import Station

# Whether a single ``returned`` may find its bank's open rental inside its own statement (PostgreSQL). Tests
# that stand in for the rentals domain switch it off, so that every return goes to the rentals functions.
RETURNS_PROBE_RENTALS = True


def _text_of_uuid(column: ColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    """A UUID column as the canonical text ``str(uuid)`` gives (SQLite stores 32 hex digits)."""
    if dialect == "postgresql":
        return cast(column, String())
    hexed = func.lower(column)
    return (
        func.substr(hexed, 1, 8)
        .concat("-")
        .concat(func.substr(hexed, 9, 4))
        .concat("-")
        .concat(func.substr(hexed, 13, 4))
        .concat("-")
        .concat(func.substr(hexed, 17, 4))
        .concat("-")
        .concat(func.substr(hexed, 21, 12))
    )


# ------------------------------------------------------------------------------------------- parameters


def _p(name: str, type_: Any) -> Any:
    """An event parameter: ``p_<name>`` (never a column's name, which INSERT/UPDATE reserve)."""
    return bindparam(f"p_{name}", type_=type_)


_NOW = _p("now", UTCDateTime())
_OBSERVED = _p("observed_at", UTCDateTime())
_EVENT_KEY = _p("event_key", String())
_EVENT_TYPE = _p("event_type", String())
_IMEI = _p("imei", String())
_SUCCESS = "SUCCESS"
_STALE = "STALE"

# The station as an event sees it before it applies.
_STATION_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("id", Uuid()),
    ("id_text", String()),
    ("serial_number", String()),
    ("status", String()),
    ("status_changed_at", UTCDateTime()),
    ("is_maintenance", Boolean()),
    ("hardware_info", JSONType),
    ("observed_at", UTCDateTime()),
    ("total_slots", Integer()),
    ("last_heartbeat", UTCDateTime()),
)


def _bound_row(name: str, columns: Sequence[tuple[str, Any]]) -> FromClause:
    """A one-row FROM of bound parameters ``<name>__<column>``: a row Python already holds (a loaded
    station) or one an earlier statement returned (SQLite)."""
    return select(*[bindparam(f"{name}__{col}", type_=type_).label(col) for col, type_ in columns]).subquery(
        name
    )


def _station_row_params(station: Station) -> dict[str, Any]:
    return {
        "locked__id": station.id,
        "locked__id_text": str(station.id),
        "locked__serial_number": station.serial_number,
        "locked__status": station.status,
        "locked__status_changed_at": station.status_changed_at,
        "locked__is_maintenance": station.is_maintenance,
        "locked__hardware_info": station.hardware_info,
        "locked__observed_at": station.observed_at,
        "locked__total_slots": station.total_slots,
        "locked__last_heartbeat": station.last_heartbeat,
    }


def _claim_ctes() -> tuple[Any, Any]:
    """PostgreSQL: the replay claim and the event's claim, as ``ProcessedEventRepository.claim_and_lock``."""
    return replay_then_claim(
        event_key=_EVENT_KEY, event_type=_EVENT_TYPE, now=_NOW, replay_key=_p("replay_key", String())
    )


def _locked_station(claim: Any, *, lock: bool) -> FromClause:
    """PostgreSQL, direct: the station row (locked until the transaction ends), only once claimed."""
    query = select(
        STATIONS.c.id,
        _text_of_uuid(STATIONS.c.id, "postgresql").label("id_text"),
        *(STATIONS.c[name] for name, _ in _STATION_COLUMNS if name not in ("id", "id_text")),
    ).where(STATIONS.c.imei == _IMEI, exists(select(claim.c.event_key)))
    if lock:
        query = query.with_for_update(of=STATIONS)
    return query.cte("locked")


# ------------------------------------------------------------------------------------------- plans


@dataclass(frozen=True, slots=True)
class _Plan:
    """The statements of one event type (for one dialect and variant): PostgreSQL one, SQLite several (the
    first selects ``calc``; the others read it as bound parameters ``calc__<column>``)."""

    statements: tuple[Executable, ...]
    calc_columns: tuple[tuple[str, Any], ...]
    direct: bool


# calc(locked) -> the calc SELECT; writes(calc) -> the write statements (in the order SQLite runs them).
CalcBuilder = Callable[[FromClause], Any]
WritesBuilder = Callable[[FromClause], Sequence[Any]]


def _finish_writes(calc: FromClause) -> list[Any]:
    """The event's stored result (what a duplicate is answered) and its sync-log row, unless refused."""
    # Scalar subqueries of the one-row calc rather than UPDATE … FROM (no join condition to state).
    done = calc.c.refused == false()
    complete = store_result(
        _EVENT_KEY,
        exists(select(calc.c.outcome).where(done)),
        outcome=select(calc.c.outcome).scalar_subquery(),
        station_id=select(calc.c.station_id).scalar_subquery(),
        result=select(calc.c.result).scalar_subquery(),
    )
    log = LOGS.insert().from_select(
        SYNC_LOG_ROW,
        select(
            _p("log_id", Uuid()),
            calc.c.station_id,
            _p("station_key", String()),
            _EVENT_TYPE,
            _EVENT_KEY,
            calc.c.outcome,
            json_from_text(_p("payload", String())),
            null(),
            _p("duration_ms", Float()),
            _p("log_created_at", UTCDateTime()),
        ).where(calc.c.refused == false()),
    )
    return [complete, log]


def _plan(
    dialect: str,
    *,
    direct: bool,
    lock: bool,
    station_source: str,
    calc_builder: CalcBuilder,
    writes_builder: WritesBuilder,
) -> _Plan:
    """Assemble one event type's statements. ``station_source``: "locked" (a station row is required: from
    the lock, or bound from the loaded station) or "lookup" (command results: the station may be unknown)."""
    if dialect == "postgresql":
        replay = claim = None
        if direct:
            replay, claim = _claim_ctes()
            if station_source == "locked":
                locked = _locked_station(claim, lock=lock)
            else:
                locked = _lookup_station(claim, dialect)
        elif station_source == "locked":
            locked = _bound_row("locked", _STATION_COLUMNS)
        else:
            locked = _lookup_station(None, dialect)
        calc_select = calc_builder(locked)
        calc = calc_select.cte("calc")
        writes = [
            write if isinstance(write, CTE) else write.cte(f"w{index}")
            for index, write in enumerate(writes_builder(calc))
        ]
        writes += [write.cte(f"f{index}") for index, write in enumerate(_finish_writes(calc))]
        anchor = select(literal(1).label("one")).subquery("anchor")
        flags: list[Any] = []
        if claim is not None and replay is not None:
            replay_key = _p("replay_key", String())
            flags = [
                exists(select(claim.c.event_key)).label("claimed"),
                and_(replay_key.is_not(None), not_(exists(select(replay.c.event_key)))).label("replayed"),
            ]
        final = select(*flags, *calc.c).select_from(anchor.outerjoin(calc, true())).add_cte(*writes)
        columns = tuple((column.name, column.type) for column in calc_select.selected_columns)
        return _Plan((final,), columns, direct)
    if direct:
        raise ValueError("direct plans are PostgreSQL only")
    locked = (
        _bound_row("locked", _STATION_COLUMNS)
        if station_source == "locked"
        else _lookup_station(None, dialect)
    )
    calc_select = calc_builder(locked)
    columns = tuple((column.name, column.type) for column in calc_select.selected_columns)
    calc = _bound_row("calc", columns)
    return _Plan((calc_select, *writes_builder(calc), *_finish_writes(calc)), columns, False)


def _lookup_station(claim: Any, dialect: str) -> FromClause:
    """The station named by the event, if any (command results: nothing of it is written, so no lock)."""
    anchor = select(literal(1).label("one")).subquery("one_row")
    found = (
        select(STATIONS.c.id, _text_of_uuid(STATIONS.c.id, dialect).label("id_text"))
        .where(STATIONS.c.imei == _IMEI)
        .subquery("found")
    )
    query = select(found.c.id, found.c.id_text).select_from(anchor.outerjoin(found, true()))
    if claim is not None:
        query = query.where(exists(select(claim.c.event_key)))
        return query.cte("locked")
    return query.subquery("locked")


@dataclass(frozen=True, slots=True)
class Applied:
    """What the statement(s) of an event returned: the ``calc`` row, and in direct mode the claim."""

    claimed: bool
    replayed: bool
    calc: Mapping[str, Any] | None  # None: no station row (unknown station) or not claimed


async def _run(session: AsyncSession, plan: _Plan, values: dict[str, Any]) -> Applied:
    params = {key if "__" in key else f"p_{key}": value for key, value in values.items()}
    if len(plan.statements) == 1:
        row = (await session.execute(plan.statements[0], params)).mappings().one()
        claimed = bool(row["claimed"]) if plan.direct else True
        replayed = bool(row["replayed"]) if plan.direct else False
        calc = dict(row) if row["station_id"] is not None or row["outcome"] is not None else None
        return Applied(claimed, replayed, calc)
    first, *writes = plan.statements
    found = (await session.execute(first, params)).mappings().first()
    if found is None:
        return Applied(True, False, None)
    calc_row = dict(found)
    bound = {**params, **{f"calc__{name}": calc_row[name] for name, _ in plan.calc_columns}}
    for statement in writes:
        await session.execute(statement, bound)
    return Applied(True, False, calc_row)


@dataclass(frozen=True, slots=True)
class EventKeys:
    """The event's identity and its sync-log row (written with the event's statement)."""

    event_key: str
    event_type: str
    imei: str
    now: datetime
    replay_key: str | None
    station_key: str | None
    payload_json: str
    duration_ms: float

    def params(self) -> dict[str, Any]:
        return {
            "event_key": self.event_key,
            "event_type": self.event_type,
            "imei": self.imei,
            "now": self.now,
            "replay_key": self.replay_key,
            "log_id": uuid.uuid4(),
            "station_key": self.station_key,
            "payload": self.payload_json,
            "duration_ms": self.duration_ms,
            "log_created_at": self.now,
        }


def _station_params(station: Station | None) -> dict[str, Any]:
    return _station_row_params(station) if station is not None else {}


# ------------------------------------------------------------------------------------------- status


@dataclass(frozen=True, slots=True)
class StatusInput:
    reported: str  # the device's status
    observed_at: datetime
    channel: str | None  # the presence channel the event names
    channels: dict[str, str] | None  # every channel's state, when the event lists them
    hardware_info: dict[str, Any] | None
    last_heartbeat: datetime | None


def _status_calc(locked: FromClause, *, with_channels: bool) -> Any:
    new_status = case(
        (locked.c.is_maintenance == true(), literal("MAINTENANCE", String())), else_=_p("reported", String())
    )
    stale = and_(locked.c.status_changed_at.is_not(None), _OBSERVED < locked.c.status_changed_at)
    hardware: Any = locked.c.hardware_info
    channel_changed: Any = false()
    if with_channels:
        reported_channels = _p("channels", JSONType)
        probe = _p("channel", String())
        channel_changed = and_(
            probe.is_not(None),
            json_text(hardware, literal("channels", String()), probe).is_distinct_from(
                _p("channel_value", String())
            ),
        )
        hardware = json_merged(
            hardware,
            build_object(channels=json_merged(json_or_empty(hardware["channels"]), reported_channels)),
        )
    hardware = json_merged(hardware, _p("device_hardware", JSONType))
    status_moves = locked.c.status != new_status
    changed = or_(status_moves, channel_changed)
    heartbeat = func.coalesce(
        _p("device_heartbeat", UTCDateTime()),
        case((new_status != "OFFLINE", _OBSERVED), else_=locked.c.last_heartbeat),
    )
    station_fields = {"station_id": locked.c.id_text, "station_serial": locked.c.serial_number}
    result = case(
        (
            stale,
            build_object(**station_fields, status=locked.c.status, status_changed=false(), applied=false()),
        ),
        else_=build_object(**station_fields, status=new_status, status_changed=changed, applied=true()),
    )
    return select(
        locked.c.id.label("station_id"),
        stale.label("stale"),
        false().label("refused"),
        changed.label("changed"),
        locked.c.status.label("previous_status"),
        new_status.label("new_status"),
        case((status_moves, _OBSERVED), else_=locked.c.status_changed_at).label("status_changed_at"),
        case(
            (locked.c.status_changed_at.is_not(None), seconds_between(_OBSERVED, locked.c.status_changed_at)),
            else_=null(),
        ).label("previous_duration_s"),
        hardware.label("hardware_info"),
        heartbeat.label("last_heartbeat"),
        case((stale, literal(_STALE)), else_=literal(_SUCCESS)).label("outcome"),
        result.label("result"),
    ).select_from(locked)


def _status_writes(calc: FromClause) -> list[Any]:
    applies = calc.c.stale == false()
    history = HISTORY.insert().from_select(
        STATUS_HISTORY_ROW,
        select(
            _p("history_id", Uuid()),
            calc.c.station_id,
            calc.c.previous_status,
            calc.c.new_status,
            literal("status", String()),
            _OBSERVED,
            calc.c.previous_duration_s,
            _p("channel", String()),
        ).where(applies, calc.c.changed == true()),
    )
    station = (
        update(STATIONS)
        .where(STATIONS.c.id == calc.c.station_id, applies)
        .values(
            status=calc.c.new_status,
            status_changed_at=calc.c.status_changed_at,
            hardware_info=calc.c.hardware_info,
            last_heartbeat=calc.c.last_heartbeat,
            modified_at=_NOW,
        )
    )
    return [history, station]


@lru_cache(maxsize=16)
def _status_plan(dialect: str, direct: bool, with_channels: bool) -> _Plan:
    return _plan(
        dialect,
        direct=direct,
        lock=True,
        station_source="locked",
        calc_builder=lambda locked: _status_calc(locked, with_channels=with_channels),
        writes_builder=_status_writes,
    )


async def apply_status(
    session: AsyncSession,
    dialect: str,
    keys: EventKeys,
    status: StatusInput,
    station: Station | None,
) -> Applied:
    """``station``: the locked station (loaded); None to claim and lock in the same statement (direct)."""
    with_channels = bool(status.channels)
    plan = _status_plan(dialect, station is None, with_channels)
    params = {
        **keys.params(),
        **_station_params(station),
        "reported": status.reported,
        "observed_at": status.observed_at,
        "channel": status.channel,
        "channels": status.channels or {},
        "channel_value": (status.channels or {}).get(status.channel or ""),
        "device_hardware": status.hardware_info or {},
        "device_heartbeat": status.last_heartbeat,
        "history_id": uuid.uuid4(),
    }
    return await _run(session, plan, params)


# ------------------------------------------------------------------------------------------- command results


def _command_calc(locked: FromClause, *, probe: str) -> Any:
    """``probe``: how a pending rental the reply may settle is found ("command", "serial" or "none")."""
    pending: Any = false()
    open_popup = RENTALS.c.status == RentalStatus.PENDING_POPUP.value
    if probe == "command":
        command_id = _p("command_id", String())
        pending = exists(
            select(RENTALS.c.id).where(
                open_popup,
                or_(RENTALS.c.popup_command_id == command_id, RENTALS.c.check_command_id == command_id),
            )
        )
    elif probe == "serial":
        pending = exists(
            select(RENTALS.c.id).where(
                open_popup,
                RENTALS.c.station_id == locked.c.id,
                RENTALS.c.power_bank_serial == _p("reply_serial", String()),
            )
        )
    result = with_keys(_p("result_fields", JSONType), station_id=locked.c.id_text)
    return select(
        locked.c.id.label("station_id"),
        false().label("stale"),
        # A pending rental to settle: the rentals domain decides, the result is written after it.
        pending.label("refused"),
        literal(_SUCCESS).label("outcome"),
        result.label("result"),
    ).select_from(locked)


@lru_cache(maxsize=16)
def _command_plan(dialect: str, direct: bool, probe: str) -> _Plan:
    return _plan(
        dialect,
        direct=direct,
        lock=False,
        station_source="lookup",
        calc_builder=lambda locked: _command_calc(locked, probe=probe),
        writes_builder=lambda calc: [],
    )


async def apply_command_record(
    session: AsyncSession,
    dialect: str,
    keys: EventKeys,
    *,
    result_fields: dict[str, Any],
    command_id: str | None,
    reply_serial: str | None,
    settles: bool,
    direct: bool,
) -> Applied:
    """A ``command_result`` / ``command_audit``: recorded (result + sync log) in the event's statement unless
    a pending rental may be settled by it (``calc["refused"]``: the caller asks the rentals domain, then
    writes the result itself). ``settles``: the event type can settle rentals at all."""
    probe = "none"
    if settles:
        probe = "command" if command_id else ("serial" if reply_serial else "none")
    plan = _command_plan(dialect, direct, probe)
    params = {
        **keys.params(),
        "result_fields": result_fields,
        "command_id": command_id,
        "reply_serial": reply_serial,
    }
    return await _run(session, plan, params)


# ------------------------------------------------------------------------------------------- slots and banks


@dataclass(frozen=True, slots=True)
class SlotInput:
    """A bank (or nothing) reported in one slot: a ``slot_event``, a ``returned`` or a ``return_failed``."""

    kind: str  # "slot_event", "returned", "return_failed"
    slot_number: int
    observed_at: datetime
    slot_status: str | None  # None: keep (return_failed)
    battery_level: int | None  # None: the bank's stored level (0 for a new bank or no bank)
    bank_serial: str | None
    new_bank_model: str
    new_bank_capacity: int
    bank_condition: str | None  # None: leave the bank's condition as it is
    bank_condition_code: str | None
    bank_hardware_info: dict[str, Any] | None  # merged into the bank's info (returned)
    metadata_patch: dict[str, Any]  # keys set on the slot's metadata
    fault_code: str | None  # counted in device_fault_counters under ``kind``
    stale_by_snapshot: bool  # slot events: older than the last snapshot is stale
    moves_bank: bool  # False: nothing changes hands (return_failed)
    heartbeat: datetime | None  # returned: the station's heartbeat moves forward to this
    result_fields: dict[str, Any]  # the result's constant part


_HELD_BY_OPERATOR = ("MAINTENANCE", "DAMAGED", "RETIRED")


def _slot_calc(locked: FromClause, *, with_bank: bool, battery_in_result: bool, probe_rental: bool) -> Any:
    slot_number = _p("slot_number", Integer())
    existing = (
        select(SLOTS.c.id, SLOTS.c.slot_metadata)
        .where(SLOTS.c.station_id == locked.c.id, SLOTS.c.slot_number == slot_number)
        .subquery("existing_slot")
    )
    stale = and_(
        _p("stale_by_snapshot", Boolean()) == true(),
        locked.c.observed_at.is_not(None),
        _OBSERVED < locked.c.observed_at,
    )
    in_layout = case(
        (locked.c.total_slots == 0, existing.c.id.is_not(None)),
        else_=and_(slot_number >= 1, slot_number <= locked.c.total_slots),
    )
    refused: Any = and_(not_(stale), not_(in_layout))
    metadata = json_merged(json_or_empty(existing.c.slot_metadata), _p("metadata_patch", JSONType))
    columns: list[Any] = [
        locked.c.id.label("station_id"),
        stale.label("stale"),
        refused.label("refused"),
        metadata.label("slot_metadata"),
    ]
    battery: Any = func.coalesce(_p("battery", Integer()), literal(0))
    sources: Any = locked.outerjoin(existing, true())
    condition_changed: Any = false()
    if with_bank:
        prior = (
            select(BANKS.c.id, BANKS.c.battery_level, BANKS.c.condition, BANKS.c.condition_code)
            .where(BANKS.c.serial_number == _p("serial", String()))
            .subquery("prior")
        )
        sources = sources.outerjoin(prior, true())
        battery = func.coalesce(_p("battery", Integer()), prior.c.battery_level, literal(0))
        previous_condition = func.coalesce(prior.c.condition, literal(BankCondition.HEALTHY))
        new_condition = _p("condition", String())
        condition_changed = and_(
            new_condition.is_not(None),
            or_(
                previous_condition != new_condition,
                prior.c.condition_code.is_distinct_from(_p("condition_code", String())),
            ),
        )
        if probe_rental:
            # A return of a bank with an open rental is the rentals domain's: nothing is written here.
            rental_open = exists(
                select(RENTALS.c.id).where(
                    RENTALS.c.power_bank_id == prior.c.id, one_of(RENTALS.c.status, OPEN_STATUSES)
                )
            )
            columns[2] = or_(refused, rental_open).label("refused")
            columns.append(rental_open.label("rental_open"))
        columns += [
            func.coalesce(prior.c.id, _p("new_bank_id", Uuid())).label("bank_id"),
            previous_condition.label("previous_condition"),
            prior.c.condition_code.label("previous_code"),
        ]
    else:
        columns += [
            cast(null(), Uuid()).label("bank_id"),
            cast(null(), String()).label("previous_condition"),
            cast(null(), String()).label("previous_code"),
        ]
    station_fields = {"station_id": locked.c.id_text, "station_serial": locked.c.serial_number}
    applied_fields = {**station_fields, "battery_level": battery} if battery_in_result else station_fields
    result = case(
        (stale, with_keys(_p("stale_fields", JSONType), **station_fields)),
        else_=with_keys(_p("result_fields", JSONType), **applied_fields),
    )
    columns += [
        battery.label("battery"),
        condition_changed.label("condition_changed"),
        case((stale, literal(_STALE)), else_=literal(_SUCCESS)).label("outcome"),
        result.label("result"),
        locked.c.serial_number.label("station_serial"),
        locked.c.total_slots.label("total_slots"),
    ]
    return select(*columns).select_from(sources)


def _slot_writes(
    calc: FromClause, dialect: str, *, with_bank: bool, moves_bank: bool, counts: bool
) -> list[Any]:
    applies = and_(calc.c.stale == false(), calc.c.refused == false())
    slot_number = _p("slot_number", Integer())
    writes: list[Any] = []
    if counts:
        counter = insert_for_dialect(dialect, FAULTS)
        writes.append(
            counter.from_select(
                ["id", "station_id", "source", "code", "count", "last_seen_at"],
                select(
                    _p("counter_id", Uuid()),
                    calc.c.station_id,
                    _EVENT_TYPE,
                    _p("fault_code", String()),
                    literal(1),
                    _OBSERVED,
                ).where(applies),
            ).on_conflict_do_update(
                index_elements=[FAULTS.c.station_id, FAULTS.c.source, FAULTS.c.code],
                set_={"count": FAULTS.c.count + 1, "last_seen_at": counter.excluded.last_seen_at},
            )
        )
    if not moves_bank:
        # Only a note on an existing slot (a failed return changes no hands).
        writes.append(
            update(SLOTS)
            .where(SLOTS.c.station_id == calc.c.station_id, SLOTS.c.slot_number == slot_number, applies)
            .values(slot_metadata=calc.c.slot_metadata, modified_at=_NOW)
        )
        return writes
    serial = _p("serial", String())
    barrier: Any = true()
    if with_bank:
        # The bank elsewhere leaves that slot (which is no longer occupied) ...
        release = (
            update(SLOTS)
            .where(
                SLOTS.c.power_bank_id == calc.c.bank_id,
                or_(SLOTS.c.station_id != calc.c.station_id, SLOTS.c.slot_number != slot_number),
                applies,
            )
            .values(
                power_bank_id=None,
                status=case((SLOTS.c.status == "OCCUPIED", literal("AVAILABLE")), else_=SLOTS.c.status),
                modified_at=_NOW,
            )
        )
        if dialect == "postgresql":
            # One slot per bank (unique): the slot upsert below must run after this release. Reading the
            # release's rows orders the two inside the one statement.
            release_cte = release.returning(SLOTS.c.id).cte("released")
            barrier = select(func.count()).select_from(release_cte).scalar_subquery() >= 0
            writes.append(release_cte)
        else:
            writes.append(release)
    # ... a bank recorded in this slot is not there any more ...
    displaced = and_(
        BANKS.c.current_station_id == calc.c.station_id, BANKS.c.current_slot_number == slot_number, applies
    )
    if with_bank:
        displaced = and_(displaced, BANKS.c.serial_number != serial)
    writes.append(
        update(BANKS)
        .where(displaced)
        .values(current_station_id=None, current_slot_number=None, modified_at=_NOW)
    )
    if with_bank:
        # ... and the bank is here: created when unknown, placed, its level and condition as reported. An
        # operator's hold (maintenance, damaged, retired) survives; a LOST bank is found.
        bank_insert = insert_for_dialect(dialect, BANKS)
        condition = _p("condition", String())
        code = _p("condition_code", String())
        new_info = _p("bank_info", JSONType)
        bank_upsert = bank_insert.from_select(
            BANK_ROW,
            select(
                calc.c.bank_id,
                serial,
                _p("model", String()),
                _p("capacity", Integer()),
                literal("AVAILABLE"),
                calc.c.battery,
                new_info,
                calc.c.station_id,
                slot_number,
                literal(0),
                literal(0),
                _NOW,
                _NOW,
                func.coalesce(condition, literal(BankCondition.HEALTHY)),
                code,
                case((calc.c.condition_changed == true(), _p("condition_at", UTCDateTime())), else_=null()),
            ).where(applies),
        )
        writes.append(
            bank_upsert.on_conflict_do_update(
                index_elements=[BANKS.c.serial_number],
                set_={
                    "status": case(
                        (one_of(BANKS.c.status, _HELD_BY_OPERATOR), BANKS.c.status),
                        else_=literal("AVAILABLE"),
                    ),
                    "battery_level": bank_insert.excluded.battery_level,
                    "hardware_info": json_merged(BANKS.c.hardware_info, bank_insert.excluded.hardware_info),
                    "current_station_id": bank_insert.excluded.current_station_id,
                    "current_slot_number": bank_insert.excluded.current_slot_number,
                    "last_seen_at": bank_insert.excluded.last_seen_at,
                    "modified_at": bank_insert.excluded.last_seen_at,
                    "condition": case(
                        (condition.is_(None), BANKS.c.condition), else_=bank_insert.excluded.condition
                    ),
                    "condition_code": case(
                        (condition.is_(None), BANKS.c.condition_code),
                        else_=bank_insert.excluded.condition_code,
                    ),
                    "condition_changed_at": func.coalesce(
                        bank_insert.excluded.condition_changed_at, BANKS.c.condition_changed_at
                    ),
                },
            )
        )
    slot_insert = insert_for_dialect(dialect, SLOTS)
    slot_upsert = slot_insert.from_select(
        SLOT_ROW,
        select(
            _p("slot_id", Uuid()),
            calc.c.station_id,
            slot_number,
            _p("slot_status", String()),
            calc.c.battery,
            calc.c.bank_id,
            calc.c.slot_metadata,
            _NOW,
        ).where(applies, barrier),
    )
    writes.append(
        slot_upsert.on_conflict_do_update(
            index_elements=[SLOTS.c.station_id, SLOTS.c.slot_number],
            set_={
                "status": slot_insert.excluded.status,
                "battery_level": slot_insert.excluded.battery_level,
                "power_bank_id": slot_insert.excluded.power_bank_id,
                "slot_metadata": slot_insert.excluded.slot_metadata,
                "modified_at": slot_insert.excluded.created_at,
            },
        )
    )
    if with_bank:
        writes.append(
            CONDITIONS.insert().from_select(
                CONDITION_ROW,
                select(
                    _p("condition_history_id", Uuid()),
                    calc.c.bank_id,
                    calc.c.previous_condition,
                    calc.c.previous_code,
                    _p("condition", String()),
                    _p("condition_code", String()),
                    calc.c.station_id,
                    slot_number,
                    _EVENT_TYPE,
                    _p("condition_at", UTCDateTime()),
                ).where(applies, calc.c.condition_changed == true()),
            )
        )
    heartbeat = _p("heartbeat", UTCDateTime())
    writes.append(
        update(STATIONS)
        .where(STATIONS.c.id == calc.c.station_id, applies, heartbeat.is_not(None))
        .values(
            last_heartbeat=case(
                (STATIONS.c.last_heartbeat.is_(None), heartbeat),
                (STATIONS.c.last_heartbeat < heartbeat, heartbeat),
                else_=STATIONS.c.last_heartbeat,
            ),
            modified_at=_NOW,
        )
    )
    return writes


@lru_cache(maxsize=64)
def _slot_plan(
    dialect: str,
    direct: bool,
    with_bank: bool,
    moves_bank: bool,
    counts: bool,
    battery_in_result: bool,
    probe_rental: bool,
) -> _Plan:
    return _plan(
        dialect,
        direct=direct,
        lock=True,
        station_source="locked",
        calc_builder=lambda locked: _slot_calc(
            locked, with_bank=with_bank, battery_in_result=battery_in_result, probe_rental=probe_rental
        ),
        writes_builder=lambda calc: _slot_writes(
            calc, dialect, with_bank=with_bank, moves_bank=moves_bank, counts=counts
        ),
    )


async def apply_slot(
    session: AsyncSession,
    dialect: str,
    keys: EventKeys,
    slot: SlotInput,
    station: Station | None,
    *,
    stale_fields: dict[str, Any],
    condition_at: datetime,
    probe_rental: bool = False,
) -> Applied:
    """``station``: the locked station (loaded); None to claim and lock in the same statement (direct)."""
    with_bank = slot.moves_bank and slot.bank_serial is not None
    plan = _slot_plan(
        dialect,
        station is None,
        with_bank,
        slot.moves_bank,
        slot.fault_code is not None,
        slot.kind == "returned",
        probe_rental and with_bank,
    )
    params = {
        **keys.params(),
        **_station_params(station),
        "slot_number": slot.slot_number,
        "observed_at": slot.observed_at,
        "stale_by_snapshot": slot.stale_by_snapshot,
        "metadata_patch": slot.metadata_patch,
        "battery": slot.battery_level,
        "serial": slot.bank_serial,
        "new_bank_id": uuid.uuid4(),
        "model": slot.new_bank_model,
        "capacity": slot.new_bank_capacity,
        "bank_info": slot.bank_hardware_info or {},
        "condition": slot.bank_condition,
        "condition_code": slot.bank_condition_code,
        "condition_history_id": uuid.uuid4(),
        "condition_at": condition_at,
        "slot_id": uuid.uuid4(),
        "slot_status": slot.slot_status,
        "counter_id": uuid.uuid4(),
        "fault_code": slot.fault_code,
        "heartbeat": slot.heartbeat,
        "result_fields": slot.result_fields,
        "stale_fields": stale_fields,
    }
    return await _run(session, plan, params)


# ------------------------------------------------------------------------------------------- loaded rows


def mirror_station(station: Station, values: Mapping[str, Any]) -> None:
    """Keep a loaded (batch) station equal to what the statement wrote, without making it dirty: the next
    event of this station in the batch reads it."""
    for name, value in values.items():
        set_committed_value(station, name, value)
