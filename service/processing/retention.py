"""Pruning records past their retention, in the background.

Command records make a retried command id idempotent; kept forever (the
default), the commands table holds every command id ever seen. With a
retention window, a ``Pruner`` deletes the records older than the window
every ``interval`` seconds, a small batch per transaction, oldest first,
so that appends (which never wait for a prune's locks) go on between
batches. A retry of a command whose record was pruned is a new command: it
runs again. The audit log's entries of refused commands (refusals before a
handler: authentication, policy, malformed input, overload) have a window
of their own.

Every replica may prune: batches skip rows another replica is deleting, and
deleting what is gone deletes nothing.

Reactions: a reaction sends again the commands of the events after its
checkpoint that it had sent before it stopped (a crash, a failure at an
event), under the same ids, and relies on their records to answer them.
So a ``ReactionHorizon`` holds command records back while a reaction is
behind: none is pruned that was decided after the first event past the
slowest reaction's checkpoint was (less ``CLOCK_ALLOWANCE_US``); a command
sent for a later event was decided after that event was written. When
that event's own record is not there to say when it was written, no
command record is pruned until the reactions are past it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from service.errors import ChronicleError
from service.store.base import EventRecorder, LogReader, ProjectionStore, Retention
from service.store.records import LogFilter
from service.tasks import cancel_and_wait

log = logging.getLogger(__name__)

BATCH = 500
# Decision times come from the clocks of the replicas that decided, and a
# command decided a little earlier may land a little later in the log: the
# horizon is moved back this much (microseconds) to cover both.
CLOCK_ALLOWANCE_US = 5 * 60 * 1_000_000
_EVERY_EVENT = LogFilter()


class ReactionHorizon:
    """How far back the command records the reactions may still need go."""

    def __init__(
        self, reactions: Sequence[str], *, documents: ProjectionStore, log: LogReader, events: EventRecorder
    ) -> None:
        self._reactions = reactions
        self._documents = documents
        self._log = log
        self._events = events

    async def keep_from_us(self) -> int | None:
        """Command records decided at or after this time (microseconds since
        the epoch; 0: every record) are kept for the reactions; None when
        every reaction is at the log's end and none has a deadline pending.
        A pending deadline keeps the records decided since it was due: a
        firing that failed (or crashed) before its commit sends its commands
        again, however long after, and they must still be answered from
        their records."""
        if not self._reactions:
            return None
        held = [found for found in (await self._by_events(), await self._by_deadlines()) if found is not None]
        return min(held, default=None)

    async def _by_events(self) -> int | None:
        slowest = min([await self._documents.projection_position(name) for name in self._reactions])
        page = await self._log.read_log(slowest, _EVERY_EVENT, 1)
        if not page.events:
            return None
        first = page.events[0]
        record = await self._events.find_command(first.command_id) if first.command_id else None
        if record is None or not record.recorded_at_us:
            return 0  # when it was written is not known: nothing is safe to prune
        return max(0, record.recorded_at_us - CLOCK_ALLOWANCE_US)

    async def _by_deadlines(self) -> int | None:
        # Counted over the index of due documents: none read.
        due = [(await self._documents.due_summary(name))[1] for name in self._reactions]
        soonest = min((found for found in due if found is not None), default=None)
        return None if soonest is None else max(0, soonest - CLOCK_ALLOWANCE_US)


@dataclass(frozen=True, slots=True)
class Pruned:
    commands: int = 0
    refusals: int = 0


class Pruner:
    """``command_retention`` and ``refusal_retention`` in seconds; 0 keeps
    that kind forever."""

    def __init__(
        self,
        retention: Retention,
        *,
        command_retention: float,
        refusal_retention: float,
        interval: float = 60.0,
        batch: int = BATCH,
        clock: Callable[[], float] = time.time,
        horizon: ReactionHorizon | None = None,
    ) -> None:
        self._retention = retention
        self._horizon = horizon
        self._command_retention = command_retention
        self._refusal_retention = refusal_retention
        self._interval = interval
        self._batch = batch
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        return bool(self._command_retention or self._refusal_retention)

    def start(self) -> None:
        if self.active and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="chronicle-retention")

    async def stop(self) -> None:
        await cancel_and_wait(self._task, "the pruner", log)
        self._task = None

    async def _run(self) -> None:
        while True:
            try:
                pruned = await self.prune()
            except ChronicleError as error:  # the store is away: try again next round
                log.warning("pruning old records failed: %s", error.message)
            except Exception:
                # A bug below must not end pruning for good (the tables would
                # grow without bound): say so, and try again next round.
                log.exception("pruning old records failed unexpectedly")
            else:
                if pruned.commands or pruned.refusals:
                    log.info(
                        "pruned %d command records and %d refusals past their retention",
                        pruned.commands,
                        pruned.refusals,
                    )
            await asyncio.sleep(self._interval)

    async def prune(self) -> Pruned:
        """One round: every record past its window, batch after batch."""
        now_us = int(self._clock() * 1_000_000)
        commands = refusals = 0
        if self._command_retention:
            before_us = now_us - int(self._command_retention * 1e6)
            kept_from = await self._horizon.keep_from_us() if self._horizon is not None else None
            if kept_from is not None and kept_from < before_us:
                log.info(
                    "command records decided after %s are kept past their retention: a reaction is behind and may"
                    " send their commands again",
                    time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(kept_from / 1e6)),
                )
                before_us = kept_from
            commands = await self._drain(self._retention.prune_commands, before_us)
        if self._refusal_retention:
            refusals = await self._drain(self._retention.prune_refusals, now_us - int(self._refusal_retention * 1e6))
        return Pruned(commands, refusals)

    async def _drain(self, prune: Callable[[int, int], Awaitable[int]], before_us: int) -> int:
        total = 0
        while True:
            done = await prune(before_us, self._batch)
            total += done
            if done < self._batch:
                return total
