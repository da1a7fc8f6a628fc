"""Routing commands to per-aggregate workers.

One worker per live aggregate id: commands for one aggregate are serial,
commands for different aggregates run concurrently. A worker is created on
the first command; a sweeper drops workers idle for longer than the idle
timeout (their cached state with them). Everything here runs on the event
loop without awaiting between lookup and enqueue, and the sweeper only drops
workers that are not running, so a worker can never be chosen while it is
leaving.
"""

from __future__ import annotations

import asyncio
import logging

from service.errors import Overloaded, StoreUnavailable
from service.processing.commands import BatchResult, CommandBatch, CommandRequest, CommandResult
from service.processing.executor import CommandExecutor
from service.processing.worker import AggregateWorker, Job

log = logging.getLogger(__name__)


# Evicting at least this many workers, and more than remain, rebuilds the table.
_SHRINK_AFTER = 1024


class Router:
    def __init__(
        self,
        executor: CommandExecutor,
        *,
        queue_depth: int = 64,
        idle_timeout: float = 30.0,
        max_workers: int = 100_000,
    ) -> None:
        self._executor = executor
        self._queue_depth = queue_depth
        self._idle_timeout = idle_timeout
        self._max_workers = max_workers
        self._workers: dict[str, AggregateWorker] = {}
        self._closing = False
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def live_workers(self) -> int:
        return len(self._workers)

    @property
    def queued(self) -> int:
        """Commands waiting in every aggregate's queue."""
        # A copy first: the metrics thread calls this while the loop changes the dict.
        return sum(worker.depth for worker in list(self._workers.values()))

    async def submit(self, request: CommandRequest, *, dry_run: bool = False) -> CommandResult:
        result = await self.submit_batch(CommandBatch((request,), dry_run=dry_run))
        return result.results[0]

    async def submit_batch(self, batch: CommandBatch) -> BatchResult:
        """Queue ``batch`` on its aggregate's worker and wait for its result."""
        if self._closing:
            raise StoreUnavailable("the server is shutting down", reason="SHUTTING_DOWN")
        aggregate_id = batch.aggregate_id
        worker = self._workers.get(aggregate_id)
        if worker is None:
            if len(self._workers) >= self._max_workers:
                raise Overloaded(
                    f"{self._max_workers} aggregates are busy; retry later",
                    reason="TOO_MANY_AGGREGATES",
                )
            worker = AggregateWorker(aggregate_id, self._executor, queue_depth=self._queue_depth)
            self._workers[aggregate_id] = worker
            if self._sweeper is None:
                self._sweeper = asyncio.create_task(self._sweep(), name="aggregate-sweeper")
        reply: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        worker.enqueue(Job(batch, reply))
        return await reply

    async def _sweep(self) -> None:
        """Drop idle workers, a few times per idle timeout."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(self._idle_timeout / 4, 0.01))
            self.drop_idle(loop.time() - self._idle_timeout)

    def drop_idle(self, idle_before: float) -> int:
        """Drop the workers that have had nothing to do since ``idle_before``
        (event loop time); return how many."""
        idle = [
            aggregate_id
            for aggregate_id, worker in self._workers.items()
            if not worker.busy and worker.idle_since <= idle_before
        ]
        for aggregate_id in idle:
            del self._workers[aggregate_id]
        if len(idle) >= _SHRINK_AFTER and len(idle) > len(self._workers):
            # A dict never shrinks on deletes: after a burst of 100,000
            # aggregates left, the empty table alone kept about 4 MiB.
            self._workers = dict(self._workers)
        return len(idle)

    async def close(self, grace: float = 30.0) -> None:
        """Refuse new commands, let queued ones finish."""
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        tasks = [w.task for w in self._workers.values() if w.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("%d aggregate workers did not finish in %.0fs", len(pending), grace)
