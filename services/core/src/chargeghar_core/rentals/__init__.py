"""Rentals: start (reserve, eject, settle), return, extend, cancel, dues, jobs and admin actions.

States::

    PENDING_POPUP ──eject ok / check: bank gone / late ok / returned──▶ ACTIVE ──due passes (job)──▶ OVERDUE
          │                                                                │  returned / snapshot  │
          └──not sent / check: bank still in slot──▶ CANCELLED (refunded)  ▼                       ▼
                                                                      COMPLETED ◀───────────── (returned)
                                                           OVERDUE for lost_after_hours ──▶ LOST

Where things live: ``service.py`` (every rule, inside one transaction, compare-and-set transitions),
``popup.py`` (commit → device → settle, no transaction open while the station is asked),
``device_commands.py`` (the ingest command API client),
``jobs.py`` (overdue, lost, pending re-checks), ``station_events.py`` (what returns, snapshots and late
command replies do to rentals; called by station-event processing).
"""
