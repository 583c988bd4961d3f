"""Delivery adapters, one per channel: push (FCM HTTP v1), SMS (Sparrow SMS, a generic HTTP gateway),
e-mail (SMTP) and the console provider for development and tests.

An adapter gets one :class:`OutgoingMessage` and either returns (accepted by the provider) or raises
:class:`DeliveryError`, ``permanent`` when a retry cannot succeed (refused number, unregistered device).
Every call carries the outbox row's idempotency key, in the form the provider can use (a header, an FCM
data field, the e-mail Message-ID).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol

import aiosmtplib
import httpx
import structlog
from jose import jwt

from chargeghar_core.notifications.models import Channel
from chargeghar_core.notifications.sealing import mask_destination
from chargeghar_core.settings import NotificationSettings, Settings

logger = structlog.get_logger(__name__)

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    idempotency_key: str
    event: str
    channel: Channel
    destination: str  # E.164 phone, e-mail address or FCM registration token
    title: str
    body: str
    data: dict[str, str] = field(default_factory=dict)
    contains_secret: bool = False  # a login code: never logged, shown only by the dev console channel


class DeliveryError(Exception):
    def __init__(self, reason: str, *, permanent: bool = False, bad_destination: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent or bad_destination
        self.bad_destination = bad_destination


class NotificationProvider(Protocol):
    name: str

    async def send(self, message: OutgoingMessage) -> str:
        """Hand the message to the provider; returns the provider's message id (or "")."""
        ...


# ----------------------------------------------------------------------------------------------- console


class ConsoleProvider:
    """Development and tests. Logs that a message went to a masked destination; the whole message (a login
    code included) goes only to the DEV-ONLY channel: ``output`` (a JSON-lines file) or stdout, and never
    in production."""

    name = "console"

    def __init__(self, *, output: str | None, production: bool) -> None:
        self._output = Path(output) if output else None
        self._production = production

    async def send(self, message: OutgoingMessage) -> str:
        logger.info(
            "notification_console",
            notification=message.event,
            channel=message.channel.value,
            destination=mask_destination(message.destination),
            idempotency_key=message.idempotency_key,
        )
        if self._production:
            return ""
        record = {"DEV_ONLY": "never enabled in production", **asdict(message)}
        line = json.dumps(record, ensure_ascii=False)
        if self._output is not None:
            await asyncio.to_thread(_append_line, self._output, line)
        else:
            sys.stdout.write(f"[DEV-ONLY notification] {line}\n")
            sys.stdout.flush()
        return ""


