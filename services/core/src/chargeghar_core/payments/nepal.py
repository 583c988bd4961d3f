"""eSewa (ePay v2) and Khalti (KPG-2) adapters: redirect checkouts confirmed by a server-side lookup.

Neither provider signs a server-to-server webhook the way Razorpay does, so a top-up is credited only after
OUR server asked the provider (eSewa status check API, Khalti ``epayment/lookup``) and it answered
"complete" for the amount we stored. The renter's redirect (eSewa's signed base64 ``data``, Khalti's
``pidx`` query) only tells us *which* payment to look up; the re-check job does the same for redirects that
never arrive. Sequences of calls: docs/operations.md, "Payments".

eSewa (developer.esewa.com.np, "Epay-V2"):
- the app POSTs a form to ``.../api/epay/main/v2/form`` with amount, tax_amount, total_amount (rupees),
  transaction_uuid (our payment id), product_code, product_service_charge, product_delivery_charge,
  success_url, failure_url, signed_field_names = ``total_amount,transaction_uuid,product_code`` and
  signature = base64(HMAC_SHA256(secret, "total_amount=..,transaction_uuid=..,product_code=..""));
- success redirects to success_url with ``?data=<base64 JSON>``; its ``signature`` covers its own
  ``signed_field_names`` the same way and is verified before anything else is read from it;
- ``GET .../api/epay/transaction/status/?product_code=&total_amount=&transaction_uuid=`` answers
  COMPLETE (credit; ``ref_id`` is eSewa's reference), PENDING, AMBIGUOUS, NOT_FOUND, CANCELED,
  FULL_REFUND, PARTIAL_REFUND. ePay v2 documents no refund API.

Khalti (docs.khalti.com, "Web Checkout (KPG-2)"), ``Authorization: Key <secret>``:
- ``POST {base}/epayment/initiate/`` {return_url, website_url, amount (paisa), purchase_order_id (our
  payment id), purchase_order_name} → {pidx, payment_url, expires_at, expires_in};
- the renter comes back to return_url with ``?pidx=..&status=..`` (not trusted);
- ``POST {base}/epayment/lookup/`` {pidx} → {pidx, total_amount, status, transaction_id, fee, refunded};
  only ``Completed`` is a success; Expired/User canceled (HTTP 400 with the same body) are failures;
- refunds: ``POST {root}/merchant-transaction/{transaction_id}/refund/`` ({amount} for a partial one).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, Protocol

import httpx
import structlog

from chargeghar_core.kit.errors import CoreError
from chargeghar_core.payments.providers import PaymentProviderError, ProviderOrder

logger = structlog.get_logger(__name__)

NPR = "NPR"
ESEWA_FORM_SIGNED_FIELDS = ("total_amount", "transaction_uuid", "product_code")


class InvalidCallback(CoreError):
    status_code = 400
    code = "INVALID_CALLBACK"
    default_message = "The provider's redirect data is malformed or its signature does not verify"


class LookupState(StrEnum):
    COMPLETE = "COMPLETE"  # paid: credit the wallet
    PENDING = "PENDING"  # not paid yet: keep waiting, expire later
    HOLD = "HOLD"  # in doubt at the provider (eSewa AMBIGUOUS, Khalti Pending): never expired by us
    FAILED = "FAILED"  # will never be paid (cancelled, expired, refunded, not found)


@dataclass(frozen=True, slots=True)
class ProviderStatus:
    state: LookupState
    raw_status: str
    provider_payment_id: str | None = None
    amount_paisa: int | None = None


@dataclass(frozen=True, slots=True)
class LookupRef:
    """What a lookup needs of a stored payment."""

    payment_id: uuid.UUID
    order_id: str
    amount_paisa: int


class LookupProvider(Protocol):
    """A provider whose payments are confirmed by asking it (server to server) before crediting."""

    name: str
    supports_refund: bool

    async def lookup(self, ref: LookupRef) -> ProviderStatus: ...

    async def refund(self, provider_payment_id: str, amount_paisa: int, *, full: bool) -> str: ...


# ------------------------------------------------------------------------------------------------ amounts


def paisa_to_rupees(amount_paisa: int) -> str:
    """Exact rupee string for eSewa: 10000 → "100", 10050 → "100.5", 10005 → "100.05"."""
    if amount_paisa < 0:
        raise ValueError("negative amount")
    rupees = (Decimal(amount_paisa) / 100).normalize()
    return f"{rupees:f}"


def rupees_to_paisa(value: object) -> int:
    """Parse eSewa's rupee amount (``100``, ``100.0``, ``"1000.0"``) into paisa; fractions of a paisa fail."""
    try:
        paisa = Decimal(str(value).strip()) * 100
    except (InvalidOperation, ValueError) as exc:
        raise ValueError(f"not an amount: {value!r}") from exc
    if paisa != paisa.to_integral_value() or paisa < 0:
        raise ValueError(f"not a whole number of paisa: {value!r}")
    return int(paisa)


