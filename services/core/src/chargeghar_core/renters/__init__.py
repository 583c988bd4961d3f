"""Renter accounts (app users): registration, login, profile, account status."""
