"""Settings of the rentals and payments domains: ``CORE_RENTALS__*`` and ``CORE_PAYMENTS__*``.

They are nested groups of core's :class:`~chargeghar_core.settings.Settings` (``settings.rentals``,
``settings.payments``); this module re-exports them under the domain's name.
"""

from __future__ import annotations

from chargeghar_core.settings import (
    ESEWA_UAT_SECRET,
    SANDBOX_HOSTS,
    PaymentSettings,
    RentalSettings,
)

__all__ = ["ESEWA_UAT_SECRET", "SANDBOX_HOSTS", "PaymentSettings", "RentalSettings"]
