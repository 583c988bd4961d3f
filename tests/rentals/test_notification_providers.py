"""Provider contracts against fake servers on 127.0.0.1 answering the documented requests/responses:
FCM HTTP v1 (+ the OAuth JWT-bearer exchange), Sparrow SMS v2, a generic HTTP gateway and SMTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from chargeghar_core.models import Base  # noqa: F401 - mappers configured
from chargeghar_core.notifications.models import Channel
from chargeghar_core.notifications.providers import (
    DeliveryError,
    FcmProvider,
    HttpSmsProvider,
    OutgoingMessage,
    SmtpProvider,
    SparrowSmsProvider,
)
from chargeghar_core.notifications.templates import Event, render
from chargeghar_core.settings import NotificationSettings
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from jose import jwt
from rentals_support import free_port, running_server


def message(channel: Channel, destination: str) -> OutgoingMessage:
    return OutgoingMessage(
        idempotency_key=f"rental_started:r1:u1:{channel.value}",
        event="rental_started",
        channel=channel,
        destination=destination,
        title="Rental started",
        body="Rental R1 started.",
        data={"rental_code": "R1"},
    )


async def test_fcm_exchanges_a_signed_jwt_and_sends_the_v1_message() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    seen: list[dict[str, Any]] = []
    app = FastAPI()

    @app.post("/token")
    async def token(request: Request) -> JSONResponse:
        form = await request.form()
        assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
        claims = jwt.decode(str(form["assertion"]), public, algorithms=["RS256"], audience=base + "/token")
        assert claims["iss"] == "fcm@demo.iam.gserviceaccount.com"
        assert claims["scope"] == "https://www.googleapis.com/auth/firebase.messaging"
        return JSONResponse({"access_token": "ya29.test", "expires_in": 3599, "token_type": "Bearer"})

    @app.post("/v1/projects/demo/messages:send")
    async def send(request: Request) -> JSONResponse:
        assert request.headers["authorization"] == "Bearer ya29.test"
        body = await request.json()
        seen.append(body)
        if body["message"]["token"] == "stale-token":
            return JSONResponse(
                {
                    "error": {
                        "code": 404,
                        "message": "Requested entity was not found.",
                        "status": "NOT_FOUND",
                        "details": [
                            {
                                "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                                "errorCode": "UNREGISTERED",
                            }
                        ],
                    }
                },
                status_code=404,
            )
        if body["message"]["token"] == "busy-token":
            return JSONResponse({"error": {"code": 503, "status": "UNAVAILABLE"}}, status_code=503)
        return JSONResponse({"name": "projects/demo/messages/0:1500415314455276%31bd1c9631bd1c96"})

    async with running_server(app) as base, httpx.AsyncClient(timeout=5) as http:
        account = {
            "type": "service_account",
            "project_id": "demo",
            "private_key_id": "k1",
            "private_key": pem,
            "client_email": "fcm@demo.iam.gserviceaccount.com",
            "token_uri": base + "/token",
        }
        fcm = FcmProvider(http, account, base_url=base)
        name = await fcm.send(message(Channel.PUSH, "device-token-1"))
        assert name.startswith("projects/demo/messages/")
        sent = seen[0]["message"]
        assert sent["token"] == "device-token-1"
        assert sent["notification"] == {"title": "Rental started", "body": "Rental R1 started."}
        assert sent["data"]["idempotency_key"] == "rental_started:r1:u1:push"
        assert all(isinstance(value, str) for value in sent["data"].values())  # FCM data is string-only
        with pytest.raises(DeliveryError) as stale:
            await fcm.send(message(Channel.PUSH, "stale-token"))
        assert stale.value.bad_destination and stale.value.permanent
        with pytest.raises(DeliveryError) as busy:
            await fcm.send(message(Channel.PUSH, "busy-token"))
        assert not busy.value.permanent


async def test_sparrow_sms_form_post_and_documented_answers() -> None:
    received: list[dict[str, str]] = []
    app = FastAPI()

    @app.post("/v2/sms/")
    async def sms(request: Request) -> JSONResponse:
        form = {key: str(value) for key, value in (await request.form()).items()}
        received.append(form)
        if form["to"] == "9800000000":
            return JSONResponse({"response_code": 1007, "response": "Invalid Receiver"}, status_code=403)
        if form["to"] == "9811111111":
            return JSONResponse({"response_code": 1013, "response": "Insufficient Credits"}, status_code=403)
        return JSONResponse(
            {"count": 1, "response_code": 200, "response": "1 mesages has been queued for delivery"}
        )

    async with running_server(app) as base, httpx.AsyncClient(timeout=5) as http:
        sparrow = SparrowSmsProvider(http, url=base + "/v2/sms/", token="tok", sender="ChargeGhar")
        await sparrow.send(message(Channel.SMS, "+9779812345678"))
        assert received[0] == {
            "token": "tok",
            "from": "ChargeGhar",
            "to": "9812345678",
            "text": "Rental R1 started.",
        }
        with pytest.raises(DeliveryError) as invalid:
            await sparrow.send(message(Channel.SMS, "+9779800000000"))
        assert invalid.value.bad_destination
        with pytest.raises(DeliveryError) as credits:
            await sparrow.send(message(Channel.SMS, "+9779811111111"))
        assert not credits.value.permanent


async def test_generic_http_sms_sends_the_idempotency_key() -> None:
    received: list[tuple[dict[str, Any], str, str]] = []
    app = FastAPI()

    @app.post("/send")
    async def send(request: Request) -> JSONResponse:
        body = await request.json()
        received.append((body, request.headers["idempotency-key"], request.headers["authorization"]))
        if body["to"] == "+9779700000000":
            return JSONResponse({"error": "down"}, status_code=503)
        return JSONResponse({"id": "m-1"}, status_code=202)

    async with running_server(app) as base, httpx.AsyncClient(timeout=5) as http:
        gateway = HttpSmsProvider(http, url=base + "/send", token="gw-token")
        assert await gateway.send(message(Channel.SMS, "+9779812345678")) == "m-1"
        body, key, auth = received[0]
        assert body["to"] == "+9779812345678" and key == body["idempotency_key"] and auth == "Bearer gw-token"
        with pytest.raises(DeliveryError) as down:
            await gateway.send(message(Channel.SMS, "+9779700000000"))
        assert not down.value.permanent


@asynccontextmanager
async def fake_smtp(refuse: str | None = None) -> AsyncIterator[tuple[int, list[str]]]:
    """A tiny SMTP responder (RFC 5321 happy path; 550 for the ``refuse`` recipient)."""
    messages: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake.smtp ESMTP\r\n")
        while line := await reader.readline():
            command = line.decode().strip()
            upper = command.upper()
            if upper.startswith(("EHLO", "HELO")):
                writer.write(b"250-fake.smtp\r\n250 8BITMIME\r\n")
            elif upper.startswith("RCPT") and refuse and refuse in command:
                writer.write(b"550 5.1.1 no such user\r\n")
            elif upper.startswith(("MAIL", "RCPT", "RSET", "NOOP")):
                writer.write(b"250 OK\r\n")
            elif upper == "DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                data = await reader.readuntil(b"\r\n.\r\n")
                messages.append(data.decode())
                writer.write(b"250 queued\r\n")
            elif upper == "QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            await writer.drain()
        writer.close()

    port = free_port()
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    try:
        yield port, messages
    finally:
        server.close()
        await server.wait_closed()


async def test_smtp_sends_plain_text_with_a_message_id_from_the_key() -> None:
    async with fake_smtp(refuse="gone@") as (port, messages):
        settings = NotificationSettings(smtp_host="127.0.0.1", smtp_port=port, smtp_start_tls=False)
        smtp = SmtpProvider(settings)
        await smtp.send(message(Channel.EMAIL, "sita@example.com"))
        assert len(messages) == 1
        assert "Subject: Rental started" in messages[0] and "To: sita@example.com" in messages[0]
        assert SmtpProvider.message_id("rental_started:r1:u1:email") in messages[0]
        with pytest.raises(DeliveryError) as refused:
            await smtp.send(message(Channel.EMAIL, "gone@example.com"))
        assert refused.value.permanent


@pytest.mark.parametrize("event", list(Event))
@pytest.mark.parametrize("language", ["en", "ne"])
def test_every_event_renders_in_both_languages(event: Event, language: str) -> None:
    payload = {
        "rental_code": "R7K2",
        "due_at": "2026-12-01T10:00:00+00:00",
        "amount_paisa": 12550,
        "change": "phone",
    }
    rendered = render(event.value, language, payload, code="123456")
    assert rendered.title and rendered.body and "{" not in rendered.body
    if event is Event.RENTAL_DUE_SOON:
        assert "15:45" in rendered.body  # Nepal time, UTC+05:45
    if event is Event.OTP_CODE:
        assert "123456" in rendered.body
