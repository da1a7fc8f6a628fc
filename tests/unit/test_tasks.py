"""Stopping background tasks (service/tasks.py): a shutdown goes on past a
task that had failed, and a shutdown that is itself cancelled stays
cancelled."""

from __future__ import annotations

import asyncio

import pytest

from service.tasks import cancel_and_wait


async def test_a_running_task_is_cancelled_and_has_ended_on_return() -> None:
    task = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)
    await cancel_and_wait(task, "a sleeper")
    assert task.cancelled()


async def test_a_task_that_had_failed_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def fails() -> None:
        raise RuntimeError("a bug below")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    assert task.done()
    await cancel_and_wait(task, "the pruner")  # the rest of the shutdown runs
    assert "the pruner had failed before it was stopped" in caplog.text
    assert "a bug below" in caplog.text


async def test_a_caller_cancelled_while_it_waits_stays_cancelled() -> None:
    # Swallowing every CancelledError would also swallow the caller's own:
    # a shutdown cancelled from outside would carry on as if nothing happened.
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await release.wait()  # its cleanup takes a while

    inner = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    went_on = False

    async def stopping() -> None:
        nonlocal went_on
        await cancel_and_wait(inner, "a slow task")
        went_on = True

    outer = asyncio.create_task(stopping())
    await asyncio.sleep(0.01)
    outer.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert not went_on


async def test_no_task_is_nothing_to_stop() -> None:
    await cancel_and_wait(None, "nothing")
