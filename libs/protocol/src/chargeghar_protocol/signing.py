"""Signatures used on the wire (pure functions, standard library only).

Two unrelated schemes live here:

* the device-side MD5 "sign" (protocol.md §2.7): an un-keyed digest over sorted ``key=value`` pairs that the
  stations attach to their HTTP calls. It proves nothing about the caller (there is no secret), it only
  detects garbled parameters;
* the ingest↔core request signature (contract.md §2 and §3): base64 HMAC-SHA256 over the raw body bytes
  followed by the ASCII ``X-Timestamp`` value, with a ±300 s freshness window.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence

__all__ = [
    "DEFAULT_WINDOW_S",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "InvalidSignature",
    "InvalidTimestamp",
    "MissingSignatureHeaders",
    "SignatureError",
    "device_sign",
    "device_sign_string",
    "request_signature",
    "signed_headers",
    "verify_device_sign",
    "verify_request_signature",
]

TIMESTAMP_HEADER = "X-Timestamp"
SIGNATURE_HEADER = "X-Signature"
DEFAULT_WINDOW_S = 300


# --------------------------------------------------------------------------- device MD5 sign (§2.7)


def device_sign_string(params: Mapping[str, object | None]) -> str:
    """The exact string the device hashes: sorted ``key=value`` renderings joined with ``|``.

    The *rendered* strings are sorted (not the keys), by UTF-16 code unit like Java's ``String.compareTo``;
    for the ASCII keys the devices use this equals Python's code-point order.
    """
    rendered = [f"{key}={_render_value(value)}" for key, value in params.items() if key != "sign"]
    rendered.sort(key=_java_string_sort_key)
    return "|".join(rendered)


def device_sign(params: Mapping[str, object | None]) -> str:
    """Lowercase hex MD5 of :func:`device_sign_string` (the value of the device's ``sign`` parameter)."""
    digest = hashlib.md5(device_sign_string(params).encode("utf-8"), usedforsecurity=False)
    return digest.hexdigest()


def verify_device_sign(params: Mapping[str, object | None], sign: str | None) -> bool:
    """True when ``sign`` matches the parameters (hex compared case-insensitively, in constant time)."""
    if not sign:
        return False
    expected = device_sign(params)
    return hmac.compare_digest(expected.encode("ascii"), sign.strip().lower().encode("utf-8"))


def _render_value(value: object | None) -> str:
    # Java's BeanToMapUtils turns null into "" so the key still appears (e.g. "simMobile=").
    if value is None:
        return ""
    if isinstance(value, bool):
        # Java renders booleans lowercase; Python's str() would give "True".
        return "true" if value else "false"
    return str(value)


def _java_string_sort_key(text: str) -> bytes:
    # UTF-16-BE bytes compare exactly like Java's code-unit order, including characters outside the BMP
    # (surrogates 0xD800.. sort below 0xE000..0xFFFF, unlike code points).
    return text.encode("utf-16-be", errors="surrogatepass")


# --------------------------------------------------------------------------- request HMAC (contract §2)


class SignatureError(Exception):
    """A request failed the HMAC check; ``code`` and ``http_status`` are what the endpoint answers."""

    code: str = "INVALID_SIGNATURE"
    http_status: int = 403
    default_message: str = "Invalid request signature"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.default_message)

    @property
    def message(self) -> str:
        return str(self)


class MissingSignatureHeaders(SignatureError):
    code = "MISSING_HEADERS"
    http_status = 403
    default_message = "Missing X-Timestamp or X-Signature header"


class InvalidTimestamp(SignatureError):
    code = "INVALID_TIMESTAMP"
    http_status = 400
    default_message = "X-Timestamp must be an integer number of unix seconds"


class InvalidSignature(SignatureError):
    code = "INVALID_SIGNATURE"
    http_status = 403
    default_message = "Invalid request signature"


def request_signature(secret: str, body: bytes, timestamp: str | int) -> str:
    """``base64(HMAC-SHA256(secret, body + ascii(timestamp)))``, standard alphabet with padding."""
    message = bytes(body) + str(timestamp).encode("ascii")
    mac = hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()
    return base64.b64encode(mac).decode("ascii")


def signed_headers(secret: str, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
    """The two headers a caller adds to a signed request (timestamp defaults to now)."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: request_signature(secret, body, ts)}


def verify_request_signature(
    secret: str | Sequence[str],
    body: bytes,
    timestamp_header: str | None,
    signature_header: str | None,
    *,
    now: float | None = None,
    window_s: int = DEFAULT_WINDOW_S,
) -> None:
    """Check a signed request; return ``None`` when valid, else raise a :class:`SignatureError` subclass.

    ``secret`` may be a sequence of secrets so that a key rotation can accept the old and the new one for a
    while. The MAC is computed over ``body`` exactly as received (never a re-serialised JSON) and the
    header's timestamp text exactly as sent.
    """
    if not timestamp_header or not signature_header:
        raise MissingSignatureHeaders()
    timestamp_text = timestamp_header.strip()
    timestamp = _parse_unix_seconds(timestamp_text)

    current = time.time() if now is None else now
    if abs(current - timestamp) > window_s:
        # Same answer as a wrong MAC on purpose: a replay must not learn anything about the clock check.
        raise InvalidSignature("Request timestamp outside the allowed window")

    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets:
        raise InvalidSignature("No signing secret configured")
    received = signature_header.strip().encode("utf-8")
    matched = False
    for candidate in secrets:
        expected = request_signature(candidate, body, timestamp_text).encode("ascii")
        # No early exit: every configured secret is tried so timing does not reveal which one matched.
        matched |= hmac.compare_digest(expected, received)
    if not matched:
        raise InvalidSignature()


def _parse_unix_seconds(text: str) -> int:
    # Only plain decimal integers (optional leading minus); int() alone would accept "1_000" or " +5".
    digits = text[1:] if text.startswith("-") else text
    if not digits or not digits.isascii() or not digits.isdigit():
        raise InvalidTimestamp()
    return int(text)
