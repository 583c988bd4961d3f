"""Payment-provider adapters for wallet top-ups.

Both adapters follow Razorpay's documented scheme, so the app's checkout flow is the same for either:
- create an order for the amount (Razorpay: ``POST /v1/orders`` with HTTP basic auth key_id:key_secret);
- the checkout returns ``payment_id`` and ``signature`` = hex ``HMAC_SHA256(order_id + "|" + payment_id,
  key_secret)``, verified against the order id WE stored (never one sent back by the client);
- webhooks carry ``X-Razorpay-Signature`` = hex ``HMAC_SHA256(raw_body, webhook_secret)``, verified over the
  bytes received (never re-serialised JSON); ``payment.captured`` credits the wallet once per payment id.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import structlog

from chargeghar_core.kit.errors import CoreError
from chargeghar_core.rentals.settings import PaymentSettings

logger = structlog.get_logger(__name__)


class PaymentProviderError(CoreError):
    status_code = 502
    code = "PAYMENT_PROVIDER_ERROR"
    default_message = "The payment provider could not be reached or refused the request"


class UnknownPaymentProvider(CoreError):
    status_code = 400
    code = "UNKNOWN_PAYMENT_PROVIDER"
    default_message = "Unknown or disabled payment provider"


@dataclass(frozen=True, slots=True)
class ProviderOrder:
    order_id: str
    amount_paisa: int
    currency: str
    checkout: dict[str, Any]  # what the app's checkout needs (key id, order id, amount, ...)


@dataclass(frozen=True, slots=True)
class CapturedPayment:
    """A ``payment.captured`` webhook, reduced to what the wallet needs."""

    order_id: str
    payment_id: str
    amount_paisa: int
    currency: str


def hmac_sha256_hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def payment_signature(order_id: str, payment_id: str, key_secret: str) -> str:
    return hmac_sha256_hex(key_secret, f"{order_id}|{payment_id}".encode())


def _matches(expected: str, received: str | None) -> bool:
    if not received:
        return False
    return hmac.compare_digest(expected.encode("ascii"), received.strip().lower().encode("utf-8"))


def parse_captured_webhook(body: bytes) -> CapturedPayment | None:
    """The payment of a ``payment.captured`` (or ``order.paid``) event; None for any other event."""
    try:
        event = json.loads(body)
        if event.get("event") not in ("payment.captured", "order.paid"):
            return None
        entity = event["payload"]["payment"]["entity"]
        if entity.get("status") != "captured":
            return None
        return CapturedPayment(
            order_id=str(entity["order_id"]),
            payment_id=str(entity["id"]),
            amount_paisa=int(entity["amount"]),
            currency=str(entity.get("currency", "")),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CoreError("Malformed webhook body", status_code=400, code="INVALID_WEBHOOK") from exc


class PaymentProvider(Protocol):
    name: str

    async def create_order(self, *, amount_paisa: int, currency: str, receipt: str) -> ProviderOrder: ...

    def verify_payment(self, *, order_id: str, payment_id: str, signature: str | None) -> bool: ...

    def verify_webhook(self, body: bytes, signature: str | None) -> bool: ...


class SandboxProvider:
    """For development and tests: orders are created locally, signatures use the sandbox secret."""

    name = "sandbox"
    supports_refund = True  # refunds to a sandbox "original payment" are recorded locally

    def __init__(self, secret: str) -> None:
        self._secret = secret

    async def refund(self, provider_payment_id: str, amount_paisa: int, *, full: bool) -> str:
        return f"sandbox-refund:{provider_payment_id}:{amount_paisa}"

    async def create_order(self, *, amount_paisa: int, currency: str, receipt: str) -> ProviderOrder:
        order_id = f"sandbox_order_{uuid.uuid4().hex[:16]}"
        return ProviderOrder(
            order_id,
            amount_paisa,
            currency,
            {"provider": self.name, "order_id": order_id, "amount": amount_paisa},
        )

    def sign(self, order_id: str, payment_id: str) -> str:
        """What a sandbox checkout returns as its signature (used by dev tools and tests)."""
        return payment_signature(order_id, payment_id, self._secret)

    def verify_payment(self, *, order_id: str, payment_id: str, signature: str | None) -> bool:
        return _matches(payment_signature(order_id, payment_id, self._secret), signature)

    def verify_webhook(self, body: bytes, signature: str | None) -> bool:
        return _matches(hmac_sha256_hex(self._secret, body), signature)


class RazorpayProvider:
    name = "razorpay"

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        key_id: str,
        key_secret: str,
        webhook_secret: str,
        timeout_s: float = 10.0,
    ) -> None:
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._key_id = key_id
        self._key_secret = key_secret
        self._webhook_secret = webhook_secret
        self._timeout = httpx.Timeout(timeout_s, connect=3.0)

    async def create_order(self, *, amount_paisa: int, currency: str, receipt: str) -> ProviderOrder:
        try:
            response = await self._http.post(
                f"{self._base_url}/orders",
                json={"amount": amount_paisa, "currency": currency, "receipt": receipt[:40]},
                auth=(self._key_id, self._key_secret),
                timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            logger.error("razorpay_unreachable", error=repr(exc))
            raise PaymentProviderError() from exc
        if response.status_code != 200:
            description = _error_description(response)
            logger.error("razorpay_order_refused", status=response.status_code, description=description)
            raise PaymentProviderError(f"Razorpay refused the order: {description}")
        try:
            order = response.json()
            order_id = str(order["id"])
            amount = int(order["amount"])
        except (ValueError, KeyError, TypeError) as exc:
            raise PaymentProviderError("Unexpected answer from Razorpay") from exc
        if amount != amount_paisa:
            raise PaymentProviderError("Razorpay created an order for another amount")
        return ProviderOrder(
            order_id,
            amount,
            str(order.get("currency", currency)),
            {"provider": self.name, "key": self._key_id, "order_id": order_id, "amount": amount},
        )

    def verify_payment(self, *, order_id: str, payment_id: str, signature: str | None) -> bool:
        return _matches(payment_signature(order_id, payment_id, self._key_secret), signature)

    def verify_webhook(self, body: bytes, signature: str | None) -> bool:
        if not self._webhook_secret:
            return False
        return _matches(hmac_sha256_hex(self._webhook_secret, body), signature)


def _error_description(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["description"])[:200]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


class PaymentProviders:
    def __init__(self, providers: dict[str, PaymentProvider], default: str) -> None:
        self._providers = providers
        self.default = default

    def get(self, name: str | None) -> PaymentProvider:
        provider = self._providers.get(name or self.default)
        if provider is None:
            raise UnknownPaymentProvider(details={"provider": name})
        return provider

    def names(self) -> list[str]:
        return sorted(self._providers)


def build_providers(settings: PaymentSettings, http: httpx.AsyncClient) -> PaymentProviders:
    providers: dict[str, PaymentProvider] = {}
    if settings.sandbox_enabled:
        providers["sandbox"] = SandboxProvider(settings.sandbox_secret.get_secret_value())
    if settings.esewa_enabled or settings.khalti_enabled:
        from chargeghar_core.payments.nepal import EsewaProvider, KhaltiProvider

        if settings.esewa_enabled:
            providers["esewa"] = EsewaProvider(
                http,
                form_url=settings.esewa_form_url,
                status_url=settings.esewa_status_url,
                product_code=settings.esewa_product_code,
                secret_key=settings.esewa_secret_key.get_secret_value(),
                public_base_url=settings.public_base_url,
                timeout_s=settings.provider_timeout_s,
                retries=settings.provider_retries,
            )
        if settings.khalti_enabled:
            providers["khalti"] = KhaltiProvider(
                http,
                base_url=settings.khalti_base_url,
                secret_key=settings.khalti_secret_key.get_secret_value(),
                public_base_url=settings.public_base_url,
                timeout_s=settings.provider_timeout_s,
                retries=settings.provider_retries,
            )
    if settings.razorpay_key_id:
        providers["razorpay"] = RazorpayProvider(
            http,
            base_url=settings.razorpay_base_url,
            key_id=settings.razorpay_key_id,
            key_secret=settings.razorpay_key_secret.get_secret_value(),
            webhook_secret=settings.razorpay_webhook_secret.get_secret_value(),
            timeout_s=settings.razorpay_timeout_s,
        )
    return PaymentProviders(providers, settings.default_provider)
