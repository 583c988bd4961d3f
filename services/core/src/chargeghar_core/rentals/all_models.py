"""Every table of the renters, pricing, payments and rentals domains, for alembic's metadata and tests."""

from chargeghar_core.payments.models import LedgerEntry, Payment, Wallet
from chargeghar_core.pricing.models import LateFeePolicy, RentalPackage, StationDiscount
from chargeghar_core.rentals.models import Rental, RentalAuditEntry, RentalExtension
from chargeghar_core.renters.models import RenterProfile

__all__ = [
    "LateFeePolicy",
    "LedgerEntry",
    "Payment",
    "Rental",
    "RentalAuditEntry",
    "RentalExtension",
    "RentalPackage",
    "RenterProfile",
    "StationDiscount",
    "Wallet",
]
