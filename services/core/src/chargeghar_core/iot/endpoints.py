"""POST /api/internal/stations/data and /data/batch (contract.md §2).

Order of checks: bearer token (401/403, a dependency) → caller IP → rate limit → signature over the raw
bytes → JSON → type → schema → duplicate → processing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from chargeghar_protocol.contract import (
    STATION_EVENT_ADAPTER,
    BatchItemResult,
    ErrorCode,
    FullEvent,
    StationEvent,
    error_code_for_validation_error,
    parse_station_event,
    validation_error_details,
)
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.auth.dependencies import InternalCaller
from chargeghar_core.iot.recorder import FailureRecorder
from chargeghar_core.iot.schemas import (
    BATCH_BODY_DOC,
    ERROR_RESPONSES,
    SINGLE_EVENT_BODY_DOC,
    BatchEnvelope,
    StationDataEnvelope,
)
from chargeghar_core.iot.security import InternalGate
from chargeghar_core.iot.service import (
    FAILURE_CODES,
    EventContext,
    EventOutcome,
    EventProcessingFailed,
    StationEventProcessor,
    failure_log_entry,
)
from chargeghar_core.iot.snapshots import SnapshotRepository
from chargeghar_core.kit.db import DbSession, utcnow
from chargeghar_core.kit.errors import (
    CoreError,
    InvalidInput,
    ServiceUnavailable,
    ValidationFailed,
    dependency_failure,
)
from chargeghar_core.kit.guard import (
    TOO_DEEP_MESSAGE,
    UNSTORABLE_MESSAGE,
    JsonTooDeep,
    find_unstorable_text,
    loads_bounded,
)
from chargeghar_core.kit.metrics import METRICS
from chargeghar_core.stations.models import SyncLog
from chargeghar_core.stations.repository import SyncLogRepository

logger = structlog.get_logger(__name__)

router = APIRouter(prefix="/api/internal/stations", tags=["internal"])

EVENT_ID_HEADER = "X-Event-Id"
MAX_EVENT_KEY_LENGTH = 200
MAX_BATCH_EVENTS = 500


def _gate(request: Request) -> InternalGate:
    gate: InternalGate = request.app.state.internal_gate
    return gate


def _recorder(request: Request) -> FailureRecorder:
    recorder: FailureRecorder = request.app.state.failure_recorder
    return recorder


def _processor(request: Request, session: AsyncSession) -> StationEventProcessor:
    return StationEventProcessor(session, request.app.state.rentals, request.app.state.model_catalog)


class _ParseFailure(CoreError):
    status_code = 400


def _decode_json(body: bytes) -> Any:
    """Only for the batch envelope; a single event is parsed straight from the bytes by pydantic."""
    try:
        return json.loads(body)
    except RecursionError as exc:
        raise _ParseFailure(
            "Body is not valid JSON", code=ErrorCode.INVALID_JSON.value, details={"body": [TOO_DEEP_MESSAGE]}
        ) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise _ParseFailure("Body is not valid JSON", code=ErrorCode.INVALID_JSON.value) from exc


@dataclass(frozen=True, slots=True)
class EventLimits:
    """Checks of an event's values against the clock (settings: internal.max_future_skew_s)."""

    now: datetime
    max_future_skew_s: int

    @classmethod
    def of(cls, request: Request, now: datetime) -> EventLimits:
        return cls(now, request.app.state.settings.internal.max_future_skew_s)


def _parse_event(raw: Any, limits: EventLimits) -> StationEvent:
    """``raw``: the request bytes (parsed by pydantic's JSON parser directly) or a batch item."""
    _refuse_unstorable_text(raw)
    try:
        if isinstance(raw, bytes):
            event = parse_station_event(raw)
        else:
            event = STATION_EVENT_ADAPTER.validate_python(raw)
    except ValidationError as exc:
        code = error_code_for_validation_error(exc)
        message = (
            "Unknown or missing event type" if code is ErrorCode.INVALID_TYPE else "Invalid station event"
        )
        raise _ParseFailure(message, code=code.value, details=validation_error_details(exc)) from exc
    _refuse_out_of_range(event, limits)
    return event


