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
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from service.errors import ChronicleError
from service.store.base import Retention
from service.tasks import cancel_and_wait

log = logging.getLogger(__name__)

BATCH = 500


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
    ) -> None:
        self._retention = retention
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
            commands = await self._drain(self._retention.prune_commands, now_us - int(self._command_retention * 1e6))
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
