"""Helpers of the end-to-end tests (imported by conftest and the test modules)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from chargeghar_ingest.simulator.stack import LocalStack, StackConfig
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine


def new_stack(
    database_url: str,
    broker: tuple[str, int],
    var_dir: Path,
    repo_root: Path,
    *,
    ingest_env: dict[str, str] | None = None,
) -> LocalStack:
    host, port = broker
    tag = uuid.uuid4().hex[:8]
    config = StackConfig(
        var_dir=var_dir,
        database_url=database_url,
        broker_host=host,
        broker_port=port,
        topic_prefix=f"/e2e{tag}",
        service_email=f"ingest-{tag}@e2e.local",
        repo_root=repo_root,
        log_level="WARNING",
        # Retry quickly once core is back, so the no-loss tests stay short.
        ingest_env={
            "INGEST_CORE__RETRY_INITIAL_S": "0.2",
            "INGEST_CORE__RETRY_MAX_S": "2",
            **(ingest_env or {}),
        },
    )
    return LocalStack(config)


async def event_counts(
    engine: AsyncEngine, imeis: Iterable[str], event_type: str = "full"
) -> tuple[int, int]:
    """(rows, distinct event ids) of core's sync log for these stations and this event type."""
    query = text(
        "SELECT count(*), count(DISTINCT event_id) FROM sync_logs "
        "WHERE event_type = :event_type AND station_key IN :keys"
    ).bindparams(bindparam("keys", expanding=True))
    async with engine.connect() as connection:
        row = (await connection.execute(query, {"event_type": event_type, "keys": list(imeis)})).one()
    return int(row[0]), int(row[1])


async def eventually(
    check: Callable[[], object], *, within_s: float, what: str, every_s: float = 0.25
) -> None:
    """Wait until ``check()`` (sync or async) is truthy; fail with ``what`` after ``within_s``."""
    deadline = time.monotonic() + within_s
    while True:
        outcome = check()
        if asyncio.iscoroutine(outcome):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s:.0f}s waiting for {what}")
        await asyncio.sleep(every_s)
