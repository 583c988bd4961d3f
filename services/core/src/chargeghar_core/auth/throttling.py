"""The login throttle around staff and renter logins (see :mod:`chargeghar_core.kit.throttle`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import Request
from redis.asyncio import Redis

from chargeghar_core.kit.errors import Unauthorized
from chargeghar_core.kit.netaddr import client_address, parse_networks
from chargeghar_core.kit.throttle import LoginThrottle, ThrottleLimits
from chargeghar_core.settings import Settings

T = TypeVar("T")


def login_throttle(settings: Settings, redis: Redis | None = None) -> LoginThrottle:
    limits = ThrottleLimits(
        max_failures_per_account=settings.login.max_failures_per_account,
        max_failures_per_address=settings.login.max_failures_per_address,
        window_s=settings.login.window_s,
    )
    return LoginThrottle(
        limits,
        redis=redis,
        prefix=settings.redis.prefix,
        outage_retry_s=settings.redis.outage_retry_s,
    )


def request_address(request: Request) -> str | None:
    settings: Settings = request.app.state.settings
    return client_address(
        request,
        trust_forwarded_for=settings.internal.trust_forwarded_for,
        trusted_proxies=parse_networks(settings.internal.trusted_proxies),
    )


async def throttled_login(
    request: Request, scope: str, account: str, attempt: Callable[[], Awaitable[T]]
) -> T:
    """Run ``attempt`` (a login) unless the account or the address is throttled; count a 401 as a failure.

    ``scope``: "staff" or "renter" (separate account counters, one address counter)."""
    throttle: LoginThrottle = request.app.state.login_throttle
    address = request_address(request)
    await throttle.check(scope, account, address)
    try:
        result = await attempt()
    except Unauthorized:
        await throttle.failed(scope, account, address)
        raise
    await throttle.succeeded(scope, account)
    return result
