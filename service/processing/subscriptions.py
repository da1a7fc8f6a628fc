"""Subscriptions to the global log: catch up, say so, then follow live.

A subscription reads the log in pages after the position the client gave,
passes each stored event through the upcasters (so subscribers see events as
today's plugins read them), and yields:

* pages of events, in position order (each at most ``page_size`` events and
  about ``page_bytes`` of them: see ``LogReader.read_log``);
* ``CaughtUp`` once, when it has read everything committed when it got there;
* ``Checkpoint``\\ s: a position the client may resume after, sent when the
  log moved on past the last thing the client heard of, at most every
  ``checkpoint_interval`` seconds, so a subscriber whose filter matches
  nothing does not re-read the world after a reconnect.

The log can go back under a subscriber: restored from an older copy, or
failed over to a standby that lost its last commits; the positions after
the new end are then handed out again, to other events. A subscriber that
went on after the position it had would skip those, silently. So a
subscription refuses to start after a position where the log no longer
holds the event the client says it saw there (``after_event_id``: one
indexed read per start), or that is beyond the log's end (no read: a
position without an id beyond the end is only bad input), and a running one ends when a page read shows the
log's end below a position it already read, or another event at that
position than the one it read there (the end and the two ids come with the
page: no extra read; see ``read_floor.py``). Both are ``LogRewound`` (LOG_REWOUND): the client
re-syncs deliberately, nothing is skipped quietly.

A catch-up's first page is small (``first_page_size`` events): the
subscriber has its first events after one short read, not after a full
page is read, converted and encoded, and the full pages that follow are
read while that first one is sent.

While catching up it reads the next page while the caller sends this one
(the database works while Python encodes), and no further: the caller's
``async for`` only asks for the next item when the client has taken the
previous one (gRPC flow control), so a subscriber holds at most the page
being sent and the one read ahead, and a slow one slows only itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from service.errors import InvalidInput, LogRewound, StoreUnavailable
from service.processing.held_events import HeldEvents
from service.processing.overlap import started
from service.processing.read_floor import ReadFloor
from service.processing.upcasting import EventReader
from service.store.base import LogReader
from service.store.records import LogFilter, LogPage, RecordedEvent
from service.values import canonical_uuid

log = logging.getLogger(__name__)

_EVERY_EVENT = LogFilter()


@dataclass(frozen=True, slots=True)
class Page:
    """Matching events, in position order (never empty). ``completes_position``:
    its last event is the last of its position this stream sends (an
    upcaster may split one stored event into several at one position, and a
    message may end between them)."""

    events: list[RecordedEvent]
    completes_position: bool = True

    @property
    def position(self) -> int:
        return self.events[-1].position


@dataclass(frozen=True, slots=True)
class Checkpoint:
    position: int
    # The id of the event stored at ``position`` ("": unknown), for the
    # client to resume with (``SubscriptionRequest.after_event_id``).
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class CaughtUp:
    position: int
    event_id: str = ""


SubscriptionItem = Page | Checkpoint | CaughtUp


@dataclass(frozen=True, slots=True)
class SubscriptionRequest:
    after_position: int = 0
    from_end: bool = False
    log_filter: LogFilter = LogFilter()
    # One event per item (the client asked for a message per event), or
    # pages of events up to ``message_bytes``.
    per_event: bool = False
    # The id of the event the client saw at ``after_position`` (any piece's
    # of a split event): the log must still hold it there ("": not checked).
    after_event_id: str = ""


class Subscriptions:
    """Opens subscriptions and ends them all when the server shuts down."""

    def __init__(
        self,
        store: LogReader,
        reader: EventReader,
        *,
        page_size: int = 1000,
        first_page_size: int = 100,
        page_bytes: int = 1024 * 1024,
        checkpoint_interval: float = 1.0,
        poll_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        primary: LogReader | None = None,
        held: HeldEvents | None = None,
        message_bytes: int | None = None,
    ) -> None:
        """``held``: the server's account of what its subscriptions hold
        (their pages, the room to read ahead, the sweep of stalled ones);
        ``message_bytes``: the most a yielded page carries, the event that
        reaches it included (default: ``page_bytes``, a store read's)."""
        self._store = store
        # Where the log ends: the primary's, when ``store`` is a standby that
        # may be behind it (a position the standby has not replayed yet is
        # one to wait for, not one beyond the end).
        self._end = primary or store
        self._reader = reader
        self._page_size = page_size
        self._first_page_size = min(first_page_size, page_size)
        self._page_bytes = page_bytes
        self._message_bytes = message_bytes or page_bytes
        self.held = self._held = held or HeldEvents()
        self._checkpoint_interval = checkpoint_interval
        self._poll_interval = poll_interval
        self._clock = clock
        self._closing = asyncio.Event()
        self.active = 0
        self._rewound_to: int | None = None  # the log's end the last "went back" WARNING named

    def close(self) -> None:
        """End every subscription: each raises StoreUnavailable (SHUTTING_DOWN)
        at its next wait, which clients see as UNAVAILABLE and retry."""
        self._closing.set()
        self._held.stop()

    async def open(self, request: SubscriptionRequest) -> AsyncIterator[SubscriptionItem]:
        if self._closing.is_set():
            raise _shutting_down()
        head = await self._end.log_head()
        if request.from_end:
            start = head
        elif request.after_position > head:
            raise self._beyond_end(request.after_position, request.after_event_id, head)
        else:
            start = request.after_position
            if start and request.after_event_id:
                await self._check_still_holds(start, request.after_event_id, head)
        return self._follow(start, request.log_filter, request.per_event)

    def _beyond_end(self, position: int, event_id: str, head: int) -> LogRewound | InvalidInput:
        """The refusal of a start after ``position``, beyond the log's end
        ``head``. With the id of the event the client read there, the
        client read that position from a log, and this one ends below it:
        it went back (a restore, a failover to a standby that lost commits),
        LogRewound as for a live stream that meets the same end. Without an
        id, nothing says it ever came from this log (a typo, another
        store's position): POSITION_BEYOND_END."""
        if not event_id:
            return InvalidInput(
                f"position {position} is beyond the end of the log ({head})",
                reason="POSITION_BEYOND_END",
                metadata={"after_position": str(position), "log_head": str(head)},
            )
        self._tell_rewound(
            head,
            "the log went back from %d to %d: restored or failed over? A subscriber resuming after %d, where it"
            " read an event, is refused with LOG_REWOUND",
            position,
            head,
            position,
        )
        return log_rewound(position, head)

    async def _check_still_holds(self, position: int, event_id: str, head: int) -> None:
        """LogRewound unless the log holds the event ``event_id`` at
        ``position``, or no event at a position below its end: the client saw
        ``event_id`` there, and a log that now holds another event there, or
        ends below it, went back under it. A position that holds nothing is
        no sign (``service.processing.read_floor``): deleting, archiving or
        replacing an aggregate removes its events and leaves their positions
        empty, never handed out again, so a subscriber whose checkpoint is on
        an event of an aggregate deleted since resumes after it (a log that
        ends below the position went back too: ``open`` refuses that start
        first, ``_beyond_end``). One read by position (the primary key), on the
        primary when reads come from a standby that may not have replayed it
        yet. Ids compare in their canonical form: an import may have stored
        one in upper case, and a client may send it in any form of the UUID."""
        held = {canonical_uuid(stored) or stored for stored in await self.ids_at(position, reader=self._end)}
        if held and (canonical_uuid(event_id) or event_id) not in held:
            self._tell_rewound(
                head,
                "a subscriber resumed after position %d, where the log no longer holds the event it saw"
                " (the log's end is %d): restored or failed over? It is refused with LOG_REWOUND",
                position,
                head,
            )
            raise log_rewound(position, head)

    def _tell_rewound(self, head: int, message: str, *args: object) -> None:
        """A WARNING the first time the log is seen gone back to ``head``
        (every subscriber meets it: one line, not one per stream), DEBUG
        after."""
        if head != self._rewound_to:
            self._rewound_to = head
            log.warning(message, *args)
        else:
            log.debug(message, *args)

    async def ids_at(self, position: int, *, reader: LogReader | None = None) -> frozenset[str]:
        """The ids the event stored at ``position`` goes by: its own and
        those of the pieces an upcaster splits it into (a client may have
        seen any of them last). Empty when no event is stored there."""
        page = await (reader or self._store).read_log(position - 1, _EVERY_EVENT, 1)
        if not page.events or page.events[0].position != position:
            return frozenset()
        stored = page.events[0]
        try:
            pieces = {event.event_id for event in self._reader.records(stored)}
        except Exception:  # unreadable: the stored id still identifies it
            pieces = set()
        return frozenset({stored.event_id, *pieces})

    async def _id_at(self, position: int, last_sent: tuple[int, str]) -> str:
        """The id to resume after ``position`` with: the last event sent's
        when it is there (no read), else the stored event's (one read by
        position, for a marker: at most once per checkpoint interval)."""
        if last_sent[0] == position:
            return last_sent[1]
        if not position:
            return ""
        page = await self._store.read_log(position - 1, _EVERY_EVENT, 1)
        if page.events and page.events[0].position == position:
            return page.events[0].event_id
        return ""

    async def _follow(self, position: int, wanted: LogFilter, per_event: bool) -> AsyncIterator[SubscriptionItem]:
        # The store filters by stored event type; types that upcasters read
        # may become wanted ones, so they are read too and filtered once upcast.
        stored_filter = wanted
        if wanted.event_types:
            # replace: every other narrowing (a tenant's id prefix too) kept.
            stored_filter = replace(wanted, event_types=wanted.event_types | self._reader.upcast_types)
        told = position  # the client can resume after this
        # (position, count): the first ``count`` events of a split event at
        # ``position`` were sent before a stall let go of the rest; a read
        # again from that position drops them, so none is sent twice.
        resent = (0, 0)
        client_has = (0, 0)  # the same, for the last message sent inside a split event
        completes = True
        caught_up = False
        # The highest position this stream read from its store, and the event
        # there: a page whose log end is below it, or that holds another
        # event there, means the log went back. On a standby, the start may
        # be one the standby has not replayed yet (to wait for).
        floor = ReadFloor(position if self._store is self._end else 0)
        last_sent = (0, "")  # the position and id of the last event sent
        last_checkpoint = self._clock()
        limit = self._first_page_size
        held = self._held
        # What this stream holds, where the sweep can let go of it while the
        # stream waits for its client (see service/processing/held_events.py):
        # no page is kept in a local across a yield.
        holding = held.open()
        last_bytes = 0  # the last page's, the estimate of the next one's
        self.active += 1
        try:
            while True:
                page = await (holding.take_ahead() or self._read(position, stored_filter, limit))
                limit = self._page_size
                scanned_to, more = page.scanned_to, page.more
                if floor.went_back(page):
                    head = page.head or 0
                    if head < floor.position:
                        gone_back = "the log went back from %d to %d"
                    else:  # written past the floor since: only the event there tells
                        gone_back = (
                            "the log went back under %d and was written past it since (another event is stored"
                            " at that position now; the log's end is %d)"
                        )
                    self._tell_rewound(
                        head,
                        gone_back + ": restored or failed over? A subscription that had read up to %d is ended"
                        " with LOG_REWOUND",
                        floor.position,
                        head,
                        floor.position,
                    )
                    raise log_rewound(floor.position, head)
                floor.advance(page)
                # More is waiting: read it while this page is sent, if the
                # server's subscriptions have room for one more like the
                # last (asked at once: PostgreSQL reads while Python works).
                if more and held.may_read_ahead(last_bytes):
                    holding.read_ahead(await started(self._read(scanned_to, stored_filter)), last_bytes)
                events: list[RecordedEvent] = []
                unreadable = None
                if page.events:
                    told = page.events[-1].position
                    events, unreadable = self._matching(page.events, wanted.event_types)
                    if resent[1]:
                        events, resent = _without_sent_pieces(events, resent)
                del page
                holding.hold_page(events)
                del events  # held by ``holding`` alone, where the sweep can let go of it
                last_bytes = holding.page_bytes
                sent = 0
                while sent < len(holding.events):
                    if per_event:
                        upto = sent + 1
                    elif sent == 0 and holding.page_bytes < self._message_bytes:
                        upto = len(holding.events)  # the whole page: the common case
                    else:
                        upto = self._message_end(holding.events, sent)
                    position = holding.events[upto - 1].position
                    completes = upto == len(holding.events) or holding.events[upto].position != position
                    if not completes:
                        has = _pieces_at_end(holding.events, sent, upto)
                        if has == upto - sent and client_has[0] == position:
                            has += client_has[1]
                        client_has = (position, has)
                    holding.sending = True
                    holding.writes += 1
                    start, sent = sent, upto
                    last_sent = (position, holding.events[upto - 1].event_id)
                    yield Page(holding.events[start:upto], completes)  # not kept here: the caller holds it
                    holding.sending = False
                if holding.released:
                    # Stalled, it let go of the rest: read again after what
                    # the client has now taken in. Stopped inside a split
                    # event, that is its position again, without the pieces
                    # sent: reading after it would skip the others.
                    holding.released = False
                    told = position
                    if not completes:
                        position, resent = position - 1, client_has
                    continue
                holding.done_with_page()
                if unreadable is not None:
                    # An event of a known type the plugins cannot bring to its
                    # current schema ends the stream, never skipped (one of an
                    # unknown type came as stored); the page's events before
                    # it went first, so the subscriber stops just before it.
                    raise unreadable
                position = scanned_to
                if more:
                    continue  # catching up
                now = self._clock()
                if not caught_up:
                    caught_up, told, last_checkpoint = True, position, now
                    yield CaughtUp(position, await self._id_at(position, last_sent))
                elif position > told and now - last_checkpoint >= self._checkpoint_interval:
                    told, last_checkpoint = position, now
                    yield Checkpoint(position, await self._id_at(position, last_sent))
                await self._wait(position)
        finally:
            held.close(holding)
            self.active -= 1

    def _matching(
        self, stored_events: Sequence[RecordedEvent], wanted_types: frozenset[str]
    ) -> tuple[list[RecordedEvent], Exception | None]:
        """The page's events as today's plugins read them, those of
        ``wanted_types`` (all: none given), up to the first one that cannot
        be read, and what reading that one raised."""
        records = self._reader.records
        events: list[RecordedEvent] = []
        try:
            for stored in stored_events:
                for event in records(stored):
                    if not wanted_types or event.event_type in wanted_types:
                        events.append(event)
        except Exception as error:
            return events, error
        return events, None

    def _message_end(self, events: list[RecordedEvent], start: int) -> int:
        """Where the message that starts at ``events[start]`` ends: after
        the event that brings its size to ``message_bytes`` (so an event
        larger than that is a message of its own)."""
        limit = self._message_bytes
        size = 0
        for end in range(start, len(events)):
            size += events[end].stored_size()
            if size >= limit:
                return end + 1
        return len(events)

    def _read(self, position: int, stored_filter: LogFilter, limit: int | None = None) -> Awaitable[LogPage]:
        limit = limit or self._page_size
        return self._store.read_log(position, stored_filter, limit, max_bytes=self._page_bytes)

    async def _wait(self, position: int) -> None:
        """Until something commits after ``position``, the poll interval
        passes, or the server shuts down."""
        if self._closing.is_set():
            raise _shutting_down()
        closing = asyncio.ensure_future(self._closing.wait())
        committed = asyncio.ensure_future(self._store.wait_for_commit(position, self._poll_interval))
        try:
            await asyncio.wait((closing, committed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            committed.cancel()
        if self._closing.is_set():
            raise _shutting_down()


def _pieces_at_end(events: list[RecordedEvent], start: int, end: int) -> int:
    """How many of ``events[start:end]`` at its end share the last one's position."""
    position = events[end - 1].position
    count = 0
    while end - count > start and events[end - count - 1].position == position:
        count += 1
    return count


def _without_sent_pieces(
    events: list[RecordedEvent], resent: tuple[int, int]
) -> tuple[list[RecordedEvent], tuple[int, int]]:
    """``events`` without the ``count`` first ones at ``position`` (a split
    event's pieces the client already has), and what is left to drop."""
    position, count = resent
    dropped = 0
    while dropped < count and dropped < len(events) and events[dropped].position == position:
        dropped += 1
    return events[dropped:], (position, count - dropped) if dropped < count and dropped == len(events) else (0, 0)


def log_rewound(position: int, head: int) -> LogRewound:
    return LogRewound(
        f"the log no longer holds what was read up to position {position} (its end is now {head}): it went back"
        " (restored from an older copy, or failed over to a standby that lost commits), and events written"
        " since may sit at reused positions; re-sync rather than resume (docs/subscriptions.md)",
        metadata={"position": str(position), "log_head": str(head)},
    )


def _shutting_down() -> StoreUnavailable:
    return StoreUnavailable("the server is shutting down; resume from your last position", reason="SHUTTING_DOWN")
