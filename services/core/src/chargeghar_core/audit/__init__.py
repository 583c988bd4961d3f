"""One staff audit log: who did what to which thing, when, with what outcome (secrets masked)."""
