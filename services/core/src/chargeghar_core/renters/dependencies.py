"""The renter calling the renter API: an access token with role ``renter``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from chargeghar_core.auth.dependencies import current_claims
from chargeghar_core.auth.models import Role
from chargeghar_core.auth.tokens import TokenClaims
from chargeghar_core.kit.errors import Forbidden
from chargeghar_core.kit.openapi import answers


@answers((403, "FORBIDDEN", "The token is not a renter's (staff tokens cannot act as renters)"))
async def renter_claims(claims: Annotated[TokenClaims, Depends(current_claims)]) -> TokenClaims:
    if claims.role is not Role.RENTER:
        raise Forbidden("Renter account required")
    return claims


CurrentRenter = Annotated[TokenClaims, Depends(renter_claims)]