# ------------------------------------------------------------------------------------------------ HTTP


async def call_with_retries(
    send: Any, *, retries: int, retry_on_status: bool, what: str, backoff_s: float = 0.2
) -> httpx.Response:
    """Send ``send()`` with up to ``retries`` extra attempts.

    Retried: connection failures (the request never reached the provider) always; timeouts and 5xx only when
    ``retry_on_status`` — for calls that are idempotent by our payment id (lookups, status checks).
    """
    attempt = 0
    while True:
        try:
            response: httpx.Response = await send()
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            error: Exception = exc
        except httpx.HTTPError as exc:
            if not retry_on_status:
                logger.error("provider_unreachable", call=what, error=repr(exc))
                raise PaymentProviderError() from exc
            error = exc
        else:
            if response.status_code < 500 or not retry_on_status:
                return response
            error = PaymentProviderError(f"{what}: HTTP {response.status_code}")
        if attempt >= retries:
            logger.error("provider_unreachable", call=what, error=repr(error), attempts=attempt + 1)
            raise PaymentProviderError() from error
        attempt += 1
        await asyncio.sleep(backoff_s * attempt)


# ------------------------------------------------------------------------------------------------ eSewa


def esewa_signature(secret: str, fields: Mapping[str, object], signed_field_names: str) -> str:
    """base64(HMAC_SHA256(secret, "name=value,name=value,...")) over ``signed_field_names``, in its order."""
    message = ",".join(f"{name}={fields[name]}" for name in signed_field_names.split(","))
    digest = hmac.new(secret.encode("utf-8"), message.encode("utf-8"), "sha256").digest()
    return base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True, slots=True)
class EsewaCallback:
    transaction_uuid: str
    status: str
    total_amount_paisa: int
    transaction_code: str
    product_code: str


def decode_esewa_callback(data: str, secret: str) -> EsewaCallback:
    """Decode and verify the ``data`` eSewa appends to success_url. Raises :class:`InvalidCallback`."""
    try:
        padded = data.strip() + "=" * (-len(data.strip()) % 4)
        raw = base64.b64decode(padded, altchars=None, validate=False)
        # Keep numbers as the text eSewa signed ("1000.0" stays "1000.0").
        fields = json.loads(raw, parse_float=str, parse_int=str)
        if not isinstance(fields, dict):
            raise ValueError("not an object")
        signed = str(fields["signed_field_names"])
        received = str(fields["signature"])
        names = signed.split(",")
        if not {"transaction_uuid", "total_amount", "status"} <= set(names):
            raise ValueError("required fields are not signed")
        expected = esewa_signature(secret, fields, signed)
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidCallback() from exc
    if not hmac.compare_digest(expected.encode("ascii"), received.encode("utf-8")):
        raise InvalidCallback("The eSewa signature does not match")
    try:
        amount = rupees_to_paisa(fields["total_amount"])
    except ValueError as exc:
        raise InvalidCallback() from exc
    return EsewaCallback(
        transaction_uuid=str(fields["transaction_uuid"]),
        status=str(fields["status"]),
        total_amount_paisa=amount,
        transaction_code=str(fields.get("transaction_code", "")),
        product_code=str(fields.get("product_code", "")),
    )


ESEWA_STATES = {
    "COMPLETE": LookupState.COMPLETE,
    "PENDING": LookupState.PENDING,
    "AMBIGUOUS": LookupState.HOLD,
    "NOT_FOUND": LookupState.FAILED,
    "CANCELED": LookupState.FAILED,
    "FULL_REFUND": LookupState.FAILED,
    "PARTIAL_REFUND": LookupState.HOLD,
}


