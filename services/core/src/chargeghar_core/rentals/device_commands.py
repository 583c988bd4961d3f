"""Asking a station to do something, through the ingest's command API (contract.md §3).

:class:`DeviceCommands` is the small protocol the rentals service depends on; :class:`IngestCommandClient`
is the real one (HMAC-signed HTTP). The answer is reduced to what matters for money and banks:

- ``ok`` / ``failed`` / ``timeout``: the ingest published the command and this is what the device said;
- ``not_sent``: certainly never published (no connection, offline, refused, bad request) — safe to undo;
- ``unknown``: the request may have been published but the answer was lost (read timeout, 5xx) — a popup
  in this state must be decided by a ``check``, never assumed either way.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx
import structlog
from chargeghar_protocol.contract import CommandRequest, CommandResult
from chargeghar_protocol.signing import signed_headers
from pydantic import ValidationError

logger = structlog.get_logger(__name__)

AttemptStatus = Literal["ok", "failed", "timeout", "not_sent", "unknown"]

SERVICE_TOKEN_HEADER = "X-Service-Token"  # noqa: S105 - a header name
BUSY_RETRY_DELAY_S = 0.25


@dataclass(frozen=True, slots=True)
class CommandAttempt:
    status: AttemptStatus
    reply: dict[str, Any] | None = None
    error_code: str | None = None
    elapsed_ms: int = 0

    @property
    def published(self) -> bool:
        return self.status != "not_sent"


class DeviceCommands(Protocol):
    async def send(self, imei: str, command: CommandRequest) -> CommandAttempt: ...


class IngestCommandClient:
    """POST /internal/devices/{imei}/commands with the shared HMAC secret.

    ``DEVICE_BUSY`` means the ingest refused before publishing (one command per station), so it is retried
    for up to ``busy_retry_s``; nothing else is retried — a re-sent eject could eject a second bank.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        hmac_secret: str,
        service_token: str | None = None,
        http_margin_s: float = 5.0,
        busy_retry_s: float = 10.0,
    ) -> None:
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._secret = hmac_secret
        self._service_token = service_token
        self._margin_s = http_margin_s
        self._busy_retry_s = busy_retry_s

    async def send(self, imei: str, command: CommandRequest) -> CommandAttempt:
        started = time.monotonic()
        deadline = started + self._busy_retry_s
        while True:
            attempt = await self._send_once(imei, command)
            if attempt.error_code != "DEVICE_BUSY" or time.monotonic() + BUSY_RETRY_DELAY_S > deadline:
                break
            await asyncio.sleep(BUSY_RETRY_DELAY_S)
        elapsed = int((time.monotonic() - started) * 1000)
        logger.info(
            "device_command_done",
            imei=imei,
            cmd=command.cmd,
            command_id=command.command_id,
            status=attempt.status,
            error_code=attempt.error_code,
            elapsed_ms=elapsed,
        )
        return CommandAttempt(attempt.status, attempt.reply, attempt.error_code, elapsed)

    async def _send_once(self, imei: str, command: CommandRequest) -> CommandAttempt:
        body = command.model_dump_json(exclude_none=True).encode()
        headers = {"Content-Type": "application/json", "X-Caller": "core-rentals"}
        headers.update(signed_headers(self._secret, body))
        if self._service_token:
            headers[SERVICE_TOKEN_HEADER] = self._service_token
        timeout = httpx.Timeout(command.timeout_s + self._margin_s, connect=3.0)
        url = f"{self._base_url}/internal/devices/{imei}/commands"
        try:
            response = await self._http.post(url, content=body, headers=headers, timeout=timeout)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # No connection was made, so no command can have been published.
            return CommandAttempt("not_sent", error_code="INGEST_UNREACHABLE", reply={"error": repr(exc)})
        except httpx.HTTPError as exc:
            return CommandAttempt("unknown", error_code="INGEST_NO_ANSWER", reply={"error": repr(exc)})
        return _attempt_from_response(response)


def _attempt_from_response(response: httpx.Response) -> CommandAttempt:
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if response.status_code == 200 and isinstance(payload, dict):
        try:
            result = CommandResult.model_validate(payload.get("data"))
        except ValidationError:
            return CommandAttempt("unknown", error_code="BAD_INGEST_ANSWER")
        return CommandAttempt(result.outcome, result.reply, None, result.elapsed_ms)
    code = payload.get("error") if isinstance(payload, dict) else None
    if 400 <= response.status_code < 500 or response.status_code == 503:
        # Refused before publishing: offline, busy, auth, validation, or coordination store down (503).
        return CommandAttempt("not_sent", error_code=str(code or response.status_code))
    return CommandAttempt("unknown", error_code=str(code or response.status_code))
