"""A stop always wins and is bounded: the helpers behind VirtualCabinet.run and Fleet.run, on plain asyncio.

The tasks here misbehave the way simulator tasks did when aiomqtt's ``asyncio.wait_for`` (Python 3.11) lost
a cancellation: they carry on once, carry on for ever, or turn the cancellation into an error.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from chargeghar_ingest.simulator.stopping import (
    cancel_and_wait,
    raise_if_cancel_requested,
    run_until_first_exit,
)


class SessionDropped(Exception):
    """Stands in for the simulator's reboot signal."""


async def loses_one_cancellation(ended: asyncio.Event) -> None:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        pass  # what wait_for does when the result lands in the same step
    try:
        await asyncio.sleep(3600)
    finally:
        ended.set()


async def ignores_every_cancellation(stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await stop.wait()
        except asyncio.CancelledError:
            continue


async def turns_cancellation_into_an_error() -> None:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        raise SessionDropped("heartbeat echoes missed") from None


async def test_a_task_that_lost_one_cancellation_is_cancelled_again() -> None:
    ended = asyncio.Event()
    task = asyncio.create_task(loses_one_cancellation(ended))
    await asyncio.sleep(0)
    await cancel_and_wait([task], what="test", recancel_every_s=0.05)
    assert ended.is_set() and task.cancelled()


async def test_the_stop_gives_up_on_a_task_that_never_ends(caplog: pytest.LogCaptureFixture) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(ignores_every_cancellation(stop), name="stubborn")
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR):
        await cancel_and_wait([task], what="test", within_s=0.3, recancel_every_s=0.05)
    assert not task.done()
    assert "left behind: stubborn" in caplog.text
    stop.set()
    await task


async def test_a_cancelled_caller_still_waits_for_its_tasks_then_stays_cancelled() -> None:
    ended = asyncio.Event()
    child = asyncio.create_task(loses_one_cancellation(ended))
    await asyncio.sleep(0)
    stopper = asyncio.create_task(cancel_and_wait([child], what="test", recancel_every_s=0.05))
    await asyncio.sleep(0)
    stopper.cancel()
    await asyncio.wait({stopper})
    assert stopper.cancelled() and child.done() and ended.is_set()


async def test_a_cancellation_wins_over_a_childs_error() -> None:
    # A TaskGroup raises the child's error here, which the simulator's reconnect loop caught: the hang.
    started = asyncio.Event()

    async def session() -> None:
        started.set()
        await run_until_first_exit(
            [("heartbeat", turns_cancellation_into_an_error()), ("receive", asyncio.sleep(3600))],
            what="test",
        )

    task = asyncio.create_task(session())
    await started.wait()
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.wait({task})
    assert task.cancelled()


async def test_the_first_error_of_a_loop_ends_the_others_and_is_raised() -> None:
    others_cancelled = asyncio.Event()

    async def fails() -> None:
        await asyncio.sleep(0)
        raise SessionDropped("disconnect fault")

    async def runs() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            others_cancelled.set()
            raise

    with pytest.raises(SessionDropped):
        await run_until_first_exit([("fails", fails()), ("runs", runs())], what="test")
    assert others_cancelled.is_set()


async def test_a_lost_cancellation_is_noticed_by_the_task() -> None:
    async def loop_with_check(rounds: list[int]) -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass  # lost, as inside aiomqtt's wait_for
            rounds.append(1)
            raise_if_cancel_requested()

    rounds: list[int] = []
    task = asyncio.create_task(loop_with_check(rounds))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.wait({task})
    assert task.cancelled() and rounds == [1]
