"""The server's own memory of how far its store's log reached, to tell an
operator when the log went back under a running server (a failover to an
asynchronous standby that lost its last commits, a restore into the live
database): the positions after the new end are handed out again, to other
events, and every reader that kept a position of the old log is ahead of it.

The log's head only grows in one database. ``LogRewindWatch`` keeps the
highest head this server saw (its own look every ``interval`` seconds; one
look at a time, since heads read concurrently may answer out of order), and
when the head is below it says so in one WARNING and counts it
(``chronicle_log_rewinds_total``). A rewind that new writes carried past
the old head before it looked shows in no head: the subscription groups'
sessions that find one by the event at a position they read
(``read_floor.py``, ``group_rewinds.py``) report it (``went_back``), and a
rewind already counted that lost that position is not counted again.

Kept in memory, per server: a server started after the rewind knows no
higher head, and says nothing (its readers still refuse what they resume
with an event id the log no longer holds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from service.errors import ChronicleError
from service.store.base import LogReader
from service.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class LogRewindWatch:
    """The highest log head seen of one store; a WARNING and ``on_rewind()``
    each time the log is found gone back under it."""

    def __init__(self, log_reader: LogReader, *, interval: float, on_rewind: Callable[[], None] | None = None) -> None:
        self._log = log_reader
        self._interval = interval
        self._on_rewind = on_rewind
        self.highest = 0  # the highest head seen since the last rewind
        self.rewinds = 0  # counted since the server started
        # The positions the last counted rewind lost, (after, up to]: a
        # reader that finds one of them gone reports the same rewind.
        self._lost = (0, 0)
        # One look at a time: heads read one after the other only grow in
        # one database, while two reads at once may answer out of order.
        self._looking = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def look(self) -> int:
        """Read the log's head once (the WARNING when it is below the
        highest seen); return it."""
        async with self._looking:
            head = await self._log.log_head()
            if head < self.highest:
                self._count(head, self.highest)
                self._rewound(
                    "the log went back from %d to %d (the highest end this server saw of it, and its end now)",
                    self._lost[1],
                    head,
                )
            self.highest = head
            return head

    def went_back(self, position: int, head: int) -> None:
        """A reader found the log gone back under ``position``, which it had
        read (its end ``head`` below it, or another event stored there now:
        ``read_floor.py``). The same rewind as the last one counted when that
        lost ``position``: then nothing more is said."""
        after, up_to = self._lost
        if after < position <= up_to:
            return
        if head < position:
            self._count(head, max(self.highest, position))
            self._rewound("the log went back from %d to %d", position, head)
        else:
            # How far back it went is unknown (only that it went under
            # ``position``): every position up to the highest seen counts as lost.
            self._count(0, max(self.highest, position))
            self._rewound(
                "the log went back under position %d and was written past it since (another event is stored"
                " there; its end is %d)",
                position,
                head,
            )
        self.highest = max(head, 0)

    def _count(self, head: int, highest: int) -> None:
        self._lost = (head, highest)
        self.rewinds += 1
        if self._on_rewind is not None:
            self._on_rewind()

    @staticmethod
    def _rewound(what: str, *args: object) -> None:
        log.warning(
            what + ": restored from an older copy, or failed over to a standby that lost commits? The positions"
            " after its end are handed out again, to other events: subscribers, groups, projections and"
            " reactions that read the old log must re-sync (docs/deployment.md#backups)",
            *args,
        )

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="log-rewind-watch")

    async def _run(self) -> None:
        while True:
            # The store's absence is the health monitor's to report.
            with contextlib.suppress(ChronicleError):
                await self.look()
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        await cancel_and_wait(self._task, "the log rewind watch", log)