def _refuse_unstorable_text(raw: Any) -> None:
    """NUL (and, in a batch item decoded by ``json``, a lone surrogate) can never be stored: refuse the event
    with the field paths instead of failing inside its transaction. In raw bytes NUL can only appear as the
    escape ``\\u0000`` (a raw control byte is invalid JSON), so the common case costs one ``find``."""
    if isinstance(raw, bytes):
        if b"\\u0000" not in raw:
            return
        try:
            raw = loads_bounded(raw)
        except (ValueError, UnicodeDecodeError):
            return  # not JSON: pydantic's parse answers it with its own error
    try:
        paths = find_unstorable_text(raw)
    except JsonTooDeep as exc:
        raise _ParseFailure(
            "Invalid station event", code=ErrorCode.INVALID_JSON.value, details={"__root__": [str(exc)]}
        ) from exc
    if paths:
        raise _ParseFailure(
            "Station event contains characters that cannot be stored",
            code=ErrorCode.VALIDATION_ERROR.value,
            details={key: [UNSTORABLE_MESSAGE] for key in paths},
        )


# The widest cabinet the protocol can describe: slot numbers are one byte (protocol.md §4.2).
MAX_TOTAL_SLOTS = 255


def _refuse_out_of_range(event: StationEvent, limits: EventLimits) -> None:
    """Values the contract leaves open but core must bound: a snapshot stamped in the future would make
    every real snapshot of that station look stale; a slot count beyond the protocol overflows columns."""
    details: dict[str, list[str]] = {}
    latest = limits.now + timedelta(seconds=limits.max_future_skew_s)
    if event.observed_at is not None and event.observed_at > latest:
        details["observed_at"] = [f"more than {limits.max_future_skew_s} s in the future"]
    if isinstance(event, FullEvent) and event.station.total_slots > MAX_TOTAL_SLOTS:
        details["station.total_slots"] = [f"at most {MAX_TOTAL_SLOTS}"]
    if details:
        raise _ParseFailure(
            "Station event out of range", code=ErrorCode.VALIDATION_ERROR.value, details=details
        )


def _event_key(explicit: str | None, fallback: str) -> str:
    return (explicit or fallback)[:MAX_EVENT_KEY_LENGTH]


def failure_answer(exc: Exception, event_type: str) -> CoreError:
    if isinstance(exc, CoreError) and exc.status_code < 500:
        return exc
    dependency = dependency_failure(exc)
    if isinstance(dependency, InvalidInput):
        # The database refused one of the event's values: resending it can never succeed, so it is the
        # sender's bad input (400), which does not hold back the station's later events in a batch.
        return ValidationFailed("Station event holds a value that cannot be stored")
    if isinstance(dependency, ServiceUnavailable):
        return dependency
    code = FAILURE_CODES.get(event_type, ErrorCode.SYNC_ERROR.value)
    return EventProcessingFailed(f"{event_type} event could not be processed", code=code)


@router.post(
    "/data",
    response_model=StationDataEnvelope,
    summary="Apply one station event (full / returned / status / command_result / slot_event)",
    responses=ERROR_RESPONSES,
    openapi_extra=SINGLE_EVENT_BODY_DOC,
)
async def station_data(request: Request, caller: InternalCaller, session: DbSession) -> JSONResponse:
    started = time.perf_counter()
    gate = _gate(request)
    gate.check_ip(request)
    await gate.check_rate(caller)
    body = await request.body()
    signature = gate.verify_signature(body, request.headers)
    received_at = utcnow()

    payload_json = body.decode("utf-8", errors="replace")
    try:
        event = _parse_event(body, EventLimits.of(request, received_at))
    except _ParseFailure as failure:
        context = EventContext(
            _event_key(request.headers.get(EVENT_ID_HEADER), f"sig:{signature}"),
            received_at,
            payload_json,
            started,
        )
        await _record_parse_failure(request, body, failure, context)
        raise

    signature_key = _event_key(None, f"sig:{signature}")
    event_key = _event_key(request.headers.get(EVENT_ID_HEADER) or event.event_id, signature_key)
    context = EventContext(
        event_key=event_key,
        received_at=received_at,
        payload_json=payload_json,
        started=started,
        # X-Event-Id is not signed: the signature itself is accepted once, whatever the event id.
        replay_key=signature_key if event_key != signature_key else None,
    )
    processor = _processor(request, session)
    structlog.contextvars.bind_contextvars(
        event_id=context.event_key, event_type=event.type, station_key=event.device.identity
    )
    try:
        outcome = await processor.process(event, context)
    except Exception as exc:
        answer = failure_answer(exc, event.type)
        # The event is this request's transaction: undo it first, then record the failure on another
        # connection (SQLite has a single writer; the rolled-back transaction must not hold it).
        await session.rollback()
        await _recorder(request).record(
            failure_log_entry(
                event_type=event.type, station_key=event.device.identity, context=context, error=repr(exc)
            )
        )
        _log_failure(exc, answer, event.type, context.event_key)
        METRICS.event_applied(event.type, "FAILED")
        raise answer from exc
    METRICS.event_applied(event.type, outcome.outcome.value)
    return JSONResponse({"success": True, "message": outcome.message, "data": outcome.data})


