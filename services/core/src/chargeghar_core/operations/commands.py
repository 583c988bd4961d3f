"""Staff device commands: checked here, signed and forwarded to the ingest's command API (contract.md §3).

Popups follow the rentals' never-twice rule: the ingest publishes them at QoS 0, and core never re-sends
one — not even on DEVICE_BUSY (the staff client answers the refusal instead of waiting). A popup of a bank
that is out on an open rental (or reserved by one) is refused before anything is sent.
"""

from __future__ import annotations

import time
import uuid

import httpx
from chargeghar_protocol.contract import CommandRequest
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.audit.service import record_staff_action
from chargeghar_core.auth.tokens import TokenClaims
from chargeghar_core.kit.errors import Conflict, CoreError, NotFound, ValidationFailed
from chargeghar_core.operations.schemas import StaffCommand, StaffCommandResult
from chargeghar_core.powerbanks.models import PowerBank
from chargeghar_core.rentals.device_commands import CommandAttempt, IngestCommandClient
from chargeghar_core.rentals.models import OPEN_STATUSES, Rental
from chargeghar_core.stations.models import Station, StationSlot

AUDIT_ACTION = "device.command"
POPUPS = frozenset({"popup", "popup_sn"})


class DeviceRefused(CoreError):
    """The ingest refused before publishing (DEVICE_BUSY, DEVICE_OFFLINE, ...): nothing was sent."""

    status_code = 409
    code = "DEVICE_REFUSED"


class IngestFailed(CoreError):
    status_code = 502
    code = "INGEST_UNAVAILABLE"


def staff_client(
    http: httpx.AsyncClient, *, base_url: str, secret: str, token: str | None
) -> IngestCommandClient:
    # busy_retry_s=0: a staff command is never re-sent; DEVICE_BUSY is answered to the operator.
    return IngestCommandClient(
        http, base_url=base_url, hmac_secret=secret, service_token=token, busy_retry_s=0
    )


def build_request(command: StaffCommand) -> CommandRequest:
    try:
        return CommandRequest(
            cmd=command.cmd,
            data=command.data,
            io=command.io,
            username=command.username,
            password=command.password,
            timeout_s=command.timeout_s,
        )
    except ValidationError as exc:
        messages = [str(error["msg"]).removeprefix("Value error, ") for error in exc.errors()]
        raise ValidationFailed(details={"body": messages}) from exc


async def check_popup_allowed(session: AsyncSession, station: Station, request: CommandRequest) -> str | None:
    """Refuse a popup of a bank on an open rental; answer the bank serial the popup names (if known)."""
    if request.cmd == "popup_sn":
        bank_id = await session.scalar(select(PowerBank.id).where(PowerBank.serial_number == request.data))
        serial: str | None = request.data
    else:
        row = (
            await session.execute(
                select(PowerBank.id, PowerBank.serial_number)
                .join(StationSlot, StationSlot.power_bank_id == PowerBank.id)
                .where(StationSlot.station_id == station.id, StationSlot.slot_number == int(request.data))
            )
        ).one_or_none()
        bank_id, serial = (row[0], row[1]) if row is not None else (None, None)
    if bank_id is not None:
        rental = await session.scalar(
            select(Rental.id)
            .where(Rental.power_bank_id == bank_id, Rental.status.in_(OPEN_STATUSES))
            .limit(1)
        )
        if rental is not None:
            raise Conflict(
                "The bank is out on (or reserved by) an open rental: it is never ejected twice",
                code="BANK_ON_RENTAL",
                details={"rental_id": str(rental), "power_bank_serial": serial},
            )
    return serial


async def run_staff_command(
    session: AsyncSession,
    client: IngestCommandClient,
    station_id: uuid.UUID,
    command: StaffCommand,
    actor: TokenClaims,
) -> StaffCommandResult:
    station = await session.get(Station, station_id)
    if station is None:
        raise NotFound("No such station")
    request = build_request(command)
    bank_serial = await check_popup_allowed(session, station, request) if request.cmd in POPUPS else None
    imei = station.imei
    # No transaction (and no pooled connection) held while the cabinet answers.
    await session.commit()
    started = time.monotonic()
    attempt = await client.send(imei, request)
    elapsed_ms = (time.monotonic() - started) * 1000
    details = {"request": request.audit_payload(), "imei": imei, "reply": attempt.reply}
    if bank_serial is not None:
        details["power_bank_serial"] = bank_serial
    outcome = attempt.status if attempt.error_code is None else f"{attempt.status}:{attempt.error_code}"
    await record_staff_action(
        session,
        actor=actor,
        action=AUDIT_ACTION,
        target_type="station",
        target_id=str(station_id),
        station_id=station_id,
        details=details,
        outcome=outcome,
        elapsed_ms=elapsed_ms,
    )
    if attempt.status in ("ok", "failed", "timeout"):
        return StaffCommandResult(
            command_id=request.command_id,
            cmd=request.cmd,
            outcome=attempt.status,
            reply=attempt.reply,
            elapsed_ms=attempt.elapsed_ms,
        )
    # Refused or lost: keep the audit row (the request's rollback must not take it away), then answer.
    await session.commit()
    raise _error_for(attempt)


def _error_for(attempt: CommandAttempt) -> CoreError:
    code = attempt.error_code or "INGEST_UNAVAILABLE"
    if attempt.status == "not_sent" and code.startswith("DEVICE_"):
        return DeviceRefused(f"The ingest refused the command: {code}", code=code)
    if attempt.status == "not_sent":
        return IngestFailed(f"The ingest did not take the command ({code}); nothing was sent", code=code)
    return IngestFailed(
        f"No answer from the ingest ({code}): the command may have reached the station; run `check` "
        "before asking again",
        code=code,
    )
