"""Shared plumbing of core: database, errors, logging, rate limiting, migrations."""