async def _record_parse_failure(
    request: Request, body: bytes, failure: CoreError, context: EventContext
) -> None:
    try:
        raw = loads_bounded(body)
    except ValueError:  # not JSON, or nested too deeply (JsonTooDeep)
        raw = None
    entry = failure_log_entry(
        event_type=_declared_type(raw),
        station_key=_declared_station(raw),
        context=context,
        error=f"{failure.code}: {failure.message}",
    )
    await _recorder(request).record(entry)


def _declared_type(raw: Any) -> str:
    declared = raw.get("type") if isinstance(raw, dict) else None
    return declared[:32] if isinstance(declared, str) and declared else "unknown"


def _declared_station(raw: Any) -> str | None:
    device = raw.get("device") if isinstance(raw, dict) else None
    if not isinstance(device, dict):
        return None
    key = device.get("imei") or device.get("serial_number")
    return str(key)[:64] if key else None


def _log_failure(exc: Exception, failure: CoreError, event_type: str, event_key: str) -> None:
    if failure.status_code >= 500:
        logger.error("station_event_failed", event_type=event_type, event_key=event_key, exc_info=exc)
    else:
        logger.warning(
            "station_event_rejected", event_type=event_type, event_key=event_key, error=failure.message
        )


@router.post(
    "/data/batch",
    response_model=BatchEnvelope,
    summary="Apply many station events; all-or-nothing per event, results in order",
    responses=ERROR_RESPONSES,
    openapi_extra=BATCH_BODY_DOC,
)
async def station_data_batch(request: Request, caller: InternalCaller, session: DbSession) -> JSONResponse:
    started = time.perf_counter()
    gate = _gate(request)
    gate.check_ip(request)
    await gate.check_rate(caller)
    body = await request.body()
    signature = gate.verify_signature(body, request.headers)
    received_at = utcnow()

    document = _decode_json(body)
    events = document.get("events") if isinstance(document, dict) else None
    if not isinstance(events, list) or not events:
        raise ValidationFailed(details={"events": ["a non-empty list of events is required"]})
    if len(events) > MAX_BATCH_EVENTS:
        raise ValidationFailed(details={"events": [f"at most {MAX_BATCH_EVENTS} events per batch"]})

    processor = _processor(request, session)
    limits = EventLimits.of(request, received_at)
    items = [_BatchItem.parse(index, raw, signature, limits, started) for index, raw in enumerate(events)]
    results = await _apply_batch_set_based(session, processor, items)
    if results is None:
        results = await _apply_batch_at_once(session, processor, items)
    if results is None:
        results = await _apply_batch_event_by_event(session, processor, items)
    return JSONResponse(
        {"success": True, "message": f"{len(results)} events processed", "data": {"results": results}}
    )


