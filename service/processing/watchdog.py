"""Noticing plugin code that stalls the event loop.

Handlers and apply functions are synchronous and run on the event loop, in
the aggregate's worker, without a copy or a thread hop: that keeps the hot
path fast, but a handler that blocks (I/O, a lock, heavy CPU) stalls every
aggregate at once. Two alarms say so in the log instead of letting it pass
as "the service is slow":

* ``SlowHandlerAlarm``: the executor times each handler call and warns with
  the command type when one exceeds a threshold.
* ``LoopLagWatchdog``: a task that sleeps in short steps and warns when it
  wakes up late, whatever blocked the loop (a handler, an apply function, a
  blocking call anywhere else).
"""

from __future__ import annotations

import asyncio
import logging
import time

from service.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class SlowHandlerAlarm:
    """Warns when one handler call took longer than ``threshold`` seconds
    (0: never). Call ``check`` with ``time.perf_counter()`` taken before the
    call; it costs one clock read per command."""

    def __init__(self, *, threshold: float) -> None:
        self.threshold = threshold

    def check(self, command_type: str, aggregate_id: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        if self.threshold and elapsed > self.threshold:
            log.warning(
                "slow handler: %s on %r took %.3fs (threshold %.3fs); it blocked the event loop, and every "
                "aggregate with it: keep handlers free of I/O and heavy work",
                command_type,
                aggregate_id,
                elapsed,
                self.threshold,
                extra={"command_type": command_type, "aggregate_id": aggregate_id, "elapsed_seconds": elapsed},
            )


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
                    "other code made a blocking call; every aggregate waited",
                    lag,
                    self.threshold,
                    extra={"lag_seconds": lag},
                )
