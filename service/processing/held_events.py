"""What the server's subscriptions hold of the log in memory, bounded by bytes.

A subscription holds the page it is sending and, while catching up, the
next one read ahead (PostgreSQL reads it while Python encodes this one). A
client that stops reading leaves its stream suspended in a write, gRPC's
flow control holding it there: without a bound, each such stream would
keep its two pages for as long as the client keeps the call open (about
2,000 events, 1 to 4 MB of Python objects per stream, measured), and a
principal's hundred streams hundreds of megabytes.

So, in event bytes (``RecordedEvent.stored_size``: payload, metadata and
a 256-byte allowance for the rest):

* a stream reads ahead only while the server's subscriptions together hold
  less than ``read_ahead_bytes``, pages being sent included; one that finds
  no room reads its next page when it needs it, after sending this one
  (slower, never stopped), and asks again at its next page: nobody queues,
  and the room stalled streams held comes back to the readers at once, as
  below;
* a stream found suspended in the same write at two sweeps in a row
  (``stall_seconds`` apart) lets go of everything it holds: the rest of
  its page and the page read ahead. When its client takes the message
  in, it reads again after the last event it sent. A stopped client then
  costs the server the one message gRPC is sending and the stream's
  position, however long it stays.

A subscription group's consumer session takes part as a ``Tally``: it
counts the events it holds (read ahead, and sent but not settled), reads
beyond the first page it holds only while the room has space, and lets go
of what it read ahead when the sweep finds its stream stalled
(``service/groups.py``).

``bytes`` is what every subscription and consumer session holds now (the
metric ``chronicle_subscription_held_bytes``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from service.store.records import LogPage, RecordedEvent

# Room for pages read ahead, server-wide (besides the pages being sent).
DEFAULT_READ_AHEAD_BYTES = 64 * 1024 * 1024
# A stream suspended in one write at two sweeps this far apart lets go.
DEFAULT_STALL_SECONDS = 1.0
# The most events of one message of pages (a store read may be 1 MiB): a
# stopped client leaves at most about this in gRPC's hands, and a store
# read of 1,000 small events (about 270 KB) is still one message.
MAX_SUBSCRIPTION_MESSAGE_BYTES = 512 * 1024


def size_of(events: Sequence[RecordedEvent]) -> int:
    return sum(map(RecordedEvent.stored_size, events))


class Share:
    """What one stream holds, as the sweep sees it: whether it is suspended
    handing a message to its caller, how many writes so far, and what it
    could let go of."""

    __slots__ = ("released", "seen", "sending", "writes")

    def __init__(self) -> None:
        # Suspended handing a message to the caller, and how many so far.
        self.sending = False
        self.writes = 0
        self.seen = -1  # ``writes`` at the last sweep
        self.released = False  # let go of while stalled, not resumed yet

    @property
    def bytes(self) -> int:
        raise NotImplementedError

    def releasable(self) -> bool:
        """Whether ``let_go`` would free anything."""
        return self.bytes > 0

    def let_go(self) -> None:
        raise NotImplementedError


class Holding(Share):
    """A subscription's share: the page it is sending (``events[sent:]``
    not sent yet) and a read ahead. Only the stream's own task changes it,
    but for ``let_go``, which the sweep calls while the stream is suspended."""

    __slots__ = ("_owner", "ahead", "ahead_bytes", "events", "page_bytes")

    def __init__(self, owner: HeldEvents) -> None:
        super().__init__()
        self._owner = owner
        self.events: list[RecordedEvent] = []
        self.page_bytes = 0
        self.ahead: asyncio.Future[LogPage] | None = None
        self.ahead_bytes = 0

    def hold_page(self, events: list[RecordedEvent]) -> None:
        """``events`` become the page being sent (the previous one is done)."""
        size = size_of(events)
        self._owner.bytes += size - self.page_bytes
        self.events, self.page_bytes = events, size

    def done_with_page(self) -> None:
        self._owner.bytes -= self.page_bytes
        self.events, self.page_bytes = [], 0

    def read_ahead(self, read: asyncio.Future[LogPage], estimate: int) -> None:
        """``read`` is the next page, counted as ``estimate`` bytes until it
        arrives, then as what it holds."""
        self.ahead, self.ahead_bytes = read, estimate
        self._owner.bytes += estimate
        read.add_done_callback(self._arrived)

    def _arrived(self, read: asyncio.Future[LogPage]) -> None:
        if read is not self.ahead:
            return  # let go of before it arrived
        size = 0 if read.cancelled() or read.exception() is not None else size_of(read.result().events)
        self._owner.bytes += size - self.ahead_bytes
        self.ahead_bytes = size

    def take_ahead(self) -> asyncio.Future[LogPage] | None:
        """The page read ahead, if any, no longer counted as ahead (the
        caller holds it as its page next)."""
        read, self.ahead = self.ahead, None
        self._owner.bytes -= self.ahead_bytes
        self.ahead_bytes = 0
        return read

    def let_go(self) -> None:
        """Drop the rest of the page and the page read ahead; the stream
        reads again after the last event it sent when it resumes."""
        read = self.take_ahead()
        if read is not None:
            read.cancel()
        self.done_with_page()
        self.released = True

    @property
    def bytes(self) -> int:
        return self.page_bytes + self.ahead_bytes


class Tally(Share):
    """A share its owner counts event by event (a consumer session: what it
    read ahead and what it sent and has not settled), of which the sweep
    lets go through the owner's ``release`` (what was read ahead only:
    what was sent must stay, to be sent again if it is not answered)."""

    __slots__ = ("_bytes", "_owner", "_releasable", "_release")

    def __init__(self, owner: HeldEvents, release: Callable[[], None], releasable: Callable[[], bool]) -> None:
        super().__init__()
        self._owner = owner
        self._bytes = 0
        self._release = release
        self._releasable = releasable

    def add(self, size: int) -> None:
        self._bytes += size
        self._owner.bytes += size

    @property
    def bytes(self) -> int:
        return self._bytes

    def releasable(self) -> bool:
        return self._releasable()

    def let_go(self) -> None:
        self._release()
        self.released = True


class HeldEvents:
    """The server's subscriptions' holdings and the sweep that lets stalled
    ones go (a timer that runs while any stream is open)."""

    def __init__(
        self, *, read_ahead_bytes: int = DEFAULT_READ_AHEAD_BYTES, stall_seconds: float = DEFAULT_STALL_SECONDS
    ) -> None:
        self.read_ahead_bytes = read_ahead_bytes
        self.stall_seconds = stall_seconds
        self.bytes = 0
        self.let_go = 0  # streams that let go of what they held, in all
        self._holdings: set[Share] = set()
        self._timer: asyncio.TimerHandle | None = None

    def open(self) -> Holding:
        holding = Holding(self)
        self._join(holding)
        return holding

    def close(self, holding: Holding) -> None:
        read = holding.take_ahead()
        if read is not None:
            read.cancel()
        holding.done_with_page()
        self._holdings.discard(holding)

    def tally(self, release: Callable[[], None], releasable: Callable[[], bool]) -> Tally:
        """A share for a consumer session (``Tally``), swept as the others."""
        tally = Tally(self, release, releasable)
        self._join(tally)
        return tally

    def end_tally(self, tally: Tally) -> None:
        """``tally``'s session is over: what it still counted goes."""
        tally.add(-tally.bytes)
        self._holdings.discard(tally)

    def _join(self, share: Share) -> None:
        self._holdings.add(share)
        if self._timer is None and self.stall_seconds > 0:
            self._timer = asyncio.get_running_loop().call_later(self.stall_seconds, self._tick)

    def may_read_ahead(self, estimate: int) -> bool:
        """Room for a page of about ``estimate`` bytes (0: not known yet)
        beside what every subscription holds; never with no room at all."""
        return self.bytes + estimate < self.read_ahead_bytes

    def sweep(self) -> int:
        """Let go of what each stream suspended in the same write as at the
        last sweep holds; how many did."""
        released = 0
        for holding in self._holdings:
            if holding.sending and holding.writes == holding.seen and holding.releasable():
                holding.let_go()
                released += 1
            holding.seen = holding.writes
        self.let_go += released
        return released

    def _tick(self) -> None:
        self.sweep()
        self._timer = None
        if self._holdings:
            self._timer = asyncio.get_running_loop().call_later(self.stall_seconds, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