@dataclass(slots=True)
class _BatchItem:
    """One entry of a batch, parsed (or refused) before anything touches the database."""

    index: int
    explicit_id: str | None
    context: EventContext
    event: StationEvent | None
    parse_failure: _ParseFailure | None
    declared_type: str

    @classmethod
    def parse(cls, index: int, raw: Any, signature: str, limits: EventLimits, started: float) -> _BatchItem:
        explicit_id = (
            raw.get("event_id") if isinstance(raw, dict) and isinstance(raw.get("event_id"), str) else None
        )
        context = EventContext(
            event_key=_event_key(explicit_id, f"sig:{signature}:{index}"),
            received_at=limits.now,
            payload_json=json.dumps(raw),
            started=started,
        )
        declared = _declared_type(raw)
        try:
            return cls(index, explicit_id, context, _parse_event(raw, limits), None, declared)
        except _ParseFailure as failure:
            return cls(index, explicit_id, context, None, failure, declared)


class _BatchEventFailed(Exception):
    """Ends the one-savepoint pass of a batch: an event failed, so the batch is redone event by event."""


class _NotSetBased(Exception):
    """Ends the set-based pass of a batch without keeping anything it wrote (its savepoint rolls back)."""


async def _apply_batch_set_based(
    session: AsyncSession, processor: StationEventProcessor, items: list[_BatchItem]
) -> list[dict[str, Any]] | None:
    """The commonest batch, full snapshots, applied set-based (PostgreSQL) in waves: wave k holds the k-th
    snapshot of each station in the batch (a station's snapshots stay in order), and each wave costs one
    statement locking its stations and one applying all of its snapshots, whatever the number of stations.

    None (nothing kept) when the batch holds anything else or any snapshot needs the general path (a new
    station, a stale or repeated snapshot, a bank out on a rental, a failure): the caller goes on with the
    passes below, so the per-event all-or-nothing rule holds either way."""
    if not SnapshotRepository(session).available:
        return None
    if any(item.event is None or item.parse_failure is not None for item in items):
        return None
    if not all(isinstance(item.event, FullEvent) for item in items):
        return None
    outcomes: dict[int, EventOutcome] = {}
    try:
        async with session.begin_nested():
            for wave in _waves(items):
                parsed = [(item.event, item.context) for item in wave if item.event is not None]
                try:
                    applied = await processor.apply_snapshots_at_once(parsed)
                except Exception as exc:
                    raise _NotSetBased from exc
                if applied is None:
                    raise _NotSetBased
                outcomes.update((item.index, outcome) for item, outcome in zip(wave, applied, strict=True))
    except _NotSetBased as failed:
        if failed.__cause__ is not None:
            logger.info("batch_not_set_based", cause=repr(failed.__cause__))
        return None
    return [_success_item(item, outcomes[item.index]) for item in items]


def _waves(items: list[_BatchItem]) -> list[list[_BatchItem]]:
    """Wave k: the k-th event of every station in the batch, in request order."""
    waves: list[list[_BatchItem]] = []
    seen: dict[str, int] = {}
    for item in items:
        assert item.event is not None
        station = item.event.device.identity
        wave = seen.get(station, 0)
        seen[station] = wave + 1
        if wave == len(waves):
            waves.append([])
        waves[wave].append(item)
    return waves


async def _apply_batch_at_once(
    session: AsyncSession, processor: StationEventProcessor, items: list[_BatchItem]
) -> list[dict[str, Any]] | None:
    """The common case, every event applies: one savepoint around the whole batch instead of one per event.

    A savepoint per event costs two round trips, and every distinct savepoint name is a statement asyncpg
    prepares and caches, which evicts the event statements from the cache at batch sizes beyond ~50. On
    PostgreSQL the keys are also claimed and the stations locked for the whole batch in two statements.
    When any event fails, the whole pass is rolled back and None is returned: the caller redoes the batch
    event by event (savepoint each), so the per-event all-or-nothing rule holds either way.
    """
    outcomes: list[EventOutcome] = []
    parsed = [(item.event, item.context) for item in items if item.event is not None]
    try:
        async with session.begin_nested():
            try:
                claims = await processor.claim_batch(parsed)
                for event, context in parsed:
                    outcome = await processor.process(event, context, claims)
                    outcomes.append(outcome)
            except Exception as exc:
                raise _BatchEventFailed from exc
    except _BatchEventFailed as failed:
        logger.info("batch_redone_event_by_event", cause=repr(failed.__cause__))
        return None
    # Parse failures are written after the pass (they do not depend on it), results stay in request order.
    by_index = iter(outcomes)
    ordered: list[dict[str, Any]] = []
    for item in items:
        if item.parse_failure is None and item.event is not None:
            ordered.append(_success_item(item, next(by_index)))
        else:
            failure = item.parse_failure or _ParseFailure("Invalid station event")
            ordered.append(await _record_batch_parse_failure(session, item, failure))
    return ordered


