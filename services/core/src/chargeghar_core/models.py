"""Every table of core, imported in one place for alembic's metadata and for tests."""

from chargeghar_core.audit.models import StaffAuditEntry
from chargeghar_core.auth.models import UsedRefreshToken, User
from chargeghar_core.console.models import ConsoleSession
from chargeghar_core.devices.models import Device
from chargeghar_core.iot.models import ProcessedEvent
from chargeghar_core.kit.db import Base
from chargeghar_core.notifications.models import NotificationOutbox, NotificationPreference
from chargeghar_core.payments.models import LedgerEntry, Payment, Wallet
from chargeghar_core.powerbanks.models import PowerBank, PowerBankModel
from chargeghar_core.pricing.models import LateFeePolicy, RentalPackage, StationDiscount
from chargeghar_core.rentals.models import Rental, RentalAuditEntry, RentalExtension
from chargeghar_core.renters.models import OtpChallenge, RenterProfile, RenterSession
from chargeghar_core.stations.models import Station, StationSlot, StationStatusHistory, SyncLog

__all__ = [
    "Base",
    "ConsoleSession",
    "Device",
    "LateFeePolicy",
    "LedgerEntry",
    "NotificationOutbox",
    "NotificationPreference",
    "OtpChallenge",
    "Payment",
    "PowerBank",
    "PowerBankModel",
    "ProcessedEvent",
    "Rental",
    "RentalAuditEntry",
    "RentalExtension",
    "RentalPackage",
    "RenterProfile",
    "RenterSession",
    "StaffAuditEntry",
    "Station",
    "StationDiscount",
    "StationSlot",
    "StationStatusHistory",
    "SyncLog",
    "UsedRefreshToken",
    "User",
    "Wallet",
]
