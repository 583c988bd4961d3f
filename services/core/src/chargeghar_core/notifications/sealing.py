"""Keys of the login codes: keyed hashes (HMAC-SHA256) of destinations and codes, and the Fernet seal of a
code while it waits in the outbox. All derived from one secret, each for one purpose."""

from __future__ import annotations

import base64
import hashlib
import hmac

from cryptography.fernet import Fernet, InvalidToken

from chargeghar_core.settings import Settings


class OtpKeys:
    def __init__(self, settings: Settings) -> None:
        configured = settings.notifications.otp_secret
        base = (configured or settings.jwt.secret).get_secret_value().encode()
        self._lookup_key = hmac.new(base, b"chargeghar:otp:destination", hashlib.sha256).digest()
        self._code_key = hmac.new(base, b"chargeghar:otp:code", hashlib.sha256).digest()
        seal_key = hmac.new(base, b"chargeghar:otp:seal", hashlib.sha256).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(seal_key))

    def destination_hash(self, destination: str) -> str:
        return hmac.new(self._lookup_key, destination.encode(), hashlib.sha256).hexdigest()

    def code_hash(self, challenge_id: str, code: str) -> str:
        return hmac.new(self._code_key, f"{challenge_id}:{code}".encode(), hashlib.sha256).hexdigest()

    def code_matches(self, challenge_id: str, code: str, expected_hash: str) -> bool:
        return hmac.compare_digest(self.code_hash(challenge_id, code), expected_hash)

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def unseal(self, sealed: str) -> str | None:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:
            return None


def mask_destination(destination: str | None) -> str:
    """What logs may show of a phone number, e-mail address or device token."""
    if not destination:
        return "-"
    if "@" in destination:
        local, _, domain = destination.partition("@")
        return f"{local[:1]}***@{domain}"
    if destination.startswith("+") or destination.isdigit():
        return destination[:4] + "*" * max(0, len(destination) - 6) + destination[-2:]
    return destination[:6] + "…"
