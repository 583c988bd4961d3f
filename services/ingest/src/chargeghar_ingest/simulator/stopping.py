"""Stopping simulator tasks so that a cancellation always wins, also on Python 3.11.

On 3.11 ``asyncio.wait_for`` returns the awaited result and drops a ``CancelledError`` that lands in the
same loop step as that result. aiomqtt uses it in connect, subscribe, QoS 1 publish and disconnect, so a
cabinet being stopped can carry on as if nothing had been asked of it: a lost cancellation kept a fleet
alive for ever (the CI hang). The task still counts the request (``Task.cancelling()``), so the loops ask
:func:`raise_if_cancel_requested` before going round again, and whoever stops tasks uses
:func:`cancel_and_wait`, which asks again until they have ended and never waits without bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from typing import Any

__all__ = [
    "RECANCEL_EVERY_S",
    "STOP_WITHIN_S",
    "cancel_and_wait",
    "raise_if_cancel_requested",
    "run_until_first_exit",
]

logger = logging.getLogger(__name__)

# A stop normally takes milliseconds; a task still running after this was most likely given a lost
# cancellation (or is in a slow graceful disconnect, which a repeated cancel only shortens).
RECANCEL_EVERY_S = 1.0
# After this the stop gives up on a task, logs it, and returns: shutting down must never hang.
STOP_WITHIN_S = 30.0


def raise_if_cancel_requested() -> None:
    """Raise ``CancelledError`` if this task was asked to stop and the request got lost on the way."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]],
    *,
    what: str,
    within_s: float = STOP_WITHIN_S,
    recancel_every_s: float = RECANCEL_EVERY_S,
) -> None:
    """Cancel ``tasks`` and wait until each has ended, cancelling again every ``recancel_every_s``.

    Bounded by ``within_s``: tasks still running then are logged and left behind. A cancellation of the
    caller meanwhile does not cut the wait short (the tasks would be left unawaited) but is raised at the
    end, so the caller still stops within the bound. Errors of the tasks are logged, not raised.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    pending = {task for task in tasks if not task.done()}
    everything = set(pending)
    interrupted = False
    while pending:
        remaining = deadline - loop.time()
        if remaining <= 0:
            logger.error(
                "%s: %d task(s) still running %.0fs after the stop, left behind: %s",
                what,
                len(pending),
                within_s,
                ", ".join(sorted(task.get_name() for task in pending)),
            )
            break
        for task in pending:
            task.cancel()
        try:
            _, pending = await asyncio.wait(pending, timeout=min(recancel_every_s, remaining))
        except asyncio.CancelledError:
            interrupted = True
            pending = {task for task in pending if not task.done()}
        if pending:
            logger.warning("%s: %d task(s) ignored a cancellation, asking again", what, len(pending))
    for task in everything:
        if task.done() and not task.cancelled() and (error := task.exception()) is not None:
            logger.warning("%s: task %s failed while stopping: %r", what, task.get_name(), error)
    if interrupted:
        raise asyncio.CancelledError


async def run_until_first_exit(loops: Iterable[tuple[str, Coroutine[Any, Any, None]]], *, what: str) -> None:
    """Run ``loops`` (name, coroutine) as tasks until the first one ends; stop the others; raise its error.

    What a TaskGroup does, minus two 3.11 traps: a TaskGroup waits without bound for a child that lost its
    cancellation, and when a child fails while the group is being cancelled it raises the child's error
    instead of the cancellation, which a caller that handles that error (a reconnect loop) swallows.
    Here a cancellation of the caller always ends as ``CancelledError``, after :func:`cancel_and_wait`.
    """
    tasks = [asyncio.create_task(coro, name=name) for name, coro in loops]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        await cancel_and_wait(tasks, what=what)
        raise
    await cancel_and_wait(tasks, what=what)
    raise_if_cancel_requested()
    # Retrieve every finished task's outcome (no "exception was never retrieved"); the first error wins.
    errors = [task.exception() for task in tasks if task in done and not task.cancelled()]
    for error in errors:
        if error is not None:
            raise error
