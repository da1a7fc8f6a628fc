"""Noticing plugin code that stalls the event loop.

Handlers and apply functions are synchronous and run on the event loop, in
the aggregate's worker, without a copy or a thread hop: that keeps the hot
path fast, but a handler that blocks (I/O, a lock, heavy CPU) stalls every
aggregate at once. Two alarms say so in the log instead of letting it pass
as "the service is slow":

* ``SlowCallAlarm``: the executor times each handler call and warns with
  the command type when one exceeds a threshold; projection and reaction
  runners time their handlers with it alike, naming the projection or
  reaction and the event type.
* ``LoopLagWatchdog``: a task that sleeps in short steps and warns when it
  wakes up late, whatever blocked the loop (a handler, an apply function, a
  blocking call anywhere else).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from service.tasks import cancel_and_wait

log = logging.getLogger(__name__)


# What a slow call was, in the words of the one that timed it: the start of
# the warning's line, and its structured fields.
Described = tuple[str, dict[str, object]]


class SlowCallAlarm:
    """Warns when one call of plugin code that runs on the event loop (a
    command's handler, a projection's handler, a reaction's function) took
    longer than ``threshold`` seconds (0: never): it stalled ``stalled``
    while it ran.

    Call ``check`` with ``time.perf_counter()`` taken before the call: it
    costs one clock read and one comparison per call; ``describe(*args)``
    says what the call was, and is called only for a slow one (the hot path
    builds no text)."""

    def __init__(self, *, threshold: float, stalled: str, logger: logging.Logger = log) -> None:
        self.threshold = threshold
        # Compared with each call's time: infinity when off.
        self._limit = threshold if threshold > 0 else math.inf
        self._stalled = stalled
        self._logger = logger

    def check(self, started: float, describe: Callable[..., Described], *args: Any) -> None:
        elapsed = time.perf_counter() - started
        if elapsed > self._limit:
            said, fields = describe(*args)
            self._logger.warning(
                "%s took %.3fs (threshold %.3fs); it blocked the event loop, and %s with it: keep handlers free"
                " of I/O and heavy work",
                said,
                elapsed,
                self.threshold,
                self._stalled,
                extra={**fields, "elapsed_seconds": elapsed},
            )


def command_handler_alarm(threshold: float) -> SlowCallAlarm:
    """The executor's: a command's handler stalls every aggregate."""
    return SlowCallAlarm(threshold=threshold, stalled="every aggregate")


def a_command_handler(command_type: str, aggregate_id: str) -> Described:
    """A slow command handler's call, as ``SlowCallAlarm.check`` says it."""
    return f"slow handler: {command_type} on {aggregate_id!r}", {
        "command_type": command_type,
        "aggregate_id": aggregate_id,
    }


class LoopLagWatchdog:
    """Warns when the event loop was blocked for more than ``threshold``
    seconds. It wakes every ``threshold / 2`` seconds, so any block of twice
    the threshold or more is always reported."""

    def __init__(self, *, threshold: float) -> None:
        if threshold <= 0:
            raise ValueError("the loop lag threshold must be positive")
        self.threshold = threshold
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="loop-lag-watchdog")

    async def stop(self) -> None:
        await cancel_and_wait(self._task, "the loop lag watchdog", log)
        self._task = None

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.threshold / 2
        while True:
            before = loop.time()
            await asyncio.sleep(interval)
            lag = loop.time() - before - interval
            if lag > self.threshold:
                log.warning(
                    "event loop blocked for about %.3fs (threshold %.3fs): a handler, an apply function or "
                    "other code made a blocking call, or the process was paused or starved of CPU (stopped, a "
                    "suspended machine, a CPU limit); every aggregate waited",
                    lag,
                    self.threshold,
                    extra={"lag_seconds": lag},
                )
