"""Rental packages, late-fee policies and per-station discounts; the fee arithmetic in integer paisa."""