async def _apply_batch_event_by_event(
    session: AsyncSession, processor: StationEventProcessor, items: list[_BatchItem]
) -> list[dict[str, Any]]:
    """Each event in its own savepoint. After an event of a station fails in a way worth retrying (5xx),
    that station's later events in this batch are not attempted (503): applying them would put them ahead
    of the failed one, which the sender will resend."""
    retry_pending: set[str] = set()
    results: list[dict[str, Any]] = []
    for item in items:
        if item.parse_failure is not None or item.event is None:
            failure = item.parse_failure or _ParseFailure("Invalid station event")
            results.append(await _record_batch_parse_failure(session, item, failure))
            continue
        station_key = item.event.device.identity
        if station_key in retry_pending:
            results.append(_item(item.index, item.explicit_id, PrecedingEventFailed()))
            continue
        result = await _process_batch_item(session, processor, item, item.event)
        if not result["success"] and result["status_code"] >= 500:
            retry_pending.add(station_key)
        results.append(result)
    return results


class PrecedingEventFailed(CoreError):
    """Not attempted: an earlier event of the same station in this batch failed and will be resent."""

    status_code = 503
    code = "PRECEDING_EVENT_FAILED"
    default_message = "Not processed: an earlier event of this station in the batch failed; send both again"


async def _record_batch_parse_failure(
    session: AsyncSession, item: _BatchItem, failure: CoreError
) -> dict[str, Any]:
    entry = failure_log_entry(
        event_type=item.declared_type,
        station_key=None,
        context=item.context,
        error=f"{failure.code}: {failure.message}",
    )
    await _record_batch_failure(session, entry)
    return _item(item.index, item.explicit_id, failure)


async def _record_batch_failure(session: AsyncSession, entry: SyncLog) -> None:
    """The failure row of one event, in its own savepoint: whatever the row holds, failing to write it
    affects neither the other events of the batch nor the answer about this one. A database that is down
    fails the whole request at its commit anyway (503)."""
    try:
        async with session.begin_nested():
            await SyncLogRepository(session).add_resolving_station(entry)
    except Exception as exc:
        if isinstance(dependency_failure(exc), ServiceUnavailable):
            raise
        logger.exception("sync_log_failure_not_recorded", event_id=entry.event_id, error=entry.error)


async def _process_batch_item(
    session: AsyncSession, processor: StationEventProcessor, item: _BatchItem, event: StationEvent
) -> dict[str, Any]:
    try:
        # A savepoint per event: a failing event rolls back alone, the others of the batch stay applied.
        async with session.begin_nested():
            outcome = await processor.process(event, item.context)
    except Exception as exc:
        answer = failure_answer(exc, event.type)
        entry = failure_log_entry(
            event_type=event.type, station_key=event.device.identity, context=item.context, error=repr(exc)
        )
        # Outside the event's savepoint (already rolled back): kept even though the event is not applied.
        await _record_batch_failure(session, entry)
        _log_failure(exc, answer, event.type, item.context.event_key)
        METRICS.event_applied(event.type, "FAILED")
        return _item(item.index, item.explicit_id, answer)
    return _success_item(item, outcome)


def _success_item(item: _BatchItem, outcome: EventOutcome) -> dict[str, Any]:
    METRICS.event_applied(item.declared_type, outcome.outcome.value)
    return BatchItemResult(
        index=item.index,
        event_id=item.explicit_id,
        success=True,
        status_code=200,
        message=outcome.message,
        data=outcome.data,
    ).to_wire()


def _item(index: int, event_id: str | None, failure: CoreError) -> dict[str, Any]:
    return BatchItemResult(
        index=index,
        event_id=event_id,
        success=False,
        status_code=failure.status_code,
        message=failure.message,
        error=failure.code,
        details=failure.details,
    ).to_wire()
