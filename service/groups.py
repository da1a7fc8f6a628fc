"""Subscription groups: competing consumers whose position the store keeps.

A group's aggregate ids are cut into a fixed number of segments by the
partition hash (``service/cluster/hashing.py``: CRC-32 of the id, modulo
the segment count). Each segment has its own checkpoint in the store and is
held by one consumer at a time, by a lease (``LeaseKeeper``: heartbeats,
fair shares among the group's live consumers, wherever each is connected);
so one aggregate's events always go to one consumer. A ``ConsumerSession``
is one consumer's stream on this replica:

* it reads the log after the lowest checkpoint of the segments it holds,
  through the group's filter and the upcasters, and queues each event in
  its segment, per aggregate, in log order (its first read is short, a
  hundred events, so the first deliveries go out early; then full pages);
* it delivers an aggregate's next event only once the one before is
  settled (acked, or parked), so each consumer sees each aggregate in
  order; different aggregates go out together, up to the consumer's window
  (``max_in_flight``);
* a nack, or no answer within the ack timeout, sends the event again after
  the backoff (doubling per attempt, capped); after ``max_attempts``
  deliveries it is parked and the aggregate's next event goes out: a
  poison event must not stop its aggregate for good (ListParked shows it,
  ReplayParked delivers it again, out of order and marked ``replayed``);
* a segment's checkpoint is its contiguous settled prefix: the position
  before its oldest unsettled event (or how far the log was read, when
  none is unsettled). One commit round at a time writes every segment's
  new checkpoint, with the count of acks it passes and the events parked,
  under the segment lease's fencing token. A segment that moves to another
  consumer is read again there from its checkpoint: at-least-once, and the
  counts of acknowledged and skipped events count each event once. A segment given up
  in order (a consumer joined: ``_hand_over``; the session ends: ``close``)
  is committed first, with the events settled above its checkpoint (behind
  an older unsettled one), which the store keeps for the next holder
  (``_Segment.settled_ahead``, ``found_settled``): so only a crash loses
  acks, those of its last round and those above the checkpoint. An ack
  that comes after its segment moved on counts for nothing (the next
  holder delivers the event again) and is logged at WARNING (``ack``).

What a session holds of the log (the events it read ahead, and those it
sent and has not settled) is counted with the server's subscriptions
(``HeldEvents``, ``--subscription-read-ahead-bytes``): a session that holds
anything reads a further page only while they all hold less than that
room, and one whose consumer the sweep finds stalled (its stream waiting
in one write, or its window full and no ack or nack, at two sweeps) lets
go of what it read ahead and reads it again once its consumer moves
(``_let_go``): so stalled consumers hold a bounded total (the room and a
page each), whatever their number, and never miss an event. One whose
stream has waited in one write for the group's ack timeout (at least
``MIN_STALL_SECONDS``) with no ack or nack meanwhile is cut
(``_check_stall``): its events in flight count the attempt as timed out,
the session ends at once (committing, giving its segments up) and the
stream's status, once gRPC can send it, is ABORTED CONSUMER_STALLED; the
session looks at ack deadlines only between writes, and gRPC holds a write
for as long as a client that stopped reading keeps its connection. One that
takes its deliveries in but lets the group's ``max_unanswered_timeouts``
ack timeouts in a row pass without an ack or nack is cut the same way
(``_count_unanswered``, CONSUMER_UNRESPONSIVE): its events would otherwise
time out back to it until parked, its segments never moving.

Attempts are counted per replica, across the group's sessions there
(``Deliveries``): a consumer that goes away holding events (it crashed,
say) leaves their counts for the next holder of the segment on this
replica, so an event that kills every consumer it reaches is parked after
``max_attempts`` deliveries all the same (reason ``CONSUMER_LOST``); so is
a replayed parked event, whose attempts count from its replay. A
segment that moves to another replica starts its events' counts afresh
there; a group deleted and created again (another incarnation,
``GroupSpec.incarnation``) starts with none.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import heapq
import itertools
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from service.cluster.hashing import partition_of
from service.cluster.leases import LeaseGroup, LeaseKeeper
from service.errors import (
    ChronicleError,
    ConcurrencyConflict,
    ConsumerStalled,
    ConsumerUnresponsive,
    EventNotReadable,
    InvalidInput,
    LogRewound,
    ResourceNotFound,
    StoreUnavailable,
    quoted,
)
from service.processing.group_rewinds import GroupRewinds, went_back_under
from service.processing.held_events import MAX_SUBSCRIPTION_MESSAGE_BYTES, HeldEvents, size_of
from service.processing.log_rewinds import LogRewindWatch
from service.processing.read_floor import ReadFloor
from service.processing.sendable import check_sendable, sendable_event_bytes
from service.processing.upcasting import EventReader
from service.store.base import GroupStore, LogReader
from service.store.grouping import (
    ConsumerReport,
    GroupParkedEvent,
    GroupSpec,
    SettledEvent,
    consumer_group,
    segment_lease,
)
from service.store.leasing import Fencing, LeaseMember
from service.store.records import LogFilter, LogPage, RecordedEvent
from service.store.reporting_leases import ReportingLeases

log = logging.getLogger(__name__)

ACK_TIMEOUT = "ACK_TIMEOUT"
# Parked when a new holder of the segment finds the event delivered
# ``max_attempts`` times already, to consumers that went away without an answer.
CONSUMER_LOST = "CONSUMER_LOST"
# Ids of events this session delivered and settled, remembered so that a
# second ack of one (a consumer that retries) is not an unknown id.
_REMEMBERED_IDS = 100_000
# The deadline and retry heaps keep a delivery's entry until it comes up
# (settled ones are skipped then). A fast consumer settles long before its
# deadlines, so the heaps are cleared of settled entries once those are most
# of them: at most about twice what is unsettled (plus this much slack),
# not every event of the last ack timeout.
_HEAP_SLACK = 1024
# The events a session reads ahead, in payload bytes (besides its count of
# ten times max_in_flight): a log of large events must not fill the server.
# The reader stops at this and goes on once the consumer has taken some, so
# it holds at most this plus one page.
MAX_READ_AHEAD_BYTES = 32 * 1024 * 1024
# The events a session has in flight, in payload bytes, besides their count
# (the consumer's max_in_flight, up to 10,000): another is sent only while
# fewer are out (and always one, however large).
MAX_IN_FLIGHT_BYTES = 32 * 1024 * 1024
# The events a session has read and its checkpoints have not passed, settled
# or not: while one event goes unanswered, every event after it stays listed
# until it settles (a checkpoint cannot pass it), however fast the rest are
# acked. The reader stops at this, so an event that is never answered holds
# this many entries (and the page that crossed it) until it is parked, not
# everything the log received meanwhile.
MAX_UNCHECKPOINTED = 100_000
# The most a message of deliveries carries, in event bytes (one event
# always, however large): a consumer that stops reading leaves at most this
# in gRPC's hands, as a subscriber does (and a client's 4 MiB limit on what
# it receives is never crossed by a batch of many large events).
MAX_BATCH_BYTES = MAX_SUBSCRIPTION_MESSAGE_BYTES
# The shortest wait in one write, with no ack or nack, that ends a consumer's
# stream (``ConsumerSession.writing``), for groups whose ack timeout is
# shorter: a client that is reading can leave a write waiting a while (a
# window update behind a pause of its process, a loaded machine), and a
# stream ended for nothing costs its consumer a reconnect and its segments'
# unsettled events delivered again, far more than this wait.
MIN_STALL_SECONDS = 1.0


class NackAction(enum.Enum):
    """What a consumer's nack asks for (the proto's NackAction)."""

    RETRY = "retry"  # again after the backoff; parked after the last attempt
    PARK = "park"  # parked now, with the consumer's reason
    SKIP = "skip"  # settled unprocessed: neither parked nor acknowledged


def group_not_found(name: str) -> ResourceNotFound:
    return ResourceNotFound(
        f"subscription group {quoted(name)} does not exist", reason="GROUP_NOT_FOUND", metadata={"group": name}
    )


def backoff_ms(spec: GroupSpec, attempt: int) -> int:
    """The wait before delivery ``attempt + 1`` of an event."""
    return min(spec.retry_backoff_ms << max(0, min(attempt - 1, 30)), spec.max_retry_backoff_ms)


def _wall_clock_us() -> int:
    """When an event is parked, as operators read it (not the monotonic
    clock the session's deadlines run on)."""
    return time.time_ns() // 1000


@dataclass(slots=True, eq=False)
class Delivery:
    """One event delivered (or to be delivered again) to this session."""

    event: RecordedEvent
    segment: _Segment | None  # None: a replay of a parked event
    attempt: int = 0
    deadline: float = 0.0
    sent_at: float = 0.0  # its latest sending
    settled: bool = False
    parked: GroupParkedEvent | None = None  # a replay's entry


class Outcome(enum.Enum):
    """How an event was settled, which says what the group counts it as
    once its segment's checkpoint passes it."""

    ACKED = "acked"  # counted as acknowledged
    SKIPPED = "skipped"  # counted as skipped
    PARKED = "parked"  # counted nowhere: its parked row stands for it


@dataclass(slots=True)
class _Entry:
    position: int
    done: bool = False
    outcome: Outcome = Outcome.PARKED
    # Read, then let go of before it was sent (the consumer stalled): the
    # next read of its position queues it again.
    unread: bool = False


@dataclass(slots=True, eq=False)
class _Segment:
    number: int
    stored: int  # the checkpoint in the store
    read_to: int  # the log was read up to here for this segment
    fencing: Fencing | None
    # Read up to here before a let-go moved ``read_to`` back: an event at or
    # below it that has no entry any more was settled, and is not queued again.
    reread_to: int = 0
    outstanding: OrderedDict[str, _Entry] = field(default_factory=OrderedDict)
    queues: dict[str, deque[RecordedEvent]] = field(default_factory=dict)
    busy: set[str] = field(default_factory=set)
    acked_passed: int = 0  # acks behind the checkpoint, not committed yet
    skipped_passed: int = 0  # skips behind the checkpoint, not committed yet
    parks: list[GroupParkedEvent] = field(default_factory=list)  # not committed yet
    # Settled above the stored checkpoint by the segment's previous holder
    # (kept by the store as it gave the segment up), not read again yet:
    # the read finds them settled, and does not deliver them again.
    settled_before: dict[str, SettledEvent] = field(default_factory=dict)
    settles: int = 0  # events settled so far
    kept_settles: int = 0  # ``settles`` when the store last kept what is settled above the checkpoint

    def checkpoint(self) -> int:
        for entry in self.outstanding.values():
            return entry.position - 1
        return self.read_to

    def settled_ahead(self) -> list[SettledEvent]:
        """What is settled above the checkpoint: what this session settled
        behind an unsettled event, and what its previous holder had that it
        has not read yet. Kept in the store when the segment is given up."""
        settled = [
            SettledEvent(event_id, entry.position, entry.outcome.value)
            for event_id, entry in self.outstanding.items()
            if entry.done
        ]
        return settled + list(self.settled_before.values())

    def found_settled(self, event_id: str, position: int) -> bool:
        """Read an event its previous holder settled: listed as settled
        (the checkpoint passes it in its turn, counting it as it was
        settled), not delivered again."""
        settled = self.settled_before.pop(event_id, None)
        if settled is None:
            return False
        self.outstanding[event_id] = _Entry(position)
        self.settle(event_id, Outcome(settled.outcome))
        return True

    def settle(self, event_id: str, outcome: Outcome) -> None:
        entry = self.outstanding.get(event_id)
        if entry is None:
            return
        entry.done, entry.outcome = True, outcome
        self.settles += 1
        while self.outstanding:
            first_id, first = next(iter(self.outstanding.items()))
            if not first.done:
                break
            del self.outstanding[first_id]
            if first.outcome is Outcome.ACKED:
                self.acked_passed += 1
            elif first.outcome is Outcome.SKIPPED:
                self.skipped_passed += 1

    def dirty(self) -> bool:
        return self.checkpoint() != self.stored or bool(self.parks)

    def to_give_up(self) -> bool:
        """Anything to commit as the segment is given up: its checkpoint
        moved, it parked events, or something is settled above the
        checkpoint that the store does not keep yet."""
        if self.dirty():
            return True
        if self.settles == self.kept_settles:
            return False
        return bool(self.settled_before) or any(entry.done for entry in self.outstanding.values())


class Deliveries:
    """How many times each unsettled event of a group was sent, by any of
    the group's sessions on this replica (module docstring): written as a
    session sends, dropped as it settles (ack or park), read by the session
    that next takes the event's segment (or, for a replayed parked event,
    that next finds the replay). Bounded: the oldest counts go first."""

    LIMIT = 100_000

    def __init__(self) -> None:
        self._sent: OrderedDict[str, int] = OrderedDict()

    def sent(self, event_id: str, attempt: int) -> None:
        self._sent[event_id] = attempt
        self._sent.move_to_end(event_id)
        if len(self._sent) > self.LIMIT:
            self._sent.popitem(last=False)

    def settled(self, event_id: str) -> None:
        self._sent.pop(event_id, None)

    def count(self, event_id: str) -> int:
        return self._sent.get(event_id, 0)


class ConsumerSession:
    """One consumer's stream of one group on this replica (module docstring)."""

    def __init__(
        self,
        spec: GroupSpec,
        *,
        consumer: str,
        max_in_flight: int,
        groups: GroupStore,
        log_reader: LogReader,
        reader: EventReader,
        lease_seconds: float,
        poll_interval: float,
        page_size: int,
        page_bytes: int,
        first_page_size: int = 100,
        deliveries: Deliveries | None = None,
        clock: Callable[[], float] = time.monotonic,
        held: HeldEvents | None = None,
        stalled: Callable[[ConsumerSession], None] | None = None,
        replica: Callable[[], LeaseMember] = lambda: LeaseMember("", ""),
        sendable_bytes: int | None = None,
        rewinds: GroupRewinds | None = None,
        watch: LogRewindWatch | None = None,
    ) -> None:
        """``rewinds``: what this server's sessions of the group read, which
        this one adds to and tells of a rewind it finds
        (``processing/group_rewinds.py``); ``watch``: the server's, told too.
        ``sendable_bytes``: the largest event this server sends
        (processing/sendable.py; None: any); a larger one is parked, never
        delivered. ``held``: the server's account of what its subscriptions and
        consumer sessions hold (the room to read ahead, the sweep of
        stalled streams; module docstring). ``stalled``: called once with
        the session when its consumer stalled (``writing``), to end it at
        once, while its stream still waits in its write. ``replica``: this
        server as its cluster knows it (member id and API address), named
        in the session's reports (``report``)."""
        self.spec = spec
        self._replica = replica
        self._deliveries = deliveries if deliveries is not None else Deliveries()
        self.consumer = consumer
        self.member_id = f"{consumer}#{uuid.uuid4().hex[:8]}"
        self._rewinds = rewinds if rewinds is not None else GroupRewinds(spec.name)
        self._watch = watch
        self._max_in_flight = max_in_flight
        self._max_queued = max(1000, 10 * max_in_flight)
        self._groups = groups
        self._log = log_reader
        self._reader = reader
        self._sendable_bytes = sendable_bytes
        self._poll = poll_interval
        self._page_size = page_size
        # The session's first read is short: its first deliveries go out
        # after a small read, not a full page (as a subscription's catch-up).
        self._first_page_size = min(first_page_size, page_size)
        self._page_bytes = page_bytes
        self._clock = clock
        self._lease_group = consumer_group(spec.name)
        self.keeper = LeaseKeeper(
            # Each heartbeat writes the session's report with its renewal, in one transaction.
            ReportingLeases(groups, spec.name, self.report),
            member=LeaseMember(self.member_id, ""),
            groups=[LeaseGroup(self._lease_group, tuple(segment_lease(s) for s in range(spec.segments)))],
            ttl=lease_seconds,
            before_release=self._hand_over,
        )
        wanted = spec.log_filter
        self._wanted_types = wanted.event_types
        self._stored_filter = (
            # replace: every other narrowing (a tenant's id prefix too) kept.
            replace(wanted, event_types=wanted.event_types | reader.upcast_types) if wanted.event_types else wanted
        )
        self._segments: dict[int, _Segment] = {}
        self._pending: dict[str, Delivery] = {}  # delivered, not settled (in flight or waiting to go again)
        self._in_flight = 0
        self._in_flight_bytes = 0
        self._deadlines: list[tuple[float, int, Delivery]] = []
        self._retries: list[tuple[float, int, Delivery]] = []
        self._ready: deque[tuple[_Segment, str]] = deque()
        self._replays: deque[Delivery] = deque()
        self._queued = 0
        self._queued_bytes = 0
        self._settled_ids: OrderedDict[str, None] = OrderedDict()
        # Ids of events sent and unsettled when their segment moved on: an
        # ack of one comes too late to count (``ack`` logs it).
        self._moved_ids: OrderedDict[str, None] = OrderedDict()
        self._unparks: list[str] = []
        self._unparking: set[str] = set()  # acked replays whose removal is being written
        self._replay_parks: list[GroupParkedEvent] = []
        self._reparking: set[str] = set()  # replays failed again whose park is being written
        self._dismissals: list[str] = []  # replays skipped by their consumer
        self._dismissing: set[str] = set()  # skipped replays whose removal is being written
        self._order = itertools.count()
        self._changed = asyncio.Event()  # for next_batch
        self._reader_wake = asyncio.Event()  # room in the queues, or other segments
        self._commit_wanted = asyncio.Event()
        self._committing = asyncio.Lock()
        self._failure: BaseException | None = None
        self._ended = False
        self._tasks: list[asyncio.Task[None]] = []
        self._held = held if held is not None else HeldEvents()
        self._tally = self._held.tally(self._let_go, lambda: self._queued > 0)
        self._let_go_count = 0  # a read in progress across a let-go is thrown away
        # The highest position this session read the log up to, and the event
        # there: a page whose log end is below it, or that holds another event
        # there, means the log went back (``_check_not_rewound``).
        self._read_floor = ReadFloor()
        self._rewound = False  # then no checkpoint of this session's is committed any more
        self._last_page_bytes = 0  # what the last page queued: the estimate of the next one
        self._stalled = stalled
        self._stall_seconds = max(spec.ack_timeout_ms / 1000, MIN_STALL_SECONDS)
        self._write_began: float | None = None  # the stream waits in a write since then
        self._answered_at = float("-inf")  # the consumer's last ack or nack
        self._joined_at: float | None = None  # when the session joined the group (``start``)
        self._stall_check: asyncio.TimerHandle | None = None
        self._cut = False  # ended as stalled or unresponsive: its events and segments are the others' now
        # Deliveries timed out in a row with no answer from the consumer, and
        # when the last of them counted (``_count_unanswered``).
        self._unanswered = 0
        self._unanswered_at = float("-inf")
        self._closed: asyncio.Future[None] | None = None

    # -- life ------------------------------------------------------------------

    async def start(self) -> None:
        self._joined_at = self._clock()
        try:
            await self.keeper.beat()
        except BaseException:
            self._held.end_tally(self._tally)  # never started: never closed
            raise
        self.keeper.start()
        loop = asyncio.get_running_loop()
        works = ((self._follow_segments, "segments"), (self._read, "reads"), (self._commit, "commits"))
        for work, name in works:
            self._tasks.append(loop.create_task(self._guarded(work), name=f"group-{self.spec.name}-{name}"))

    async def close(self) -> None:
        """End the session: stop reading, commit what is settled, give up
        the segments (another consumer takes them at its next heartbeat).
        Once: a second call waits for the first."""
        if self._closed is None:
            self._closed = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closed)

    async def _close(self) -> None:
        if self._stall_check is not None:
            self._stall_check.cancel()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self._poll)
        # The last round: the acks the consumer sent before it left.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(max(self._poll, 1.0)):
                await self._commit_round(giving_up=True)
        self._held.end_tally(self._tally)
        await self.keeper.stop(leave=True)

    def fail(self, error: BaseException) -> None:
        """End the stream with ``error`` (at the next ``next_batch``)."""
        if self._failure is None:
            self._failure = error
        self._changed.set()

    def end(self) -> None:
        """The consumer is done (it closed its side of the stream)."""
        self._ended = True
        self._changed.set()

    def writing(self) -> None:
        """The stream hands a batch to gRPC, which holds it there until the
        consumer's flow-control window has room: the sweep may find it
        stalled in this write (``HeldEvents.sweep``), and a consumer that
        neither takes it in nor answers for the group's ack timeout (at
        least ``MIN_STALL_SECONDS``) is cut (``_check_stall``)."""
        self._tally.sending = True
        self._tally.writes += 1
        self._write_began = self._clock()
        # One timer at a time, left armed across writes (not one per
        # message): when it fires it looks at the write under way, if any.
        if self._stall_check is None:
            self._stall_check = asyncio.get_running_loop().call_later(self._stall_seconds, self._check_stall)

    def written(self) -> None:
        """The consumer took the batch in."""
        self._tally.sending = False
        self._write_began = None
        self._resumed()

    def _check_stall(self) -> None:
        """The stream has waited in its write for the stall bound, unless
        an answer came meanwhile, or this is a later write (then: look again
        when the bound is up for it), or none is under way (then: the next
        write arms the timer again).

        Why the ack timeout: every event of the write was sent as it began,
        so by then each is past its ack deadline unanswered, the condition
        on which the session sends it again; but the session only looks at
        deadlines between writes, and gRPC holds this one for as long as the
        client keeps its connection open and does not read (its library
        answers keepalive pings): without the cut, those events and the
        consumer's segments would wait for it for good."""
        self._stall_check = None
        if self._write_began is None or self._cut:
            return
        left = max(self._write_began, self._answered_at) + self._stall_seconds - self._clock()
        if left > 0:
            self._stall_check = asyncio.get_running_loop().call_later(left, self._check_stall)
            return
        self._cut_stalled()

    def _cut_stalled(self) -> None:
        """End the session of a consumer that stalled: each event in flight
        counts its attempt as timed out (parked at ``max_attempts``, as any
        timeout; the others' counts stay in ``Deliveries`` for the next
        holder), the stream's status says CONSUMER_STALLED once gRPC can send
        it, and ``stalled`` closes the session now: what was acked is
        committed and the segments are given up, for the other consumers to
        take at their next heartbeat."""
        log.warning(
            "subscription group %s: consumer %s took no deliveries in and answered nothing for %.3gs; its stream"
            " ends (CONSUMER_STALLED) and its events go to the other consumers",
            self.spec.name,
            self.member_id,
            self._stall_seconds,
        )
        self._cut_off(
            ConsumerStalled(
                f"consumer {self.member_id!r} of group {quoted(self.spec.name)} took no deliveries in and acked or"
                f" nacked nothing for {self._stall_seconds:g}s (the group's ack timeout, at least"
                f" {MIN_STALL_SECONDS:g}s): its unacknowledged events and its segments went to the group's other"
                " consumers; consume again",
                metadata={"group": self.spec.name, "consumer": self.member_id},
            )
        )

    def _cut_off(self, error: ConsumerStalled) -> None:
        """End the session with ``error``: its events in flight count the
        attempt as timed out, and ``stalled`` releases the session now."""
        for delivery in [d for d in self._pending.values() if d.deadline and self._live(d)]:
            self._failed(delivery, ACK_TIMEOUT)
        self._cut = True
        self.fail(error)
        if self._stalled is not None:
            self._stalled(self)

    def _count_unanswered(self, delivery: Delivery, now: float) -> None:
        """``delivery`` timed out unanswered. A consumer that takes its
        deliveries in (so the write-bound cut never comes) but answers none
        would otherwise hold its segments for good, each event timing out
        and going again to it until parked, while the group's other
        consumers idle: as Kafka removes a consumer that stops polling
        (max.poll.interval.ms) and its partitions go to the others, it is
        cut after ``max_unanswered_timeouts`` timeouts in a row with no ack
        or nack from it. One counts only if the delivery was sent after the
        last one counted: a window of events timing out together is one
        ack timeout's silence, not many, so the bound is that many whole
        ack timeouts (with their backoffs) without an answer."""
        limit = self.spec.max_unanswered_timeouts
        if not limit or self._cut or delivery.sent_at <= self._unanswered_at:
            return
        self._unanswered += 1
        self._unanswered_at = now
        if self._unanswered < limit:
            return
        log.warning(
            "subscription group %s: consumer %s let %d ack timeouts in a row pass with no ack or nack; its stream"
            " ends (CONSUMER_UNRESPONSIVE) and its events go to the other consumers",
            self.spec.name,
            self.member_id,
            self._unanswered,
        )
        self._cut_off(
            ConsumerUnresponsive(
                f"consumer {self.member_id!r} of group {quoted(self.spec.name)} let {self._unanswered} ack"
                f" timeouts in a row pass ({self.spec.ack_timeout_ms / 1000:g}s each) without acking or nacking"
                " anything (the group's max_unanswered_timeouts): its unacknowledged events and its segments"
                " went to the group's other consumers; consume again",
                metadata={"group": self.spec.name, "consumer": self.member_id},
            )
        )

    def _resumed(self) -> None:
        """The consumer moved (it took a batch in, or answered): a session
        that let go of what it read ahead meanwhile reads it again."""
        if self._tally.released:
            self._tally.released = False
            self._reader_wake.set()

    @property
    def held_bytes(self) -> int:
        """What this session holds of the log, in event bytes (``stored_size``)."""
        return self._tally.bytes

    async def _guarded(self, work: Callable[[], object]) -> None:
        try:
            await work()  # type: ignore[misc]
        except asyncio.CancelledError:
            raise
        except ChronicleError as error:
            self.fail(error)
        except Exception as error:
            log.exception("subscription group %s: consumer %s failed", self.spec.name, self.member_id)
            self.fail(error)

    # -- what the consumer says -------------------------------------------------

    def _delivery(self, event_id: str) -> Delivery | None:
        delivery = self._pending.get(event_id)
        if delivery is None and event_id not in self._settled_ids and event_id not in self._moved_ids:
            raise InvalidInput(
                f"event {quoted(event_id)} was not delivered on this stream",
                reason="UNKNOWN_EVENT_ID",
                metadata={"event_id": event_id[:200]},
            )
        return delivery

    def ack(self, event_ids: Sequence[str]) -> None:
        if self._cut:
            return  # too late: its events are the other consumers' now, counted as timed out
        self._answered()
        late: list[str] = []
        for event_id in event_ids:
            delivery = self._delivery(event_id)
            if delivery is None:
                if event_id in self._moved_ids:  # its segment moved on before the ack came
                    del self._moved_ids[event_id]
                    self._settled_ids[event_id] = None  # said once: a second ack of it is a retry
                    if len(self._settled_ids) > _REMEMBERED_IDS:
                        self._settled_ids.popitem(last=False)
                    late.append(event_id)
                continue  # else acked before (a consumer that retries): the first ack stands
            self._settle(delivery)
            if delivery.segment is None:
                self._unparks.append(event_id)
            else:
                delivery.segment.settle(event_id, Outcome.ACKED)
        if late:
            log.warning(
                "subscription group %s: consumer %s acked %d event(s) (%s) after their segment moved to another"
                " consumer (LATE_ACK): the ack counts for nothing, the segment's next holder delivers them again",
                quoted(self.spec.name),
                quoted(self.member_id),
                len(late),
                ", ".join(late[:3]) + (", ..." if len(late) > 3 else ""),
            )
        self._commit_wanted.set()
        self._changed.set()
        if not self._read_ahead_full:
            self._reader_wake.set()  # a checkpoint may have passed what held the reader

    def nack(self, event_ids: Sequence[str], reason: str, action: NackAction = NackAction.RETRY) -> None:
        if self._cut:
            return
        self._answered()
        for event_id in event_ids:
            delivery = self._delivery(event_id)
            if delivery is None or not delivery.deadline:
                continue  # settled, or already waiting to go again: the first answer stands
            if action is NackAction.PARK:
                self._park(delivery, reason)
            elif action is NackAction.SKIP:
                self._skip(delivery)
            else:
                self._failed(delivery, reason)
        self._changed.set()
        if not self._read_ahead_full:
            self._reader_wake.set()  # a park or skip may pass a checkpoint that held the reader

    def _skip(self, delivery: Delivery) -> None:
        """Settled unprocessed: passed by the checkpoint as an ack is, and
        counted as skipped, not acknowledged; a skipped replay leaves the
        parked list, counted as skipped too."""
        self._settle(delivery)
        if delivery.segment is None:
            self._dismissals.append(delivery.event.event_id)
        else:
            delivery.segment.settle(delivery.event.event_id, Outcome.SKIPPED)
        self._commit_wanted.set()

    def _answered(self) -> None:
        # Progress, for the sweep: a session waiting on a full window is
        # stalled only while its consumer neither reads nor answers; and one
        # waiting in a write is not cut while its consumer answers.
        self._tally.writes += 1
        self._answered_at = self._clock()
        self._unanswered, self._unanswered_at = 0, float("-inf")
        self._resumed()

    def _settle(self, delivery: Delivery) -> None:
        event_id = delivery.event.event_id
        self._deliveries.settled(event_id)
        self._tally.add(-delivery.event.stored_size())
        if delivery.deadline:
            self._landed(delivery)
        delivery.settled = True
        delivery.deadline = 0.0
        self._pending.pop(event_id, None)
        self._settled_ids[event_id] = None
        if len(self._settled_ids) > _REMEMBERED_IDS:
            self._settled_ids.popitem(last=False)
        segment = delivery.segment
        if segment is not None and self._segments.get(segment.number) is segment:
            aggregate = delivery.event.aggregate_id
            segment.busy.discard(aggregate)
            if segment.queues.get(aggregate):
                self._ready.append((segment, aggregate))

    def _failed(self, delivery: Delivery, reason: str) -> None:
        """A nack or a timeout: deliver again after the backoff, or park."""
        if delivery.attempt >= self.spec.max_attempts:
            self._park(delivery, reason)
            return
        self._landed(delivery)
        delivery.deadline = 0.0
        due = self._clock() + backoff_ms(self.spec, delivery.attempt) / 1000
        if len(self._retries) > 2 * len(self._pending) + _HEAP_SLACK:
            self._retries = _without_stale(self._retries, lambda delivery, due: True)
        heapq.heappush(self._retries, (due, next(self._order), delivery))

    def _park(self, delivery: Delivery, reason: str) -> None:
        event = delivery.event
        segment = delivery.segment
        parked = GroupParkedEvent(
            event_id=event.event_id,
            position=event.position,
            segment=segment.number if segment is not None else _segment_of(delivery),
            aggregate_id=event.aggregate_id,
            attempts=delivery.attempt,
            reason=reason[:1000],
            event_type=event.event_type,
            parked_at_us=_wall_clock_us(),
        )
        self._settle(delivery)
        if segment is None:
            self._replay_parks.append(parked)
        else:
            segment.parks.append(parked)
            segment.settle(event.event_id, Outcome.PARKED)
        self._commit_wanted.set()

    # -- what goes out ------------------------------------------------------------

    async def next_batch(self) -> list[Delivery] | None:
        """The next deliveries, as soon as there are any (None: the consumer
        ended the stream). Raises what ended the session."""
        while True:
            self._changed.clear()
            if self._failure is not None:
                raise self._failure
            if self._ended:
                return None
            now = self._clock()
            self._expire(now)
            if self._failure is not None:
                raise self._failure  # cut as unresponsive by a timeout
            batch = self._take(now)
            if batch:
                return batch
            wake = [d for d, _, x in self._deadlines[:1]] + [d for d, _, x in self._retries[:1]]
            timeout = max(0.0, min(wake) - now) if wake else None
            # Nothing can go before the consumer answers (its window is
            # full): the sweep may find it stalled here, as in a write, if
            # no answer comes (``_answered``) before its next look.
            self._tally.sending = not self._room(self._max_in_flight - self._in_flight, [], 0)
            try:
                # asyncio.timeout, not wait_for: in Python 3.11 wait_for can
                # swallow a cancellation that meets the awaited event's setting.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._changed.wait()
            finally:
                self._tally.sending = False

    def _expire(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, _, delivery = heapq.heappop(self._deadlines)
            if delivery.settled or delivery.deadline != deadline or not self._live(delivery):
                continue  # settled, or sent again since (a later deadline)
            self._failed(delivery, ACK_TIMEOUT)
            self._count_unanswered(delivery, now)
            if self._cut:
                return

    def _live(self, delivery: Delivery) -> bool:
        segment = delivery.segment
        return segment is None or self._segments.get(segment.number) is segment

    def _landed(self, delivery: Delivery) -> None:
        """``delivery`` is no longer in flight (answered, timed out, or its
        segment gone)."""
        self._in_flight -= 1
        self._in_flight_bytes -= len(delivery.event.payload)

    def _room(self, room: int, batch: list[Delivery], batch_bytes: int) -> bool:
        """Whether one more may be sent: fewer than ``max_in_flight`` and
        than ``MAX_IN_FLIGHT_BYTES`` are out (or nothing is), and this batch
        is under ``MAX_BATCH_BYTES`` (or empty)."""
        return (
            room > 0
            and (not self._in_flight or self._in_flight_bytes < MAX_IN_FLIGHT_BYTES)
            and (not batch or batch_bytes < MAX_BATCH_BYTES)
        )

    def _take(self, now: float) -> list[Delivery]:
        batch: list[Delivery] = []
        size = 0  # the batch's, in event bytes
        room = self._max_in_flight - self._in_flight
        while self._room(room, batch, size) and self._retries and self._retries[0][0] <= now:
            _, _, delivery = heapq.heappop(self._retries)
            if delivery.settled or not self._live(delivery):
                continue
            batch.append(self._send(delivery, now))
            size += delivery.event.stored_size()
            room -= 1
        while self._room(room, batch, size) and self._replays:
            delivery = self._send(self._replays.popleft(), now)
            batch.append(delivery)
            size += delivery.event.stored_size()
            room -= 1
        while self._room(room, batch, size) and self._ready:
            segment, aggregate = self._ready.popleft()
            queue = segment.queues.get(aggregate)
            if self._segments.get(segment.number) is not segment or aggregate in segment.busy or not queue:
                continue
            event = queue.popleft()
            if not queue:
                del segment.queues[aggregate]
            self._queued -= 1
            self._queued_bytes -= len(event.payload)
            segment.busy.add(aggregate)
            delivery = Delivery(event, segment, attempt=self._deliveries.count(event.event_id))
            self._pending[event.event_id] = delivery
            if delivery.attempt >= self.spec.max_attempts:
                # Sent that often already, to consumers that went away
                # without an answer: parked, and the aggregate goes on.
                self._failed(delivery, CONSUMER_LOST)
                continue
            batch.append(self._send(delivery, now))
            size += event.stored_size()
            room -= 1
        if batch and not self._read_ahead_full:
            self._reader_wake.set()  # the reader may go on
        return batch

    def _send(self, delivery: Delivery, now: float) -> Delivery:
        delivery.attempt += 1
        self._deliveries.sent(delivery.event.event_id, delivery.attempt)
        delivery.sent_at = now
        delivery.deadline = now + self.spec.ack_timeout_ms / 1000
        self._in_flight += 1
        self._in_flight_bytes += len(delivery.event.payload)
        if len(self._deadlines) > 2 * self._in_flight + _HEAP_SLACK:
            self._deadlines = _without_stale(self._deadlines, lambda delivery, deadline: delivery.deadline == deadline)
        heapq.heappush(self._deadlines, (delivery.deadline, next(self._order), delivery))
        return delivery

    # -- reports -----------------------------------------------------------------

    def report(self) -> ConsumerReport:
        """What the session says of its consumer now: this replica, the
        events in flight, how long ago it last acked or nacked and how long
        ago it joined (``start``; the store keeps the first). Written to
        the store with each heartbeat's renewal of its leases, in the same
        transaction (``ReportingLeases``), for every replica to show: a
        consumer whose heartbeats stop (its replica died or hangs) is shown
        silent while its lease still holds its segments."""
        replica = self._replica()
        now = self._clock()
        answered = now - self._answered_at if self._answered_at != float("-inf") else None
        return ConsumerReport(
            replica_id=replica.member_id,
            replica_address=replica.address,
            in_flight=self._in_flight,
            answered_ago=answered,
            connected_ago=None if self._joined_at is None else now - self._joined_at,
        )

    # -- segments held -------------------------------------------------------------

    async def _follow_segments(self) -> None:
        version = -1
        last_check = float("-inf")
        while True:
            version = await self.keeper.wait_for_change(version, self._poll)
            held = {int(name) for name in self.keeper.held(self._lease_group)}
            for number in sorted(set(self._segments) - held):
                self._drop(number)
            gained = sorted(held - set(self._segments))
            now = self._clock()
            if gained or now - last_check >= self._poll:
                last_check = now
                state = await self._groups.load_group(self.spec.name)
                if state is None or state.spec.incarnation != self.spec.incarnation:
                    # Gone, or deleted and created again: not this session's group.
                    raise group_not_found(self.spec.name)
                self._adopt(state.spec)
                for number in gained:
                    if self.keeper.fencing(self._lease_group, segment_lease(number)) is None:
                        continue
                    position = state.checkpoint(number).position
                    # What its previous holder settled above the checkpoint:
                    # not delivered again (Segment.found_settled).
                    settled = await self._groups.settled_ahead(self.spec.name, number)
                    fencing = self.keeper.fencing(self._lease_group, segment_lease(number))
                    if fencing is None or number in self._segments:
                        continue  # given up meanwhile
                    segment = self._segments[number] = _Segment(number, position, position, fencing)
                    segment.settled_before = {s.event_id: s for s in settled if s.position > position}
                if state.parked:
                    await self._find_replays()
                self._changed.set()
                self._reader_wake.set()

    def _adopt(self, spec: GroupSpec) -> None:
        """The group's settings as an UpdateGroup left them (read with the
        segments, at each poll): attempts and backoffs apply from the next
        nack or timeout; a shorter ack timeout also to the events in
        flight (each one's deadline as if sent under it), a longer one from
        the next delivery (a consumer is never given less than it was told)."""
        if spec == self.spec:
            return
        shorter_by = (self.spec.ack_timeout_ms - spec.ack_timeout_ms) / 1000
        self.spec = spec
        self._stall_seconds = max(spec.ack_timeout_ms / 1000, MIN_STALL_SECONDS)
        if shorter_by > 0:
            for delivery in self._pending.values():
                if delivery.deadline and not delivery.settled:
                    delivery.deadline -= shorter_by
                    heapq.heappush(self._deadlines, (delivery.deadline, next(self._order), delivery))
            self._changed.set()  # next_batch waits for the earliest deadline: an earlier one now

    async def _hand_over(self, lease_group: str, names: tuple[str, ...]) -> None:
        """Before the keeper gives segments up toward a fairer share (a
        consumer joined): commit what the consumer settled in them, while
        their leases are still this session's, then let them go. Without
        this the acks taken since a segment's last commit were lost with
        it, and the next holder delivered those events again. Bounded by
        the heartbeat interval: a commit that fails or hangs is given up,
        and the next holder delivers again what it did not pass (as after
        a crash)."""
        numbers = [int(name) for name in names]
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.keeper.interval), self._committing:
                for _ in range(3):  # acks that came during a commit: once more, a few times at most
                    dirty = [s for n in numbers if (s := self._segments.get(n)) is not None and s.to_give_up()]
                    if not dirty:
                        break
                    await asyncio.gather(*(self._commit_segment(segment, giving_up=True) for segment in dirty))
        # No await since the last look: nothing acked in between is lost.
        for number in numbers:
            self._drop(number)

    def _drop(self, number: int) -> None:
        """This session no longer holds segment ``number``: its unsettled
        events are the next holder's to deliver."""
        segment = self._segments.pop(number, None)
        if segment is None:
            return
        for event_id in list(segment.outstanding):
            delivery = self._pending.pop(event_id, None)
            if delivery is not None:
                if delivery.deadline:
                    self._landed(delivery)
                delivery.settled = True
                self._tally.add(-delivery.event.stored_size())
                # A late ack is no error, but it counts for nothing: ``ack`` says so.
                self._moved_ids[event_id] = None
                if len(self._moved_ids) > _REMEMBERED_IDS:
                    self._moved_ids.popitem(last=False)
        for queue in segment.queues.values():
            self._unqueue(queue)
        self._changed.set()
        self._reader_wake.set()

    async def _find_replays(self) -> None:
        # Not again: replays in flight, acked ones still listed until their
        # removal is written, and failed ones still marked for replay until
        # their park is written.
        replaying = {d.event.event_id for d in self._pending.values() if d.segment is None}
        replaying |= self._unparking | set(self._unparks)
        replaying |= self._reparking | {parked.event_id for parked in self._replay_parks}
        replaying |= self._dismissing | set(self._dismissals)
        wanted = await self._groups.parked_to_replay(self.spec.name, sorted(self._segments), self._max_in_flight)
        for parked in wanted:
            if parked.event_id in replaying:
                continue
            page = await self._log.read_log(parked.position - 1, LogFilter(aggregate_id=parked.aggregate_id), 1)
            for stored in page.events:
                try:
                    events = self._records(stored)
                except EventNotReadable as error:
                    # Still unreadable (the plugin is not fixed yet): parked
                    # again as it was, with today's reason, not delivered.
                    reason = f"{error.reason}: {error}"[:1000]
                    self._replay_parks.append(
                        dataclasses.replace(
                            parked,
                            replaying=False,
                            reason=reason,
                            event_type=stored.event_type,
                            parked_at_us=_wall_clock_us(),
                        )
                    )
                    self._commit_wanted.set()
                    continue
                for event in events:
                    if event.event_id == parked.event_id:
                        # Its attempts since the replay was asked for, by
                        # consumers on this replica that went away holding
                        # it: a replay that kills every consumer it reaches
                        # is parked again, as a first delivery would be.
                        attempt = self._deliveries.count(event.event_id)
                        delivery = Delivery(event, None, attempt=attempt, parked=parked)
                        self._pending[event.event_id] = delivery
                        self._tally.add(event.stored_size())
                        if attempt >= self.spec.max_attempts:
                            self._failed(delivery, CONSUMER_LOST)
                        else:
                            self._replays.append(delivery)

    # -- reading the log -----------------------------------------------------------

    @property
    def _read_ahead_full(self) -> bool:
        return (
            self._queued >= self._max_queued
            or self._queued_bytes >= MAX_READ_AHEAD_BYTES
            or sum(len(segment.outstanding) for segment in self._segments.values()) >= MAX_UNCHECKPOINTED
        )

    def _may_read(self) -> bool:
        """Not while the sweep has let go of what it read ahead (its
        consumer stalled) and the consumer has not resumed; then a first
        page when the session holds nothing, and more only while the
        server's subscriptions and sessions hold less than their room (as a
        subscription reads ahead): nobody queues for room, a session that
        finds none asks again when its consumer settles something, or at
        the next poll."""
        if self._tally.released:
            return False
        return self._tally.bytes == 0 or self._held.may_read_ahead(self._last_page_bytes)

    async def _read(self) -> None:
        limit = self._first_page_size
        while True:
            reading = [s for s in self._segments.values()]
            if not reading or self._read_ahead_full or not self._may_read():
                self._reader_wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll):
                        await self._reader_wake.wait()
                continue
            start = min(s.read_to for s in reading)
            let_go_count = self._let_go_count
            page = await self._log.read_log(start, self._stored_filter, limit, max_bytes=self._page_bytes)
            if let_go_count != self._let_go_count:
                # Let go of while reading: this page may start after events
                # that were let go of; read again from where they were.
                continue
            limit = self._page_size
            self._check_not_rewound(page)
            self._last_page_bytes = self._take_page(page.events, reading)
            for segment in reading:
                if self._segments.get(segment.number) is segment and page.scanned_to > segment.read_to:
                    segment.read_to = page.scanned_to
                    if segment.dirty():  # nothing outstanding, or the previous holder's settled events passed
                        self._commit_wanted.set()
            self._changed.set()
            if not page.more:
                await self._wait_for_log(page.scanned_to)

    def _check_not_rewound(self, page: LogPage) -> None:
        """LogRewound when this page shows the log went back under what the
        session read already (its end below it, or another event where the
        session read one: ``read_floor.py``): the database was restored from
        an older copy, or failed over to a standby that lost commits. Going
        on from its positions in memory would skip the events written since
        at the reused positions, and committing them would make that
        lasting; so the session commits nothing more and ends (its
        consumer's stream with LOG_REWOUND). The group's checkpoints went
        back with the database: a consumer that connects again is served
        from them."""
        floor = self._read_floor
        if floor.went_back(page):
            head = page.head or 0
            self._rewound = True
            # Its end above the floor: written past it since, only the event there tells.
            gone_back = "from %d to %d" if head < floor.position else "under %d and was written past it (its end is %d)"
            log.warning(
                "the log went back " + gone_back + ": restored or failed over? Subscription group %s: consumer %s"
                " is ended with LOG_REWOUND, its checkpoints in memory not committed",
                floor.position,
                head,
                self.spec.name,
                self.member_id,
            )
            self._rewinds.rewound(self.consumer, floor.position, head)
            if self._watch is not None:
                self._watch.went_back(floor.position, head)
            raise LogRewound(
                f"the log went back from position {floor.position} to {head} (restored from an older copy, or"
                " failed over to a standby that lost commits; or it went back and was written past"
                f" {floor.position} since: another event is stored there): the group resumes from its"
                " checkpoints as the database holds them; events delivered after those come again, and those"
                " the log no longer holds are gone (docs/subscriptions.md)",
                metadata={"position": str(floor.position), "log_head": str(head), "group": self.spec.name},
            )
        floor.advance(page)
        self._rewinds.read(floor)

    def _take_page(self, stored_events: Sequence[RecordedEvent], reading: list[_Segment]) -> int:
        """Queue the page's events of the segments read; how many event
        bytes that queued."""
        count = self.spec.segments
        wanted_types = self._wanted_types
        queued = 0
        for stored in stored_events:
            segment = self._segments.get(partition_of(stored.aggregate_id, count))
            if segment is None or stored.position <= segment.read_to or segment not in reading:
                continue
            try:
                events = self._records(stored)
            except EventNotReadable as error:
                self._park_unreadable(segment, stored, error)
                continue
            for event in events:
                if wanted_types and event.event_type not in wanted_types:
                    continue
                entry = segment.outstanding.get(event.event_id)
                if entry is not None or stored.position <= segment.reread_to:
                    # Read before a let-go: queued again only if it was let
                    # go of (sent, or settled, it is not sent twice). Its
                    # entry keeps its place: the checkpoint stays before it.
                    if entry is None or not entry.unread:
                        continue
                    entry.unread = False
                elif segment.found_settled(event.event_id, event.position):
                    continue
                else:
                    segment.outstanding[event.event_id] = _Entry(event.position)
                queue = segment.queues.get(event.aggregate_id)
                if queue is None:
                    queue = segment.queues[event.aggregate_id] = deque()
                    if event.aggregate_id not in segment.busy:
                        self._ready.append((segment, event.aggregate_id))
                queue.append(event)
                self._queued += 1
                self._queued_bytes += len(event.payload)
                size = event.stored_size()
                self._tally.add(size)
                queued += size
        return queued

    def _records(self, stored: RecordedEvent) -> list[RecordedEvent]:
        """``EventReader.records`` of ``stored``; ``EventTooLargeToSend``
        (an ``EventNotReadable``: parked as one) if it is larger than this
        server sends: delivered, it would end the consumer's stream each
        time, and the segment would never get past it."""
        if self._sendable_bytes is not None:
            check_sendable(stored, self._sendable_bytes)
        return self._reader.records(stored)

    def _park_unreadable(self, segment: _Segment, stored: RecordedEvent, error: EventNotReadable) -> None:
        """Park at once, never delivered (``attempts`` 0), an event of a type
        the plugins know that they cannot bring to its current schema (a
        failing upcaster): no consumer could handle it, and holding it would
        stop the segment's checkpoint for good. The events before it are
        delivered as usual; ReplayParked delivers it once a fixed plugin
        reads it. (An event of a type the server does not know at all is
        delivered as stored: ``EventReader.records``.)"""
        if stored.event_id in segment.outstanding or stored.position <= segment.reread_to:
            return  # read again after a let-go: parked the first time
        if segment.found_settled(stored.event_id, stored.position):
            return  # parked by the segment's previous holder
        segment.outstanding[stored.event_id] = _Entry(stored.position)
        segment.parks.append(
            GroupParkedEvent(
                event_id=stored.event_id,
                position=stored.position,
                segment=segment.number,
                aggregate_id=stored.aggregate_id,
                attempts=0,
                reason=f"{error.reason}: {error}"[:1000],
                event_type=stored.event_type,
                parked_at_us=_wall_clock_us(),
            )
        )
        segment.settle(stored.event_id, Outcome.PARKED)
        self._commit_wanted.set()

    def _unqueue(self, queue: deque[RecordedEvent]) -> None:
        """``queue``'s events are no longer this session's to send."""
        self._queued -= len(queue)
        self._queued_bytes -= sum(len(event.payload) for event in queue)
        self._tally.add(-size_of(queue))

    def _let_go(self) -> None:
        """The sweep found the consumer stalled (the stream waiting in one
        write, or on a full window with no answer): let go of the events
        read ahead, not sent yet, and read them again once the consumer
        moves (``written``, ``_answered``).
        Their entries stay, marked ``unread``, where they are among the
        segment's outstanding ones, so the checkpoint never passes them;
        what was sent stays too, to be sent again if it is not answered."""
        self._let_go_count += 1
        for segment in self._segments.values():
            first = None
            for queue in segment.queues.values():
                for event in queue:
                    entry = segment.outstanding.get(event.event_id)
                    if entry is not None:
                        entry.unread = True
                    if first is None or event.position < first:
                        first = event.position
                self._unqueue(queue)
            segment.queues.clear()
            if first is not None and first - 1 < segment.read_to:
                segment.reread_to = max(segment.reread_to, segment.read_to)
                segment.read_to = first - 1
        self._ready.clear()  # every queue is gone; reads queue them again

    async def _wait_for_log(self, position: int) -> None:
        """Until something commits after ``position``, the segments change,
        or the poll interval passes."""
        version = self.keeper.version
        committed = asyncio.ensure_future(self._log.wait_for_commit(position, self._poll))
        changed = asyncio.ensure_future(self.keeper.wait_for_change(version, self._poll))
        try:
            await asyncio.wait((committed, changed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            committed.cancel()
            changed.cancel()

    # -- checkpoints -------------------------------------------------------------

    async def _commit(self) -> None:
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted.clear()
            # Shielded: cancelling the session lets a round in progress
            # finish (the last round waits for it). Its error reaches this
            # task, or, once the session is closing, ends with the session
            # as the last round's does (close()).
            round_ = asyncio.ensure_future(self._commit_round())
            round_.add_done_callback(self._round_done)
            await asyncio.shield(round_)

    @staticmethod
    def _round_done(round_: asyncio.Future[None]) -> None:
        """Mark the round's error heard: once the commits task is cancelled
        nobody awaits the round, and asyncio would log its error as never
        retrieved (a group deleted under closing sessions did)."""
        if not round_.cancelled():
            round_.exception()

    async def _commit_round(self, *, giving_up: bool = False) -> None:
        """Every segment whose checkpoint moved (or that parked events),
        concurrently; replays' settlements. One round at a time: a round
        cut short (cancelled) would leave its segments' stored checkpoints
        unknown, so rounds are only ever cancelled with the session, whose
        last round waits for any round in progress."""
        async with self._committing:
            await self._commit_once(giving_up)

    async def _commit_once(self, giving_up: bool = False) -> None:
        """``giving_up``: the session's last round, which also keeps in the
        store what is settled above each checkpoint (``_commit_segment``)."""
        segments = list(self._segments.values())
        work = [
            self._commit_segment(s, giving_up=giving_up)
            for s in segments
            if (s.to_give_up() if giving_up else s.dirty())
        ]
        unparks: list[str] = []
        if self._unparks:
            unparks, self._unparks = self._unparks, []
            self._unparking.update(unparks)
            work.append(self._groups.unpark(self.spec.name, unparks))
        reparks: list[str] = []
        if self._replay_parks:
            parks, self._replay_parks = self._replay_parks, []
            reparks = [parked.event_id for parked in parks]
            self._reparking.update(reparks)
            work.append(self._groups.repark(self.spec.name, parks))
        dismissals: list[str] = []
        if self._dismissals:
            dismissals, self._dismissals = self._dismissals, []
            self._dismissing.update(dismissals)
            work.append(self._dismiss(dismissals))
        try:
            if work:
                await asyncio.gather(*work)
        finally:
            self._unparking.difference_update(unparks)
            self._reparking.difference_update(reparks)
            self._dismissing.difference_update(dismissals)

    async def _dismiss(self, event_ids: list[str]) -> None:
        # All or none in the store: one dismissed meanwhile by an operator
        # (or gone with its aggregate) is simply left out of a second try.
        # Counted as skipped: they are the consumer's skips of their replays.
        gone = await self._groups.dismiss_parked(self.spec.name, event_ids, skipped=True)
        rest = [event_id for event_id in event_ids if event_id not in set(gone)]
        if gone and rest:
            await self._groups.dismiss_parked(self.spec.name, rest, skipped=True)

    async def _commit_segment(self, segment: _Segment, *, giving_up: bool = False) -> None:
        """Move the segment's checkpoint over what is settled. ``giving_up``
        (the session hands the segment over, or ends): also keep in the
        store the events settled above the checkpoint, behind an unsettled
        one, so the next holder does not deliver them again (a crash loses
        them: the next holder delivers them again, at least once)."""
        if self._rewound:
            return  # read from a log that went back: its positions are not the database's any more
        new_position = segment.checkpoint()
        acknowledged, skipped, parks = segment.acked_passed, segment.skipped_passed, list(segment.parks)
        settles = segment.settles
        settled_ahead = segment.settled_ahead() if giving_up else None
        try:
            await self._groups.commit_segment(
                self.spec.name,
                segment.number,
                expected_position=segment.stored,
                new_position=new_position,
                acknowledged=acknowledged,
                skipped=skipped,
                parked=parks,
                fencing=segment.fencing,
                settled_ahead=settled_ahead,
            )
        except ConcurrencyConflict:
            # The lease moved on (or the group is gone): the segment is the
            # next holder's, from its stored checkpoint.
            state = await self._groups.load_group(self.spec.name)
            if state is None or state.spec.incarnation != self.spec.incarnation:
                raise group_not_found(self.spec.name) from None
            self._drop(segment.number)
            return
        except StoreUnavailable:
            self._commit_wanted.set()  # try again with the next round
            raise
        segment.stored = new_position
        if giving_up:
            segment.kept_settles = settles
        segment.acked_passed -= acknowledged
        segment.skipped_passed -= skipped
        del segment.parks[: len(parks)]


_Timed = tuple[float, int, Delivery]


def _without_stale(heap: list[_Timed], current: Callable[[Delivery, float], bool]) -> list[_Timed]:
    """``heap`` without the entries of settled deliveries, or of those that
    ``current`` says the entry's time no longer stands for."""
    kept = [entry for entry in heap if not entry[2].settled and current(entry[2], entry[0])]
    heapq.heapify(kept)
    return kept


def _segment_of(delivery: Delivery) -> int:
    return delivery.parked.segment if delivery.parked is not None else 0


class SubscriptionGroups:
    """Opens consumer sessions and ends them all when the server shuts down."""

    def __init__(
        self,
        groups: GroupStore,
        log_reader: LogReader,
        reader: EventReader,
        *,
        lease_seconds: float,
        poll_interval: float = 1.0,
        page_size: int = 1000,
        page_bytes: int = 1024 * 1024,
        first_page_size: int = 100,
        held: HeldEvents | None = None,
        replica: Callable[[], LeaseMember] = lambda: LeaseMember("", ""),
        max_message_bytes: int | None = None,
        watch: LogRewindWatch | None = None,
    ) -> None:
        """``watch``: the server's memory of its log's end, told when a
        session finds the log gone back (``processing/log_rewinds.py``).
        ``held``: the server's account of what its subscriptions hold,
        which its consumer sessions share (``ConsumerSession``).
        ``replica``: this server's member id and API address, as its
        sessions report them (known once the server listens).
        ``max_message_bytes``: the server's; its sessions park a stored
        event larger than it sends (processing/sendable.py)."""
        self.store = groups
        self._sendable_bytes = None if max_message_bytes is None else sendable_event_bytes(max_message_bytes)
        self._replica = replica
        self._log = log_reader
        self._reader = reader
        self._lease_seconds = lease_seconds
        self._poll = poll_interval
        self._page_size = page_size
        self._page_bytes = page_bytes
        self._first_page_size = first_page_size
        self.held = held if held is not None else HeldEvents()
        self._sessions: set[ConsumerSession] = set()
        # Per group (its name and incarnation: a group deleted and made
        # again starts afresh; one whose settings were updated does not),
        # what its sessions sent and did not settle.
        self._deliveries: dict[tuple[str, str], Deliveries] = {}
        # Per group (as ``_deliveries``), how far its sessions here read the log.
        self._rewinds: dict[tuple[str, str], GroupRewinds] = {}
        self._watch = watch
        self._closing_sessions: set[asyncio.Future[None]] = set()
        self._closing = False

    @property
    def active(self) -> int:
        return len(self._sessions)

    async def open(self, spec: GroupSpec, *, consumer: str, max_in_flight: int) -> ConsumerSession:
        if self._closing:
            raise shutting_down()
        rewinds = self._rewinds_of(spec)
        await self._check_not_rewound(rewinds, consumer)
        rewinds.served.add(consumer)
        session = ConsumerSession(
            spec,
            consumer=consumer,
            max_in_flight=max_in_flight,
            groups=self.store,
            log_reader=self._log,
            reader=self._reader,
            lease_seconds=self._lease_seconds,
            poll_interval=self._poll,
            page_size=self._page_size,
            page_bytes=self._page_bytes,
            first_page_size=self._first_page_size,
            deliveries=self._deliveries_of(spec),
            held=self.held,
            stalled=self.release,
            replica=self._replica,
            sendable_bytes=self._sendable_bytes,
            rewinds=rewinds,
            watch=self._watch,
        )
        await session.start()
        self._sessions.add(session)
        return session

    def _deliveries_of(self, spec: GroupSpec) -> Deliveries:
        deliveries = self._deliveries.get((spec.name, spec.incarnation))
        if deliveries is None:
            # The group is new here, or was made again (another incarnation):
            # the counts of what it was before are of no use any more.
            for gone in [known for known in self._deliveries if known[0] == spec.name]:
                del self._deliveries[gone]
            deliveries = self._deliveries[spec.name, spec.incarnation] = Deliveries()
        return deliveries

    def _rewinds_of(self, spec: GroupSpec) -> GroupRewinds:
        key = (spec.name, spec.incarnation)
        rewinds = self._rewinds.get(key)
        if rewinds is None:
            # A group made again (another incarnation) read nothing yet.
            for gone in [known for known in self._rewinds if known[0] == spec.name]:
                del self._rewinds[gone]
            rewinds = self._rewinds[key] = GroupRewinds(spec.name)
        return rewinds

    async def _check_not_rewound(self, rewinds: GroupRewinds, consumer: str) -> None:
        """LogRewound when the log went back under what this server's
        sessions of the group read (or went back earlier, found by another
        consumer's session, and ``consumer`` was served the old log): its
        sessions broke with the store (a failover) and this one would start
        afresh from the group's checkpoints, delivering the new events at
        the reused positions as the next ones (``processing/group_rewinds.py``)."""
        told = rewinds.to_tell.pop(consumer, None)
        if told is not None:
            raise rewinds.refusal(*told)
        floor = rewinds.floor
        if not floor.position:
            return
        head = await went_back_under(floor, self._log)
        if head is None:
            return
        rewinds.rewound(consumer, floor.position, head)
        log.warning(
            "the log went back under %d, which subscription group %s had read (its end is %d): restored or failed"
            " over? Consumer %s and the group's other consumers served here before are ended with LOG_REWOUND"
            " once each; the group resumes from its checkpoints as the database holds them",
            floor.position,
            rewinds.group,
            head,
            consumer,
        )
        if self._watch is not None:
            self._watch.went_back(floor.position, head)
        raise rewinds.refusal(floor.position, head)

    def release(self, session: ConsumerSession) -> None:
        """End ``session`` in the background: the stream's status goes out
        at once, while the session commits and gives its segments up.
        Once only: a stalled session is released as it stalls, and again
        by its stream, when gRPC gives up its write."""
        if session not in self._sessions:
            return
        self._sessions.discard(session)
        closing = asyncio.ensure_future(session.close())
        self._closing_sessions.add(closing)
        closing.add_done_callback(self._closing_sessions.discard)

    def close(self) -> None:
        """End every consumer's stream with UNAVAILABLE (SHUTTING_DOWN):
        consumers connect again, to any replica."""
        self._closing = True
        for session in list(self._sessions):
            session.fail(shutting_down())


def shutting_down() -> StoreUnavailable:
    return StoreUnavailable("the server is shutting down; consume again (from any server)", reason="SHUTTING_DOWN")