def _append_line(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(line + "\n")


class DisabledProvider:
    """A channel switched off: the row is skipped, not failed."""

    name = "none"

    async def send(self, message: OutgoingMessage) -> str:
        raise DeliveryError("channel disabled", permanent=True)


# ----------------------------------------------------------------------------------------------- helpers


def _status_error(provider: str, response: httpx.Response) -> DeliveryError:
    status = response.status_code
    transient = status in (408, 425, 429) or status >= 500
    return DeliveryError(f"{provider} answered {status}", permanent=not transient)


async def _post(provider: str, call: Callable[[], Any]) -> httpx.Response:
    try:
        response: httpx.Response = await call()
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{provider} unreachable: {type(exc).__name__}") from exc
    return response


# ----------------------------------------------------------------------------------------------- FCM


class FcmProvider:
    """Firebase Cloud Messaging HTTP v1: ``POST /v1/projects/{project}/messages:send`` with an OAuth 2.0
    access token obtained by the service account's signed JWT (RS256, JWT-bearer grant)."""

    name = "fcm"

    def __init__(
        self,
        http: httpx.AsyncClient,
        service_account: dict[str, Any],
        *,
        base_url: str = "https://fcm.googleapis.com",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._project_id = str(service_account["project_id"])
        self._client_email = str(service_account["client_email"])
        self._private_key = str(service_account["private_key"])
        self._key_id = str(service_account.get("private_key_id", ""))
        self._token_uri = str(service_account.get("token_uri", "https://oauth2.googleapis.com/token"))
        self._send_url = f"{base_url.rstrip('/')}/v1/projects/{self._project_id}/messages:send"
        self._clock = clock
        self._token: tuple[str, float] | None = None
        self._lock = asyncio.Lock()

    def assertion(self) -> str:
        now = int(self._clock())
        claims = {
            "iss": self._client_email,
            "scope": FCM_SCOPE,
            "aud": self._token_uri,
            "iat": now,
            "exp": now + 3600,
        }
        headers = {"kid": self._key_id} if self._key_id else None
        return jwt.encode(claims, self._private_key, algorithm="RS256", headers=headers)

    async def access_token(self) -> str:
        async with self._lock:
            if self._token is not None and self._token[1] > self._clock() + 60:
                return self._token[0]
            response = await _post(
                "fcm-oauth",
                lambda: self._http.post(
                    self._token_uri, data={"grant_type": JWT_BEARER_GRANT, "assertion": self.assertion()}
                ),
            )
            if response.status_code != 200:
                raise _status_error("fcm-oauth", response)
            body = response.json()
            self._token = (str(body["access_token"]), self._clock() + float(body.get("expires_in", 3600)))
            return self._token[0]

    async def send(self, message: OutgoingMessage) -> str:
        token = await self.access_token()
        data = {**message.data, "event": message.event, "idempotency_key": message.idempotency_key}
        payload = {
            "message": {
                "token": message.destination,
                "notification": {"title": message.title, "body": message.body},
                "data": data,
                "android": {"priority": "high"},
            }
        }
        response = await _post(
            "fcm",
            lambda: self._http.post(
                self._send_url, json=payload, headers={"Authorization": f"Bearer {token}"}
            ),
        )
        if response.status_code == 200:
            return str(response.json().get("name", ""))
        if response.status_code == 401:
            self._token = None  # expired or revoked early: fetch a new one on the retry
        error_code = _fcm_error_code(response)
        if (
            error_code in ("UNREGISTERED", "INVALID_ARGUMENT", "SENDER_ID_MISMATCH")
            or response.status_code == 404
        ):
            raise DeliveryError(f"fcm: {error_code or response.status_code}", bad_destination=True)
        raise _status_error("fcm", response)


def _fcm_error_code(response: httpx.Response) -> str | None:
    try:
        error = response.json().get("error", {})
    except ValueError:
        return None
    for detail in error.get("details", []) or []:
        if isinstance(detail, dict) and detail.get("errorCode"):
            return str(detail["errorCode"])
    status = error.get("status")
    return str(status) if status else None


def load_service_account(settings: NotificationSettings) -> dict[str, Any]:
    if settings.fcm_service_account_json is not None:
        loaded: dict[str, Any] = json.loads(settings.fcm_service_account_json.get_secret_value())
        return loaded
    if settings.fcm_service_account_file:
        loaded = json.loads(Path(settings.fcm_service_account_file).read_text(encoding="utf-8"))
        return loaded
    raise ValueError("push_provider=fcm needs fcm_service_account_file or fcm_service_account_json")


# ----------------------------------------------------------------------------------------------- SMS


# Sparrow SMS refusals (HTTP 403, ``response_code``) that concern the receiver: retrying cannot help.
SPARROW_BAD_RECEIVER = frozenset({1007, 1011})
# Out of credits: an operator tops the account up, so these are retried.
SPARROW_RETRYABLE = frozenset({1012, 1013})


class SparrowSmsProvider:
    """Sparrow SMS (Nepal) v2: form POST of ``token``, ``from``, ``to`` (10-digit mobile number), ``text``;
    200 ``{"count": 1, "response_code": 200, ...}`` or 403 ``{"response_code": 10xx, "response": ...}``."""

    name = "sparrow"

    def __init__(self, http: httpx.AsyncClient, *, url: str, token: str, sender: str) -> None:
        self._http = http
        self._url = url
        self._token = token
        self._sender = sender

    @staticmethod
    def local_number(phone: str) -> str:
        digits = phone.lstrip("+")
        return digits[3:] if digits.startswith("977") and len(digits) == 13 else digits

    async def send(self, message: OutgoingMessage) -> str:
        form = {
            "token": self._token,
            "from": self._sender,
            "to": self.local_number(message.destination),
            "text": message.body,
        }
        response = await _post("sparrow", lambda: self._http.post(self._url, data=form))
        try:
            body = response.json()
        except ValueError:
            body = {}
        code = int(body.get("response_code", 0) or 0) if isinstance(body, dict) else 0
        if response.status_code == 200 and code == 200:
            return str(body.get("count", ""))
        if code in SPARROW_BAD_RECEIVER:
            raise DeliveryError(f"sparrow {code}", bad_destination=True)
        if code in SPARROW_RETRYABLE or response.status_code >= 500:
            raise DeliveryError(f"sparrow {code or response.status_code}")
        raise DeliveryError(f"sparrow {code or response.status_code}", permanent=True)


class HttpSmsProvider:
    """Any gateway taking ``POST {"to", "text", "idempotency_key"}`` with a bearer token and the
    ``Idempotency-Key`` header; 2xx = accepted, 4xx = refused (408/429 retried), 5xx = retried."""

    name = "http"

    def __init__(self, http: httpx.AsyncClient, *, url: str, token: str | None) -> None:
        self._http = http
        self._url = url
        self._token = token

    async def send(self, message: OutgoingMessage) -> str:
        headers = {"Idempotency-Key": message.idempotency_key}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        body = {"to": message.destination, "text": message.body, "idempotency_key": message.idempotency_key}
        response = await _post("sms-http", lambda: self._http.post(self._url, json=body, headers=headers))
        if 200 <= response.status_code < 300:
            try:
                return str(response.json().get("id", ""))
            except ValueError:
                return ""
        raise _status_error("sms-http", response)


# ----------------------------------------------------------------------------------------------- e-mail


class SmtpProvider:
    """Plain-text e-mail over SMTP (aiosmtplib); the Message-ID is derived from the idempotency key."""

    name = "smtp"

    def __init__(self, settings: NotificationSettings) -> None:
        self._settings = settings

    @staticmethod
    def message_id(idempotency_key: str) -> str:
        return f"<{hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]}@chargeghar.notifications>"

    async def send(self, message: OutgoingMessage) -> str:
        settings = self._settings
        email = EmailMessage()
        email["From"] = settings.smtp_from
        email["To"] = message.destination
        email["Subject"] = message.title
        email["Message-ID"] = self.message_id(message.idempotency_key)
        email.set_content(message.body)
        try:
            await aiosmtplib.send(
                email,
                hostname=settings.smtp_host,
                port=settings.smtp_port,
                username=settings.smtp_username,
                password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
                start_tls=settings.smtp_start_tls,
                use_tls=settings.smtp_use_tls,
                timeout=settings.http_timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise DeliveryError("smtp recipient refused", bad_destination=True) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise DeliveryError(f"smtp {exc.code}", permanent=500 <= exc.code < 600) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise DeliveryError(f"smtp unreachable: {type(exc).__name__}") from exc
        return email["Message-ID"]


# ----------------------------------------------------------------------------------------------- wiring


@dataclass(slots=True)
class Providers:
    push: NotificationProvider
    sms: NotificationProvider
    email: NotificationProvider

    def for_channel(self, channel: Channel) -> NotificationProvider:
        return {Channel.PUSH: self.push, Channel.SMS: self.sms, Channel.EMAIL: self.email}[channel]


def build_providers(settings: Settings, http: httpx.AsyncClient) -> Providers:
    config = settings.notifications
    console = ConsoleProvider(output=config.console_output, production=settings.environment == "production")
    push: NotificationProvider = console
    if config.push_provider == "fcm":
        push = FcmProvider(http, load_service_account(config), base_url=config.fcm_base_url)
    elif config.push_provider == "none":
        push = DisabledProvider()
    sms: NotificationProvider = console
    if config.sms_provider == "sparrow":
        if config.sparrow_token is None:
            raise ValueError("sms_provider=sparrow needs sparrow_token")
        sms = SparrowSmsProvider(
            http,
            url=config.sparrow_url,
            token=config.sparrow_token.get_secret_value(),
            sender=config.sparrow_from,
        )
    elif config.sms_provider == "http":
        if not config.sms_http_url:
            raise ValueError("sms_provider=http needs sms_http_url")
        token = config.sms_http_token.get_secret_value() if config.sms_http_token else None
        sms = HttpSmsProvider(http, url=config.sms_http_url, token=token)
    elif config.sms_provider == "none":
        sms = DisabledProvider()
    email: NotificationProvider = console
    if config.email_provider == "smtp":
        email = SmtpProvider(config)
    elif config.email_provider == "none":
        email = DisabledProvider()
    return Providers(push=push, sms=sms, email=email)
