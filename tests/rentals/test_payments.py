"""Top-ups through the sandbox and the Razorpay adapter (a local HTTP server stands in for
api.razorpay.com), signature checks with a published example, and exactly-once capture."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from chargeghar_core.payments.providers import (
    PaymentProviderError,
    RazorpayProvider,
    hmac_sha256_hex,
    payment_signature,
)
from chargeghar_core.rentals.settings import PaymentSettings
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from rentals_support import (
    FakeIngest,
    RentalsClient,
    add_renter,
    rental_settings,
    running_rentals_app,
    running_server,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

KEY_ID = "rzp_test_local"
KEY_SECRET = "local-key-secret"
WEBHOOK_SECRET = "local-webhook-secret"
SANDBOX_SECRET = "sandbox-test-secret"
CAPTURED_EXAMPLE = Path(__file__).parent / "data" / "razorpay_payment_captured.json"


def test_payment_signature_matches_a_published_checkout_example() -> None:
    # A test-mode checkout answer published with its (test) key secret in a public Razorpay integration
    # example (gist suhailvs/5a67cac1ccf1df8fcad8360d8c080b6d): signature = HMAC_SHA256(order|payment).
    assert (
        payment_signature("order_DLXae45SLMwqTZ", "pay_DLXbWV0fmyNBvt", "uEd4IHo8TrQMNwMP8qxLk7Gl")
        == "7fb8d5ba784b5503dfd70b20d9b7339255057c3f1e93f7c29b2600f3f8504bd7"
    )


class FakeRazorpay:
    """Answers POST /v1/orders like the documented Orders API (basic auth key_id:key_secret)."""

    def __init__(self) -> None:
        self.orders: list[dict[str, Any]] = []
        self.app = FastAPI()
        self.app.post("/v1/orders")(self.create_order)

    async def create_order(self, request: Request) -> JSONResponse:
        expected = "Basic " + base64.b64encode(f"{KEY_ID}:{KEY_SECRET}".encode()).decode()
        if request.headers.get("authorization") != expected:
            error = {"code": "BAD_REQUEST_ERROR", "description": "Authentication failed", "source": "NA"}
            return JSONResponse({"error": error}, status_code=401)
        body = await request.json()
        order = {
            "id": f"order_{uuid.uuid4().hex[:14]}",
            "entity": "order",
            "amount": body["amount"],
            "amount_paid": 0,
            "amount_due": body["amount"],
            "currency": body["currency"],
            "receipt": body.get("receipt"),
            "offer_id": None,
            "status": "created",
            "attempts": 0,
            "notes": [],
            "created_at": 1642662092,
        }
        self.orders.append(order)
        return JSONResponse(order)


@pytest.fixture
async def razorpay_url() -> AsyncIterator[tuple[str, FakeRazorpay]]:
    fake = FakeRazorpay()
    async with running_server(fake.app) as base_url:
        yield f"{base_url}/v1", fake


@pytest.fixture
async def payments_client(
    rentals_database_url: str,
    test_sessionmaker: async_sessionmaker[AsyncSession],
    fake_ingest: FakeIngest,
    razorpay_url: tuple[str, FakeRazorpay],
) -> AsyncIterator[RentalsClient]:
    payments = PaymentSettings(
        sandbox_secret=SANDBOX_SECRET,
        razorpay_base_url=razorpay_url[0],
        razorpay_key_id=KEY_ID,
        razorpay_key_secret=KEY_SECRET,
        razorpay_webhook_secret=WEBHOOK_SECRET,
    )
    async with running_rentals_app(
        rentals_database_url,
        rental_settings(fake_ingest.base_url),
        sessionmaker=test_sessionmaker,
        payment_settings=payments,
    ) as client:
        yield client


async def _wallet(client: RentalsClient, renter: uuid.UUID) -> int:
    response = await client.http.get("/api/wallet", headers=client.renter_headers(renter))
    return int(response.json()["data"]["balance_paisa"])


async def test_sandbox_topup_is_captured_once(payments_client: RentalsClient, session: AsyncSession) -> None:
    client = payments_client
    renter = await add_renter(session)
    headers = client.renter_headers(renter)
    created = await client.http.post("/api/payments/topups", json={"amount_paisa": 20_000}, headers=headers)
    assert created.status_code == 201, created.text
    payment = created.json()["data"]["payment"]
    order_id = created.json()["data"]["checkout"]["order_id"]
    assert payment["status"] == "CREATED" and payment["provider"] == "sandbox"

    bad = await client.http.post(
        f"/api/payments/topups/{payment['id']}/confirm",
        json={"provider_payment_id": "pay_1", "signature": "0" * 64},
        headers=headers,
    )
    assert (bad.status_code, bad.json()["error"]) == (400, "INVALID_PAYMENT_SIGNATURE")

    confirm = {
        "provider_payment_id": "pay_1",
        "signature": payment_signature(order_id, "pay_1", SANDBOX_SECRET),
    }
    first = await client.http.post(
        f"/api/payments/topups/{payment['id']}/confirm", json=confirm, headers=headers
    )
    second = await client.http.post(
        f"/api/payments/topups/{payment['id']}/confirm", json=confirm, headers=headers
    )
    assert first.json()["data"]["status"] == second.json()["data"]["status"] == "CAPTURED"
    assert await _wallet(client, renter) == 20_000

    history = await client.http.get("/api/payments", headers=headers)
    assert [p["id"] for p in history.json()["data"]["items"]] == [payment["id"]]
    ledger = await client.http.get("/api/wallet/ledger", headers=headers)
    assert [(e["kind"], e["amount_paisa"]) for e in ledger.json()["data"]["items"]] == [("TOPUP", 20_000)]

    other = await add_renter(session)
    stolen = await client.http.post(
        f"/api/payments/topups/{payment['id']}/confirm", json=confirm, headers=client.renter_headers(other)
    )
    assert stolen.status_code == 404


async def test_razorpay_order_and_webhook_credit_the_wallet_once(
    payments_client: RentalsClient, session: AsyncSession, razorpay_url: tuple[str, FakeRazorpay]
) -> None:
    client = payments_client
    renter = await add_renter(session)
    headers = client.renter_headers(renter)
    created = await client.http.post(
        "/api/payments/topups", json={"amount_paisa": 50_000, "provider": "razorpay"}, headers=headers
    )
    assert created.status_code == 201, created.text
    checkout = created.json()["data"]["checkout"]
    assert checkout["key"] == KEY_ID and checkout["amount"] == 50_000
    assert razorpay_url[1].orders[0]["id"] == checkout["order_id"]
    assert razorpay_url[1].orders[0]["currency"] == "INR"

    raw = CAPTURED_EXAMPLE.read_text().replace("__ORDER_ID__", checkout["order_id"]).encode()
    signature = hmac_sha256_hex(WEBHOOK_SECRET, raw)
    url = "/api/payments/webhooks/razorpay"

    forged = await client.http.post(url, content=raw, headers={"X-Razorpay-Signature": "f" * 64})
    assert forged.status_code == 403
    # A re-serialised body is not what was signed: verification is over the raw bytes only.
    reserialised = json.dumps(json.loads(raw)).encode()
    assert (
        await client.http.post(url, content=reserialised, headers={"X-Razorpay-Signature": signature})
    ).status_code == 403

    for _ in range(3):  # Razorpay retries deliveries
        delivered = await client.http.post(url, content=raw, headers={"X-Razorpay-Signature": signature})
        assert delivered.status_code == 200, delivered.text
        assert delivered.json()["data"]["applied"] is True
    assert await _wallet(client, renter) == 50_000

    # The checkout's own confirmation arriving after the webhook changes nothing either.
    payment_id = created.json()["data"]["payment"]["id"]
    confirm = {
        "provider_payment_id": "pay_DESp9bgForNoUd",
        "signature": payment_signature(checkout["order_id"], "pay_DESp9bgForNoUd", KEY_SECRET),
    }
    late = await client.http.post(f"/api/payments/topups/{payment_id}/confirm", json=confirm, headers=headers)
    assert late.json()["data"]["provider_payment_id"] == "pay_DESp9bgForNoUd"
    assert await _wallet(client, renter) == 50_000


async def test_razorpay_adapter_reports_a_refused_order(razorpay_url: tuple[str, FakeRazorpay]) -> None:
    async with httpx.AsyncClient() as http:
        provider = RazorpayProvider(
            http, base_url=razorpay_url[0], key_id=KEY_ID, key_secret="wrong", webhook_secret=WEBHOOK_SECRET
        )
        with pytest.raises(PaymentProviderError, match="Authentication failed"):
            await provider.create_order(amount_paisa=1000, currency="INR", receipt="r1")
        assert provider.verify_webhook(b"{}", hmac_sha256_hex(WEBHOOK_SECRET, b"{}"))
        assert not provider.verify_webhook(b"{}", None)


async def test_topup_limits_and_unknown_provider(
    payments_client: RentalsClient, session: AsyncSession
) -> None:
    headers = payments_client.renter_headers(await add_renter(session))
    small = await payments_client.http.post("/api/payments/topups", json={"amount_paisa": 1}, headers=headers)
    assert (small.status_code, small.json()["error"]) == (400, "AMOUNT_OUT_OF_RANGE")
    unknown = await payments_client.http.post(
        "/api/payments/topups", json={"amount_paisa": 5000, "provider": "paypal"}, headers=headers
    )
    assert (unknown.status_code, unknown.json()["error"]) == (400, "UNKNOWN_PAYMENT_PROVIDER")
