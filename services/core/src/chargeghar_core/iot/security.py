"""The gates of the internal endpoint, in contract order after the bearer token: caller IP allow-list,
per-caller rate limit, then the HMAC signature over the raw body bytes."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from chargeghar_protocol.contract import ErrorCode
from chargeghar_protocol.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    verify_request_signature,
)
from fastapi import Request

from chargeghar_core.auth.tokens import TokenClaims
from chargeghar_core.kit.errors import CoreError, Forbidden, RateLimited
from chargeghar_core.kit.netaddr import client_address, parse_networks
from chargeghar_core.kit.ratelimit import RateLimiter
from chargeghar_core.settings import Settings

RATE_WINDOW_S = 60


class InternalGate:
    def __init__(self, settings: Settings, limiter: RateLimiter) -> None:
        self._networks = [
            ipaddress.ip_network(cidr, strict=False) for cidr in settings.internal.allowed_cidrs
        ]
        self._trust_forwarded_for = settings.internal.trust_forwarded_for
        self._trusted_proxies = parse_networks(settings.internal.trusted_proxies)
        self._rate_limit = settings.internal.rate_limit_per_minute
        self._secrets = settings.hmac.accepted_secrets()
        self._window_s = settings.hmac.window_s
        self._limiter = limiter

    def caller_ip(self, request: Request) -> str | None:
        # Never the client-written leftmost X-Forwarded-For entry: only hops our proxies added count.
        return client_address(
            request, trust_forwarded_for=self._trust_forwarded_for, trusted_proxies=self._trusted_proxies
        )

    def check_ip(self, request: Request) -> None:
        if not self._networks:
            return
        host = self.caller_ip(request)
        try:
            address = ipaddress.ip_address(host) if host else None
        except ValueError:
            address = None
        if address is None or not any(address in network for network in self._networks):
            raise Forbidden(f"Caller IP {host} is not allowed", code=ErrorCode.IP_NOT_ALLOWED.value)

    async def check_rate(self, caller: TokenClaims) -> None:
        if self._rate_limit <= 0:
            return
        decision = await self._limiter.hit(f"internal:{caller.user_id}", self._rate_limit, RATE_WINDOW_S)
        if not decision.allowed:
            raise RateLimited(decision.retry_after_s)

    def verify_signature(self, body: bytes, headers: Mapping[str, str]) -> str:
        """Raise the contract's error for a bad signature; return the signature value (the legacy
        idempotency key)."""
        signature = headers.get(SIGNATURE_HEADER)
        try:
            verify_request_signature(
                self._secrets, body, headers.get(TIMESTAMP_HEADER), signature, window_s=self._window_s
            )
        except SignatureError as exc:
            raise CoreError(exc.message, code=exc.code, status_code=exc.http_status) from exc
        assert signature is not None
        return signature.strip()