class EsewaProvider:
    name = "esewa"
    supports_refund = False  # ePay v2 documents no refund API: approved top-up refunds go to the wallet only

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        form_url: str,
        status_url: str,
        product_code: str,
        secret_key: str,
        public_base_url: str,
        timeout_s: float = 10.0,
        retries: int = 2,
    ) -> None:
        self._http = http
        self.form_url = form_url
        self._status_url = status_url
        self.product_code = product_code
        self._secret = secret_key
        self._public = public_base_url.rstrip("/")
        self._timeout = httpx.Timeout(timeout_s, connect=min(3.0, timeout_s))
        self._retries = retries

    async def create_order(self, *, amount_paisa: int, currency: str, receipt: str) -> ProviderOrder:
        """No call to eSewa: the signed form is the order; transaction_uuid is our payment id."""
        transaction_uuid = str(uuid.UUID(receipt))
        total = paisa_to_rupees(amount_paisa)
        fields = {
            "amount": total,
            "tax_amount": "0",
            "total_amount": total,
            "transaction_uuid": transaction_uuid,
            "product_code": self.product_code,
            "product_service_charge": "0",
            "product_delivery_charge": "0",
            "success_url": f"{self._public}/api/payments/callbacks/esewa",
            "failure_url": f"{self._public}/api/payments/callbacks/esewa/failure/{transaction_uuid}",
            "signed_field_names": ",".join(ESEWA_FORM_SIGNED_FIELDS),
        }
        fields["signature"] = self.sign(fields)
        checkout = {"provider": self.name, "method": "POST", "url": self.form_url, "form": fields}
        return ProviderOrder(transaction_uuid, amount_paisa, NPR, checkout)

    def sign(self, fields: Mapping[str, object], signed_field_names: str | None = None) -> str:
        return esewa_signature(self._secret, fields, signed_field_names or ",".join(ESEWA_FORM_SIGNED_FIELDS))

    def decode_callback(self, data: str) -> EsewaCallback:
        callback = decode_esewa_callback(data, self._secret)
        if callback.product_code and callback.product_code != self.product_code:
            raise InvalidCallback("The eSewa product code is not ours")
        return callback

    async def lookup(self, ref: LookupRef) -> ProviderStatus:
        params = {
            "product_code": self.product_code,
            "total_amount": paisa_to_rupees(ref.amount_paisa),
            "transaction_uuid": ref.order_id,
        }
        response = await call_with_retries(
            lambda: self._http.get(self._status_url, params=params, timeout=self._timeout),
            retries=self._retries,
            retry_on_status=True,
            what="esewa_status",
        )
        try:
            body = response.json()
            if "status" not in body:  # {"code": 0, "error_message": "Service is currently unavailable"}
                raise PaymentProviderError(f"eSewa status check: {str(body.get('error_message'))[:150]}")
            raw_status = str(body["status"])
            amount = rupees_to_paisa(body["total_amount"])
            transaction_uuid = str(body["transaction_uuid"])
            ref_id = body.get("ref_id")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PaymentProviderError("Unexpected answer from eSewa") from exc
        if transaction_uuid != ref.order_id:
            raise PaymentProviderError("eSewa answered for another transaction")
        state = ESEWA_STATES.get(raw_status, LookupState.HOLD)
        return ProviderStatus(state, raw_status, str(ref_id) if ref_id else None, amount)

    async def refund(self, provider_payment_id: str, amount_paisa: int, *, full: bool) -> str:
        raise PaymentProviderError("eSewa ePay v2 has no refund API")

    # The Razorpay-style confirm/webhook paths do not apply: eSewa payments are confirmed by lookup only.
    def verify_payment(self, *, order_id: str, payment_id: str, signature: str | None) -> bool:
        return False

    def verify_webhook(self, body: bytes, signature: str | None) -> bool:
        return False


# ------------------------------------------------------------------------------------------------ Khalti


KHALTI_STATES = {
    "Completed": LookupState.COMPLETE,
    "Initiated": LookupState.PENDING,
    "Pending": LookupState.HOLD,  # "Hold, do not provide service. And contact Khalti team."
    "Expired": LookupState.FAILED,
    "User canceled": LookupState.FAILED,
    "Refunded": LookupState.FAILED,
    "Partially Refunded": LookupState.HOLD,
}


