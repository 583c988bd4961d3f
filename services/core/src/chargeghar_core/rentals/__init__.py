"""Rentals: start (reserve, pop, settle), return, extend, cancel, dues, overdue job, admin actions."""
