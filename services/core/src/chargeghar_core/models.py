"""Every table of core, imported in one place for alembic's metadata and for tests."""

from chargeghar_core.auth.models import UsedRefreshToken, User
from chargeghar_core.iot.models import ProcessedEvent
from chargeghar_core.kit.db import Base
from chargeghar_core.powerbanks.models import PowerBank, PowerBankModel
from chargeghar_core.stations.models import Station, StationSlot, StationStatusHistory, SyncLog

__all__ = [
    "Base",
    "PowerBank",
    "PowerBankModel",
    "ProcessedEvent",
    "Station",
    "StationSlot",
    "StationStatusHistory",
    "SyncLog",
    "UsedRefreshToken",
    "User",
]
