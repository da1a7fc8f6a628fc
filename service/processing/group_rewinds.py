"""What a server remembers of the log one subscription group read, so that a
consumer connecting again after the log went back is told (LOG_REWOUND)
instead of being served the new events at reused positions as if they were
the next ones.

A live session notices a rewind in the pages it reads (``read_floor.py``).
But a failover usually breaks the sessions first (the store is away: the
consumers' streams end UNAVAILABLE) and the consumers connect again to
sessions that start afresh from the group's checkpoints, which went back
with the database: they had nothing to compare. So the server keeps, per
group, the highest position any of its sessions read and the event there
(``floor``), and the consumers it served since; a session that opens finds
the log gone back under that floor (its end below it, or another event
stored there) with one read of the head and one by position, and then:

* its consumer's stream ends FAILED_PRECONDITION LOG_REWOUND, and so does
  the next stream of every other consumer the server served the group
  before (``to_tell``: once each, the ones live at the time end in their
  own session as they read);
* the floor is forgotten: a consumer that connects again after its refusal
  is served from the group's checkpoints as the database holds them (as
  docs/deployment.md promises: "see their streams end with LOG_REWOUND
  and connect again"), the new events at the reused positions included.

Kept in memory, per server: a consumer that reconnects to another replica,
or to this one restarted, is not told (the server's WARNING and
``chronicle_log_rewinds_total`` still say it, from the replica that saw the
higher head).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.errors import LogRewound
from service.processing.read_floor import ReadFloor
from service.store.base import LogReader
from service.store.records import LogFilter


@dataclass(slots=True)
class GroupRewinds:
    """One group's log as this server's sessions read it (module docstring)."""

    group: str
    floor: ReadFloor = field(default_factory=ReadFloor)
    served: set[str] = field(default_factory=set)  # consumers served since the floor was last forgotten
    # Consumers whose next stream ends with LOG_REWOUND: the position the
    # log went back under, and its end then.
    to_tell: dict[str, tuple[int, int]] = field(default_factory=dict)

    def read(self, floor: ReadFloor) -> None:
        """A session read the log up to ``floor``."""
        if floor.position > self.floor.position or (floor.position == self.floor.position and floor.event_id):
            self.floor = ReadFloor(floor.position, floor.event_id)

    def rewound(self, consumer: str, position: int, head: int) -> None:
        """``consumer``'s stream ends with LOG_REWOUND now (the log went back
        under ``position``; its end is ``head``): every other consumer served
        the old log is told at its next stream; the group goes on from its
        checkpoints in the database."""
        for other in self.served - {consumer}:
            self.to_tell.setdefault(other, (position, head))
        self.to_tell.pop(consumer, None)
        self.served.clear()
        self.floor = ReadFloor()

    def refusal(self, position: int, head: int) -> LogRewound:
        return LogRewound(
            f"the log went back under position {position}, which subscription group {self.group} had read (its"
            f" end is {head} now; restored from an older copy, or failed over to a standby that lost commits):"
            " the group resumes from its checkpoints as the database holds them; events delivered after those"
            " come again, the new events at the reused positions come as new, and those the log no longer"
            " holds are gone (docs/subscriptions.md#when-the-log-goes-back)",
            metadata={"position": str(position), "log_head": str(head), "group": self.group},
        )


_EVERY_EVENT = LogFilter()


async def went_back_under(floor: ReadFloor, log: LogReader) -> int | None:
    """The log's end when the log went back under ``floor`` (its end below
    it, or another event than the floor's stored at its position), else
    None. A position that holds no event any more is no sign (an aggregate
    deleted since: ``read_floor.py``)."""
    head = await log.log_head()
    if head < floor.position:
        return head
    if not floor.event_id:
        return None
    page = await log.read_log(floor.position - 1, _EVERY_EVENT, 1)
    if page.events and page.events[0].position == floor.position and page.events[0].event_id != floor.event_id:
        return head
    return None
