"""One aggregate's worker: a queue, one consumer task, a cached state.

Commands for one aggregate run one at a time in arrival order; the worker
keeps the aggregate it last saw, so a command on a warm aggregate reads
nothing from the store. It survives handler errors (dropping the cache, which
a failing handler may have left half-changed) and leaves when it has been
idle for ``idle_timeout`` seconds, so memory follows the live set.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from service.errors import ChronicleError, Overloaded, ValidationError, WrongExpectedVersion
from service.observability.logs import logging_command
from service.processing.commands import BatchResult, CommandBatch
from service.processing.executor import CommandExecutor
from service.processing.state import Aggregate

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Job:
    batch: CommandBatch
    reply: asyncio.Future[BatchResult]


_STOP = None
# Refusals decided on a state that is still exactly what the store holds.
KEEPS_CACHE = (ValidationError, WrongExpectedVersion)


class AggregateWorker:
    def __init__(
        self,
        aggregate_id: str,
        executor: CommandExecutor,
        *,
        queue_depth: int,
        idle_timeout: float,
        on_exit: Callable[[AggregateWorker], None],
    ) -> None:
        self.aggregate_id = aggregate_id
        self._executor = executor
        # Unbounded underneath so the stop sentinel always fits; ``enqueue``
        # enforces the bound on jobs.
        self._queue: asyncio.Queue[Job | None] = asyncio.Queue()
        self._queue_depth = queue_depth
        self._idle_timeout = idle_timeout
        self._on_exit = on_exit
        self._cached: Aggregate | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"aggregate:{self.aggregate_id}")

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def enqueue(self, job: Job) -> None:
        if self._queue.qsize() >= self._queue_depth:
            raise Overloaded(
                f"aggregate {self.aggregate_id!r} has {self._queue_depth} commands waiting",
                reason="AGGREGATE_QUEUE_FULL",
                metadata={"aggregate_id": self.aggregate_id, "queue_depth": str(self._queue_depth)},
            )
        self._queue.put_nowait(job)

    def stop(self) -> None:
        """Finish what is queued, then exit. Does not wait."""
        self._queue.put_nowait(_STOP)

    async def _run(self) -> None:
        try:
            while True:
                try:
                    async with asyncio.timeout(self._idle_timeout):
                        job = await self._queue.get()
                except TimeoutError:
                    if self._queue.empty():
                        return  # idle: on_exit runs before anyone can enqueue again
                    continue
                if job is _STOP:
                    return
                await self._process(job)
        finally:
            self._on_exit(self)

    async def _process(self, job: Job) -> None:
        if job.reply.done():  # the caller gave up before we started: do nothing
            return
        before = self._cached.version if self._cached is not None else 0
        try:
            first = job.batch.commands[0]
            with logging_command(
                command_id=first.command_id, correlation_id=first.correlation_id, aggregate_id=self.aggregate_id
            ):
                result, self._cached = await self._executor.execute_batch(job.batch, self._cached)
        except Exception as error:
            if not isinstance(error, KEEPS_CACHE):
                # A failing handler may have changed the state it was given; a
                # lost connection leaves us unsure what was committed.
                self._cached = None
            if not isinstance(error, ChronicleError):
                log.exception("command %s on %s failed", job.batch.commands[0].command_id, self.aggregate_id)
            if not job.reply.done():
                job.reply.set_exception(error)
            return
        if not job.reply.done():
            job.reply.set_result(result)
        if result.appended and self._cached is not None:
            await self._executor.after_commit(before, self._cached)
