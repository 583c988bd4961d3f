"""Who is calling: bearer-token dependencies for the staff and internal endpoints.

Access tokens are trusted for their short lifetime without a database read (the internal endpoint is the
hot path); revocation acts on refresh tokens.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from chargeghar_core.auth.models import Role
from chargeghar_core.auth.tokens import TokenClaims, TokenService
from chargeghar_core.kit.errors import Forbidden, Unauthorized
from chargeghar_core.kit.openapi import BEARER_SCHEME, answers

# auto_error=False: a missing token is our 401 envelope, not FastAPI's bare 403.
_bearer = HTTPBearer(auto_error=False, scheme_name=BEARER_SCHEME)

INTERNAL_ROLES = frozenset({Role.ADMIN, Role.STAFF, Role.SERVICE})
STAFF_ROLES = frozenset({Role.ADMIN, Role.STAFF})
# Viewers read: every admin GET answers them; every action (POST/PATCH/PUT/DELETE) is a 403.
READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def get_token_service(request: Request) -> TokenService:
    service: TokenService = request.app.state.tokens
    return service


@answers((401, "UNAUTHORIZED", "Missing, malformed, expired or revoked bearer token; log in again"))
async def current_claims(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> TokenClaims:
    if credentials is None or not credentials.credentials:
        raise Unauthorized("Missing bearer token")
    return get_token_service(request).decode(credentials.credentials, "access")


@answers((403, "FORBIDDEN", "The token is not a staff or service account's"))
async def internal_caller(claims: Annotated[TokenClaims, Depends(current_claims)]) -> TokenClaims:
    if claims.role not in INTERNAL_ROLES:
        raise Forbidden("Staff or service account required")
    return claims


@answers(
    (
        403,
        "FORBIDDEN",
        "The token is not a staff account's (admin or staff role; the read-only viewer role may only read)",
    )
)
async def staff_user(
    request: Request, claims: Annotated[TokenClaims, Depends(current_claims)]
) -> TokenClaims:
    if claims.role in STAFF_ROLES:
        return claims
    if claims.role is Role.VIEWER:
        if request.method in READ_ONLY_METHODS:
            return claims
        raise Forbidden("The viewer role is read-only")
    raise Forbidden("Staff account required")


InternalCaller = Annotated[TokenClaims, Depends(internal_caller)]
StaffUser = Annotated[TokenClaims, Depends(staff_user)]
