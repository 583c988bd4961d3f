"""Commands from core to a station (contract.md §3): lock, publish, wait for the matching reply.

- One command in flight per station (:mod:`chargeghar_ingest.locks`); a second one is refused at once.
- A station that is not ONLINE is refused at once (no waiting on a cabinet that cannot answer).
- Popups go out at QoS 0 and are never re-sent: a duplicated eject can release a second bank
  (protocol.md §10.24). Other commands use QoS 1.
- The reply is matched by (station, reply command byte, SN or hole) through a :class:`ReplyBroker`;
  a reply that comes after the timeout is forwarded to core as a ``command_result`` event.
- Every command is written to the audit table (payload with secrets masked) with its outcome and timing,
  a refused one (409 DEVICE_BUSY / DEVICE_OFFLINE / CONFLICT, 400 invalid, 503) too, and each audit record
  is forwarded to core as a ``command_audit`` event through the spool (``commands.forward_audit``), so the
  audit of every replica is readable in core's sync log.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from chargeghar_protocol.codec import (
    CabinetSnapshot,
    Frame,
    PopupByHoleResult,
    PopupBySnResult,
    WifiScanList,
    frame_to_dict,
)
from chargeghar_protocol.contract import (
    CommandAuditEvent,
    CommandAuditOutcome,
    CommandOutcome,
    CommandRequest,
    CommandResult,
    CommandResultEvent,
    DeviceInfo,
)
from redis.exceptions import RedisError

from chargeghar_ingest.locks import StationLock
from chargeghar_ingest.metrics import Metrics
from chargeghar_ingest.pipeline import EventRecorder
from chargeghar_ingest.replies import ANY_MATCH, DeliveredReply, ReplyBroker, ReplyCallback, Waiter
from chargeghar_ingest.spool import Spool
from chargeghar_ingest.transport import MqttNotConnectedError, MqttPublishError

log = structlog.get_logger(__name__)

POPUP_COMMANDS = frozenset({"popup_sn", "popup"})
# Commands whose reply comes back on /user/update, and the reply's command byte.
EXPECTED_REPLY = {
    "check": "0x10",
    "check_all": "0x10",
    "popup_sn": "0x31",
    "popup": "0x21",
    "getWifi": "0xcf",
}
# How long a command id is remembered, so a retried request from core never publishes a second time.
COMMAND_ID_MEMORY_S = 24 * 3600
REPLY_BROKER_ERRORS = (RedisError, OSError, TimeoutError)
# Grace after a withdraw that lost the race against a claim: the claimed reply is on its way.
CLAIM_RACE_GRACE_S = 2.0


class Publisher(Protocol):
    async def __call__(self, topic: str, payload: str, *, qos: int) -> None: ...


class CommandRejected(Exception):
    """Refused before anything was published; carries the contract error code and HTTP status."""

    def __init__(self, code: str, message: str, http_status: int = 409) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status


@dataclass(frozen=True, slots=True)
class ReplyKey:
    expect: str
    match: str


def reply_key_for_command(request: CommandRequest) -> ReplyKey | None:
    expect = EXPECTED_REPLY.get(request.cmd)
    if expect is None:
        return None
    if request.cmd == "popup_sn":
        return ReplyKey(expect, f"sn:{int(request.data)}")
    if request.cmd == "popup":
        return ReplyKey(expect, f"hole:{int(request.data)}")
    return ReplyKey(expect, "")


def reply_key_for_frame(frame: Frame) -> ReplyKey | None:
    if isinstance(frame, PopupBySnResult):
        # A failed popup may carry SN 0 (no bank named): it still answers the popup in flight.
        return ReplyKey("0x31", f"sn:{frame.sn_int}" if frame.sn_int else ANY_MATCH)
    if isinstance(frame, PopupByHoleResult):
        return ReplyKey("0x21", f"hole:{frame.hole}")
    if isinstance(frame, CabinetSnapshot):
        return ReplyKey("0x10", ANY_MATCH)
    if isinstance(frame, WifiScanList):
        return ReplyKey("0xcf", ANY_MATCH)
    return None


def reply_succeeded(frame: Frame) -> bool:
    if isinstance(frame, PopupBySnResult | PopupByHoleResult):
        return bool(frame.succeeded)
    return True


def reply_json(frame: Frame) -> dict[str, Any]:
    body = frame_to_dict(frame)
    body["cmd"] = f"0x{frame.cmd:02x}"
    return body


class CommandService:
    def __init__(
        self,
        *,
        lock: StationLock,
        broker_factory: Callable[[ReplyCallback], ReplyBroker],
        recorder: EventRecorder,
        spool: Spool,
        metrics: Metrics,
        publish: Publisher,
        topic_prefix: str,
        replica: str,
        offline_after_s: float,
        late_reply_window_s: float,
        max_timeout_s: float,
        forward_audit: bool = True,
    ) -> None:
        self._lock = lock
        self._recorder = recorder
        self._spool = spool
        self._metrics = metrics
        self._publish = publish
        self._topic_prefix = topic_prefix
        self._replica = replica
        self._offline_after_s = offline_after_s
        self._late_window_s = late_reply_window_s
        self._max_timeout_s = max_timeout_s
        self._forward_audit = forward_audit
        self._pending: dict[str, asyncio.Future[DeliveredReply]] = {}
        self.broker: ReplyBroker = broker_factory(self._resolve)

    async def _resolve(self, reply: DeliveredReply) -> None:
        future = self._pending.get(reply.command_id)
        if future is not None and not future.done():
            future.set_result(reply)

    def command_topic(self, station: str) -> str:
        return f"{self._topic_prefix}/powerbank/{station}/user/get"

    async def execute(
        self,
        station: str,
        request: CommandRequest,
        *,
        caller: str | None,
        correlation_id: str | None = None,
    ) -> CommandResult:
        try:
            if not await self._recorder.is_online(station, self._offline_after_s):
                self._metrics.inc("commands_rejected_offline_total")
                raise CommandRejected("DEVICE_OFFLINE", "Device is offline")
            timeout_s = min(request.timeout_s, self._max_timeout_s)
            token = await self._lock.acquire(station, timeout_s + CLAIM_RACE_GRACE_S + 5)
            if token is None:
                self._metrics.inc("commands_rejected_busy_total")
                raise CommandRejected("DEVICE_BUSY", "Another command is in flight for this station")
        except CommandRejected as exc:
            await self._audit_rejection(exc, station, request, caller, correlation_id)
            raise
        try:
            if not await self._lock.claim_command_id(request.command_id, COMMAND_ID_MEMORY_S):
                try:
                    return await self._replay(station, request)
                except CommandRejected as exc:
                    await self._audit_rejection(exc, station, request, caller, correlation_id)
                    raise
            return await self._execute_locked(
                station, request, caller=caller, timeout_s=timeout_s, correlation_id=correlation_id
            )
        finally:
            await self._lock.release(station, token)

    async def _audit_rejection(
        self,
        exc: CommandRejected,
        station: str,
        request: CommandRequest,
        caller: str | None,
        correlation_id: str | None,
    ) -> None:
        await self.audit_refused(
            station,
            cmd=request.cmd,
            command_id=request.command_id,
            caller=caller,
            payload=request.audit_payload(),
            code=exc.code,
            http_status=exc.http_status,
            correlation_id=correlation_id,
        )

    async def audit_refused(
        self,
        station: str,
        *,
        cmd: str,
        command_id: str | None,
        caller: str | None,
        payload: dict[str, Any],
        code: str,
        http_status: int,
        correlation_id: str | None = None,
    ) -> None:
        """A command refused before anything was published: into the audit table, and to core."""
        now = datetime.now(UTC)
        cmd = cmd[:64]
        command_id = command_id[:128] if command_id else None
        caller = caller[:128] if caller else None
        await self._spool.audit_command_refused(
            command_id=command_id,
            station=station,
            caller=caller,
            cmd=cmd,
            payload=payload,
            refusal_code=code,
            at=now.timestamp(),
        )
        log.info("command.refused", station_id=station, command_id=command_id, cmd=cmd, code=code)
        await self._forward_audit_event(
            station,
            at=now,
            correlation_id=correlation_id,
            command_id=command_id,
            cmd=cmd,
            requested_by=caller,
            outcome="refused",
            refusal_code=code,
            refusal_status=http_status,
            elapsed_ms=0,
            payload=payload,
        )

    async def _forward_audit_event(
        self, station: str, *, at: datetime, correlation_id: str | None, **fields: Any
    ) -> None:
        if not self._forward_audit:
            return  # a legacy core answers 400 INVALID_TYPE: the event would only be dead-lettered
        event = CommandAuditEvent(
            timestamp=int(at.timestamp()),
            device=DeviceInfo(serial_number=station, imei=station),
            replica=self._replica[:128],
            observed_at=at,
            **fields,
        )
        await self._recorder.record(event, station=station, correlation_id=correlation_id)

    async def _replay(self, station: str, request: CommandRequest) -> CommandResult:
        """A command id seen before: answer what happened then, never publish again (a resent popup
        would eject a second bank)."""
        previous = await self._spool.audit_for_command(request.command_id)
        if previous is None or previous.outcome is None or previous.station != station:
            # Audited by execute(), with the other refusals.
            raise CommandRejected("CONFLICT", "This command_id was already sent; it is not sent twice")
        log.info(
            "command.replayed", station_id=station, command_id=request.command_id, outcome=previous.outcome
        )
        outcome: CommandOutcome = (
            "ok" if previous.outcome == "ok" else ("timeout" if previous.outcome == "timeout" else "failed")
        )
        return CommandResult(
            command_id=request.command_id,
            outcome=outcome,
            reply=previous.reply,
            elapsed_ms=previous.elapsed_ms or 0,
        )

    async def _execute_locked(
        self,
        station: str,
        request: CommandRequest,
        *,
        caller: str | None,
        timeout_s: float,
        correlation_id: str | None,
    ) -> CommandResult:
        self._metrics.inc("commands_total")
        qos = 0 if request.cmd in POPUP_COMMANDS else 1
        started_wall = time.time()
        started = time.monotonic()
        audit_id = await self._spool.audit_command_started(
            command_id=request.command_id,
            station=station,
            caller=caller,
            cmd=request.cmd,
            payload=request.audit_payload(),
            qos=qos,
            started_at=started_wall,
        )
        key = reply_key_for_command(request)
        waiter: Waiter | None = None
        future: asyncio.Future[DeliveredReply] | None = None
        if key is not None:
            waiter = Waiter(
                request.command_id, station, request.cmd, key.expect, key.match, started_wall, self._replica
            )
            future = asyncio.get_running_loop().create_future()
            self._pending[request.command_id] = future
            # Registered before publishing: a fast device could answer before publish() returns.
            await self.broker.register(waiter, timeout_s + CLAIM_RACE_GRACE_S)

        outcome: CommandOutcome
        reply: dict[str, Any] | None = None
        log_fields = {"station_id": station, "command_id": request.command_id, "cmd": request.cmd, "qos": qos}
        try:
            payload = json.dumps(request.device_payload(), separators=(",", ":"))
            try:
                await self._publish(self.command_topic(station), payload, qos=qos)
            except (MqttNotConnectedError, MqttPublishError) as exc:
                log.error("command.publish_failed", error=str(exc), **log_fields)
                if waiter is not None:
                    await self.broker.withdraw(waiter)
                outcome, reply = "failed", {"error": "publish_failed", "message": str(exc)}
            else:
                if waiter is None or future is None:
                    outcome = "ok"  # nothing to wait for: published is all the protocol offers
                else:
                    outcome, reply = await self._wait(waiter, future, timeout_s)
        finally:
            self._pending.pop(request.command_id, None)
        elapsed_ms = int((time.monotonic() - started) * 1000)
        self._metrics.inc(f"commands_{outcome}_total")
        await self._spool.audit_command_finished(
            audit_id, outcome=outcome, reply=reply, elapsed_ms=elapsed_ms
        )
        log.info("command.finished", outcome=outcome, elapsed_ms=elapsed_ms, **log_fields)
        audit_outcome: CommandAuditOutcome = outcome
        await self._forward_audit_event(
            station,
            at=datetime.fromtimestamp(started_wall, UTC),
            correlation_id=correlation_id,
            command_id=request.command_id,
            cmd=request.cmd,
            requested_by=caller[:128] if caller else None,
            outcome=audit_outcome,
            elapsed_ms=elapsed_ms,
            qos=qos,
            payload=request.audit_payload(),
            reply=reply,
        )
        return CommandResult(
            command_id=request.command_id, outcome=outcome, reply=reply, elapsed_ms=elapsed_ms
        )

    async def _wait(
        self, waiter: Waiter, future: asyncio.Future[DeliveredReply], timeout_s: float
    ) -> tuple[CommandOutcome, dict[str, Any] | None]:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancellation (request aborted,
        # shutdown) that arrives in the same loop step as the reply, and the handler would carry on.
        try:
            async with asyncio.timeout(timeout_s):
                delivered = await asyncio.shield(future)
        except TimeoutError:
            if await self.broker.withdraw(waiter):
                await self.broker.remember_late(waiter, self._late_window_s)
                return "timeout", None
            # A reply claimed the waiter just as we gave up: it is being delivered, take it.
            try:
                async with asyncio.timeout(CLAIM_RACE_GRACE_S):
                    delivered = await future
            except TimeoutError:
                return "timeout", None
        return ("ok" if delivered.succeeded else "failed"), delivered.reply

    async def offer_reply(self, station: str, frame: Frame, *, received_at: datetime) -> bool:
        """A reply-type frame arrived: hand it to its command, or report it as a command_result event.

        Returns True when a waiting command took it.
        """
        key = reply_key_for_frame(frame)
        if key is None:
            return False
        reply = reply_json(frame)
        succeeded = reply_succeeded(frame)
        if succeeded and isinstance(frame, PopupBySnResult | PopupByHoleResult):
            # The bank left the cabinet: a later return of it is a new return, not a duplicate report.
            serial = frame.sn if isinstance(frame, PopupBySnResult) and frame.sn_int else None
            await self._recorder.ejected(station, serial=serial, slot=frame.hole, at=received_at)
        late: Waiter | None = None
        try:
            waiter = await self.broker.claim(station, key.expect, key.match)
            if waiter is not None:
                await self.broker.deliver(
                    waiter,
                    DeliveredReply(waiter.command_id, key.expect, reply, succeeded, received_at.timestamp()),
                )
                return True
            late = await self.broker.claim_late(station, key.expect, key.match)
        except REPLY_BROKER_ERRORS as exc:
            # Redis is down: the reply cannot reach its waiter, but it must not be lost either.
            self._metrics.inc("reply_broker_errors_total")
            log.error("command.reply_broker_failed", station_id=station, error=repr(exc))
        if late is None and isinstance(frame, CabinetSnapshot):
            return False  # an unsolicited snapshot is an ordinary upload; its full event says it all
        cmd = late.cmd if late is not None else _command_for_reply(key.expect)
        elapsed_ms = int((received_at.timestamp() - late.started_at) * 1000) if late is not None else None
        event = CommandResultEvent(
            timestamp=int(received_at.timestamp()),
            device=DeviceInfo(serial_number=station, imei=station, last_heartbeat=received_at),
            command_id=late.command_id if late is not None else None,
            cmd=cmd,
            outcome="ok" if succeeded else "failed",
            reply_cmd=key.expect,
            reply=reply,
            elapsed_ms=max(0, elapsed_ms) if elapsed_ms is not None else None,
            observed_at=received_at,
        )
        await self._recorder.record(event, station=station)
        self._metrics.inc("late_replies_total")
        log.info("command.late_reply", station_id=station, command_id=event.command_id, reply_cmd=key.expect)
        return False


def _command_for_reply(expect: str) -> str:
    return {"0x31": "popup_sn", "0x21": "popup", "0x10": "check", "0xcf": "getWifi"}.get(expect, expect)
