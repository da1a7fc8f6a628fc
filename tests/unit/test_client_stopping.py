"""Stopping the client's own tasks (service/client/stopping.py): what the
tasks ended with is not raised to whoever stops them, and a caller
cancelled while it waits (a user's timeout around ``close()``) stays
cancelled. The client used to wrap each wait in ``suppress(CancelledError)``,
which swallowed that cancellation too."""

from __future__ import annotations

import asyncio

import pytest

from service.client.stopping import stop


async def test_running_tasks_are_cancelled_and_have_ended_on_return() -> None:
    tasks = [asyncio.create_task(asyncio.sleep(3600)) for _ in range(3)]
    await asyncio.sleep(0)
    await stop(*tasks)
    assert all(task.cancelled() for task in tasks)


async def test_a_task_that_had_failed_is_not_raised_to_whoever_stops_it() -> None:
    async def fails() -> None:
        raise RuntimeError("reported where its work is read")

    failed = asyncio.create_task(fails())
    sleeper = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)
    await stop(failed, sleeper)
    assert sleeper.cancelled()


async def test_a_caller_cancelled_while_it_waits_stays_cancelled() -> None:
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await release.wait()  # its cleanup takes a while

    inner = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    went_on = False

    async def closing() -> None:
        nonlocal went_on
        async with asyncio.timeout(0.01):  # the user's bound on close()
            await stop(inner)
        went_on = True

    outer = asyncio.create_task(closing())
    with pytest.raises(TimeoutError):
        await outer
    assert not went_on
    release.set()
    await asyncio.sleep(0)
    assert inner.done()
