"""Per-device MQTT credentials derived from a server secret (nothing stored, nothing to sync).

username = ``<prefix><imei>`` (``device_<imei>`` like the legacy system), password = the first 32 hex digits
of HMAC-SHA256(secret, imei). The broker asks the ingest to check them (EMQX HTTP authentication), so a
station can connect with what /api/iot/client/con handed it and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DeviceCredentials:
    client_id: str
    username: str
    password: str


def derive_credentials(secret: str, imei: str, *, username_prefix: str = "device_") -> DeviceCredentials:
    digest = hmac.new(secret.encode("utf-8"), imei.encode("utf-8"), hashlib.sha256).hexdigest()
    return DeviceCredentials(client_id=imei, username=f"{username_prefix}{imei}", password=digest[:32])


def check_credentials(
    secret: str, *, client_id: str, username: str, password: str, username_prefix: str = "device_"
) -> bool:
    """True when the triple is exactly what :func:`derive_credentials` gives the IMEI in the username."""
    if not username.startswith(username_prefix):
        return False
    imei = username[len(username_prefix) :]
    if not imei or client_id != imei:
        return False
    expected = derive_credentials(secret, imei, username_prefix=username_prefix)
    return hmac.compare_digest(expected.password.encode(), password.encode("utf-8"))
