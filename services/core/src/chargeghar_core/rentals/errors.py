"""Typed errors of the rentals domain (rendered into the contract envelope by kit.errors)."""

from __future__ import annotations

from chargeghar_core.kit.errors import Conflict, CoreError, Forbidden, NotFound


class RentalNotFound(NotFound):
    code = "RENTAL_NOT_FOUND"
    default_message = "Rental not found"


class AccountNotActive(Forbidden):
    code = "ACCOUNT_NOT_ACTIVE"
    default_message = "The renter account is not active"


class RentalAlreadyOpen(Conflict):
    code = "RENTAL_ALREADY_OPEN"
    default_message = "You already have an open rental"


class UnpaidDues(CoreError):
    status_code = 402
    code = "UNPAID_DUES"
    default_message = "Pay the amount due on earlier rentals first"


class StationUnavailable(Conflict):
    code = "STATION_UNAVAILABLE"
    default_message = "This station cannot rent out power banks right now"


class PackageUnavailable(Conflict):
    code = "PACKAGE_UNAVAILABLE"
    default_message = "This rental package is not available"


class NoPowerBankAvailable(Conflict):
    code = "NO_POWER_BANK_AVAILABLE"
    default_message = "No charged power bank is available at this station"


class PowerBankUnavailable(Conflict):
    code = "POWER_BANK_UNAVAILABLE"
    default_message = "This power bank cannot be rented now"


class PopupFailed(Conflict):
    code = "POPUP_FAILED"
    default_message = "The station did not release a power bank; the rental was cancelled and refunded"


class RentalStateConflict(Conflict):
    code = "RENTAL_STATE_CONFLICT"
    default_message = "The rental is not in a state that allows this"
