"""Routing commands to per-aggregate workers.

One worker per live aggregate id: commands for one aggregate are serial,
commands for different aggregates run concurrently. A worker is created on
the first command; a sweeper drops workers idle for longer than the idle
timeout (their cached state with them). At the ``max_workers`` cap, a new
aggregate makes room by evicting the least recently used idle workers; it is
refused only when every worker is busy. Everything here runs on the event
loop without awaiting between lookup and enqueue, and only workers that are
not busy are dropped, so a worker can never be chosen while it is leaving.
``start`` hands a batch to its worker and returns the future of its result
without a coroutine: on a warm aggregate the command is decided before
``start`` returns (see worker.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Callable

from service.errors import Overloaded, StoreUnavailable
from service.processing.commands import BatchResult, CommandBatch, CommandRequest, CommandResult
from service.processing.executor import CommandExecutor
from service.processing.memory import release_free_memory
from service.processing.worker import AggregateWorker, Finish, Job

log = logging.getLogger(__name__)


# Evicting at least this many workers in one sweep gives their memory back
# to the operating system, and if more than remain, rebuilds the table.
_SHRINK_AFTER = 1024

# At the cap, one scan for idle workers evicts up to this share of the cap
# (the least recently used): the scan walks every worker, so evicting one
# per new aggregate would cost a walk over 100,000 workers per command.
_EVICT_AT_CAP_SHARE = 16


class Router:
    def __init__(
        self,
        executor: CommandExecutor,
        *,
        queue_depth: int = 64,
        idle_timeout: float = 30.0,
        max_workers: int = 100_000,
        release_memory: Callable[[], object] = release_free_memory,
    ) -> None:
        self._executor = executor
        self._release_memory = release_memory
        self._queue_depth = queue_depth
        self._idle_timeout = idle_timeout
        self._max_workers = max_workers
        self._workers: dict[str, AggregateWorker] = {}
        self._closing = False
        self._sweeper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._snapshots: set[asyncio.Task[None]] = set()
        self._went_idle = asyncio.Event()  # set by workers that go idle while closing
        # Every worker was busy at the cap's last scan for idle ones: no scan
        # again (a walk over every worker) until one goes idle.
        self._all_busy = False
        # Whether ``_worker_idle`` has anything to do (closing, or all busy):
        # one flag, so the callback every command ends with costs what it did.
        self._watch_idle = False
        # Commands queued since start (a batch's each; dry runs too): the
        # shutdown summary's count.
        self.commands_taken = 0

    @property
    def live_workers(self) -> int:
        return len(self._workers)

    @property
    def queued(self) -> int:
        """Commands waiting in every aggregate's queue."""
        # A copy first: the metrics thread calls this while the loop changes the dict.
        return sum(worker.depth for worker in list(self._workers.values()))

    async def submit(self, request: CommandRequest, *, dry_run: bool = False) -> CommandResult:
        result = await self.start(CommandBatch((request,), dry_run=dry_run))
        return result.results[0]

    async def submit_batch(self, batch: CommandBatch) -> BatchResult:
        """Queue ``batch`` on its aggregate's worker and wait for its result."""
        return await self.start(batch)

    def start(self, batch: CommandBatch, *, finish: Finish | None = None) -> asyncio.Future[BatchResult]:
        """Queue ``batch`` on its aggregate's worker; the future of its result.
        Refusals of the router itself (shutting down, too many aggregates, a
        full queue) are raised at once. ``finish``: called with that future
        and the outcome, to complete the future itself (see worker.Finish)."""
        if self._closing:
            raise StoreUnavailable("the server is shutting down", reason="SHUTTING_DOWN")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        aggregate_id = batch.aggregate_id
        worker = self._workers.get(aggregate_id)
        if worker is None:
            if len(self._workers) >= self._max_workers and not self._make_room():
                raise Overloaded(
                    f"all {self._max_workers} live aggregates (--max-workers) are busy; retry later",
                    reason="TOO_MANY_AGGREGATES",
                )
            worker = AggregateWorker(
                aggregate_id,
                self._executor,
                queue_depth=self._queue_depth,
                loop=loop,
                snapshots=self._snapshots,
                on_idle=self._worker_idle,
            )
            self._workers[aggregate_id] = worker
            if self._sweeper is None:
                self._sweeper = loop.create_task(self._sweep(), name="aggregate-sweeper")
        reply: asyncio.Future[BatchResult] = loop.create_future()
        worker.enqueue(Job(batch, reply, finish))
        self.commands_taken += len(batch.commands)
        return reply

    def room_for(self, aggregate_id: str) -> asyncio.Future[None] | None:
        """None while ``aggregate_id``'s queue has room for a command; else a
        future done once it has (``AggregateWorker.room``)."""
        worker = self._workers.get(aggregate_id)
        return None if worker is None else worker.room()

    def _worker_idle(self) -> None:
        if self._watch_idle:
            self._all_busy = False
            if self._closing:
                self._went_idle.set()
            else:
                self._watch_idle = False

    def _make_room(self) -> bool:
        """At the cap: evict the least recently used idle workers, up to a
        share of the cap at once (paid only at the cap, the scan amortized
        over the new aggregates it makes room for); whether any left."""
        if self._all_busy:
            return False  # none went idle since the last scan found them all busy
        candidates = [worker for worker in self._workers.values() if worker.evictable]
        if not candidates:
            # Busy workers call ``_worker_idle`` when they go idle; one
            # merely finishing a snapshot save does not, so scan again then.
            if not any(not worker.busy for worker in self._workers.values()):
                self._all_busy = self._watch_idle = True
            return False
        count = max(1, self._max_workers // _EVICT_AT_CAP_SHARE)
        if count < len(candidates):
            candidates = heapq.nsmallest(count, candidates, key=_last_used)
        for worker in candidates:
            del self._workers[worker.aggregate_id]
        # No table rebuild nor memory release, unlike the sweep: new
        # aggregates are about to take the room back.
        log.debug("%d idle aggregate workers evicted at the cap of %d", len(candidates), self._max_workers)
        return True

    async def _sweep(self) -> None:
        """Drop idle workers, a few times per idle timeout."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(self._idle_timeout / 4, 0.01))
            try:
                self.drop_idle(loop.time() - self._idle_timeout)
            except Exception:
                # Without the sweep, idle workers would pile up until the
                # server refuses new aggregates: log, and sweep again later.
                log.exception("dropping idle aggregate workers failed")

    def drop_idle(self, idle_before: float) -> int:
        """Drop the workers that have had nothing to do since ``idle_before``
        (event loop time); return how many."""
        idle = [
            aggregate_id
            for aggregate_id, worker in self._workers.items()
            if worker.evictable and worker.idle_since <= idle_before  # a snapshot save still running waits
        ]
        for aggregate_id in idle:
            del self._workers[aggregate_id]
        if len(idle) >= _SHRINK_AFTER:
            if len(idle) > len(self._workers):
                # A dict never shrinks on deletes: after a burst of 100,000
                # aggregates left, the empty table alone kept about 4 MiB.
                self._workers = dict(self._workers)
            # What those workers held is free now; without this the process
            # keeps the pages (see service/processing/memory.py).
            self._release_memory()
        return len(idle)

    def evict(self, aggregate_id: str) -> None:
        """Forget the cached state of an aggregate whose stored events were
        replaced under it (an import overwriting it): its next command loads
        it again. A busy worker keeps going (what it is deciding is decided
        on the old events: an import must not overwrite aggregates in use)."""
        worker = self._workers.get(aggregate_id)
        if worker is None:
            return
        if worker.busy:
            worker.drop_cache()
        else:
            del self._workers[aggregate_id]

    async def close(self, grace: float = 30.0) -> None:
        """Refuse new commands, let queued ones finish."""
        self._closing = self._watch_idle = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        # Work in progress is a task or an append in flight (inline): wait
        # until no worker is busy, or the grace is over.
        while any(w.busy for w in self._workers.values()) and loop.time() < deadline:
            self._went_idle.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await self._went_idle.wait()
        busy = [w for w in self._workers.values() if w.busy]
        for worker in busy:
            if worker.task is not None:
                worker.task.cancel()
        if busy:
            log.warning("%d aggregate workers did not finish in %.0fs", len(busy), grace)
        if self._snapshots:
            await asyncio.wait(self._snapshots, timeout=max(0.0, deadline - loop.time()))


def _last_used(worker: AggregateWorker) -> float:
    return worker.idle_since