class KhaltiProvider:
    name = "khalti"
    supports_refund = True

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        secret_key: str,
        public_base_url: str,
        timeout_s: float = 10.0,
        retries: int = 2,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        # The refund API lives beside v2: https://khalti.com/api/merchant-transaction/<id>/refund/
        self._root = self._base.removesuffix("/v2")
        self._secret = secret_key
        self._public = public_base_url.rstrip("/")
        self._timeout = httpx.Timeout(timeout_s, connect=min(3.0, timeout_s))
        self._retries = retries

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Key {self._secret}"}

    async def create_order(self, *, amount_paisa: int, currency: str, receipt: str) -> ProviderOrder:
        payment_id = str(uuid.UUID(receipt))
        body = {
            "return_url": f"{self._public}/api/payments/callbacks/khalti",
            "website_url": self._public,
            "amount": amount_paisa,
            "purchase_order_id": payment_id,
            "purchase_order_name": "ChargeGhar wallet top-up",
        }
        # Not retried after the request may have reached Khalti: a second initiate would make a second pidx.
        response = await call_with_retries(
            lambda: self._http.post(
                f"{self._base}/epayment/initiate/", json=body, headers=self._headers(), timeout=self._timeout
            ),
            retries=self._retries,
            retry_on_status=False,
            what="khalti_initiate",
        )
        if response.status_code != 200:
            detail = _khalti_error(response)
            logger.error("khalti_initiate_refused", status=response.status_code, detail=detail)
            raise PaymentProviderError(f"Khalti refused the payment: {detail}")
        try:
            answer = response.json()
            pidx = str(answer["pidx"])
            payment_url = str(answer["payment_url"])
        except (ValueError, KeyError, TypeError) as exc:
            raise PaymentProviderError("Unexpected answer from Khalti") from exc
        checkout = {
            "provider": self.name,
            "method": "GET",
            "url": payment_url,
            "pidx": pidx,
            "expires_at": answer.get("expires_at"),
        }
        return ProviderOrder(pidx, amount_paisa, NPR, checkout)

    async def lookup(self, ref: LookupRef) -> ProviderStatus:
        response = await call_with_retries(
            lambda: self._http.post(
                f"{self._base}/epayment/lookup/",
                json={"pidx": ref.order_id},
                headers=self._headers(),
                timeout=self._timeout,
            ),
            retries=self._retries,
            retry_on_status=True,
            what="khalti_lookup",
        )
        try:
            body = response.json()
        except ValueError as exc:
            raise PaymentProviderError("Unexpected answer from Khalti") from exc
        if not isinstance(body, dict) or "status" not in body:
            # 401 "Invalid token.", 400/404 "Not found." for an unknown pidx: nothing we can decide on.
            raise PaymentProviderError(f"Khalti lookup failed: {_khalti_error(response)}")
        try:
            raw_status = str(body["status"])
            amount = int(body["total_amount"])
            if str(body.get("pidx", ref.order_id)) != ref.order_id:
                raise PaymentProviderError("Khalti answered for another payment")
        except (KeyError, TypeError, ValueError) as exc:
            raise PaymentProviderError("Unexpected answer from Khalti") from exc
        transaction_id = body.get("transaction_id")
        state = KHALTI_STATES.get(raw_status, LookupState.HOLD)
        return ProviderStatus(state, raw_status, str(transaction_id) if transaction_id else None, amount)

    async def refund(self, provider_payment_id: str, amount_paisa: int, *, full: bool) -> str:
        body: dict[str, Any] = {} if full else {"amount": amount_paisa}
        # Only connection failures are retried: a refund that reached Khalti must not be sent twice.
        response = await call_with_retries(
            lambda: self._http.post(
                f"{self._root}/merchant-transaction/{provider_payment_id}/refund/",
                json=body,
                headers=self._headers(),
                timeout=self._timeout,
            ),
            retries=self._retries,
            retry_on_status=False,
            what="khalti_refund",
        )
        if response.status_code != 200:
            detail = _khalti_error(response)
            logger.error("khalti_refund_refused", status=response.status_code, detail=detail)
            raise PaymentProviderError(f"Khalti refused the refund: {detail}")
        return f"khalti:{provider_payment_id}"

    def verify_payment(self, *, order_id: str, payment_id: str, signature: str | None) -> bool:
        return False

    def verify_webhook(self, body: bytes, signature: str | None) -> bool:
        return False


def _khalti_error(response: httpx.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict):
            return str(body.get("detail") or {k: v for k, v in body.items() if k != "error_key"})[:200]
    except ValueError:
        pass
    return f"HTTP {response.status_code}"
