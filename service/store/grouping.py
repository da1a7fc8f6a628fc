"""What the subscription-group role (``base.GroupStore``) reads and writes.

A *subscription group* reads the log through a filter from a start
position; its consumers share the events (``service/groups.py``).
The aggregate ids are cut into ``segments`` by the partition hash
(``service/cluster/hashing.py``); each segment has a checkpoint of its own:
the position up to which every event of the segment was acknowledged or
parked (its contiguous acknowledged prefix). Consumers hold segments by
leases of the lease group ``consumer_group(name)``; a segment's checkpoint
moves only under its holder's fencing token. Events that failed too often
are *parked*: kept aside, listed, replayed on request.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, replace

from service.store.leasing import LeaseView
from service.store.records import LogFilter

GROUP_LEASE_PREFIX = "subscription-group:"


def consumer_group(name: str) -> str:
    """The lease group whose members are the consumers of group ``name``
    and whose leases (named by segment number) are its segments."""
    return GROUP_LEASE_PREFIX + name


def segment_lease(segment: int) -> str:
    return str(segment)


# How many ack timeouts in a row a consumer may let pass without an answer
# before it is cut (GroupSpec.max_unanswered_timeouts): below the default
# max_attempts (5), so a consumer that answers nothing is cut before it has
# used up its events' attempts, and a consumer that answers gets them.
DEFAULT_UNANSWERED_TIMEOUTS = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupSpec:
    """A group's settings, fixed when it is created. Durations in
    milliseconds."""

    name: str
    log_filter: LogFilter = LogFilter()
    start_position: int = 0
    segments: int = 16
    max_attempts: int = 5
    retry_backoff_ms: int = 1000
    max_retry_backoff_ms: int = 60_000
    ack_timeout_ms: int = 30_000
    # A consumer whose deliveries time out this many times in a row with no
    # ack or nack from it (each timeout of a delivery sent after the one
    # before it) is cut, its segments to the others (service/groups.py,
    # ``ConsumerSession._count_unanswered``); 0: never.
    max_unanswered_timeouts: int = DEFAULT_UNANSWERED_TIMEOUTS
    # Which creation of the name this is: drawn by the store each time it
    # creates the group (``incarnated``), "" for groups created before
    # stores kept one. A group deleted and created again with the same
    # settings is another group: what a replica remembers of the first (the
    # delivery attempts it counted) must not carry over to it.
    incarnation: str = ""

    def incarnated(self) -> GroupSpec:
        """These settings as a new group's, with an incarnation of its own."""
        return replace(self, incarnation=uuid.uuid4().hex)

    def filter_json(self) -> str:
        """The filter as the SQL stores keep it."""
        kept: dict[str, object] = {
            "aggregate_types": sorted(self.log_filter.aggregate_types),
            "event_types": sorted(self.log_filter.event_types),
            "origin": self.log_filter.origin,
        }
        if self.log_filter.aggregate_id_prefix is not None:
            # A tenant's group (created by a tenant-scoped principal): kept in
            # the filter it already stores, so no column to migrate; the key
            # is absent for every other group, whose JSON stays as it was.
            kept["aggregate_id_prefix"] = self.log_filter.aggregate_id_prefix
        return json.dumps(kept, separators=(",", ":"))


# What UpdateGroup may change on a group being consumed: each session reads
# these afresh from the store (its lease sweep). Not the filter (what was
# settled under the old one is not read again) nor the segments (each
# segment's checkpoint is of the partition by the old count).
UPDATABLE_SETTINGS = (
    "max_attempts",
    "retry_backoff_ms",
    "max_retry_backoff_ms",
    "ack_timeout_ms",
    "max_unanswered_timeouts",
)


def updatable_params(spec: GroupSpec) -> tuple[object, ...]:
    """The updatable settings, then the name and incarnation that pick the group."""
    return (*(getattr(spec, setting) for setting in UPDATABLE_SETTINGS), spec.name, spec.incarnation)


def filter_from_json(text: str) -> LogFilter:
    data = json.loads(text)
    return LogFilter(
        aggregate_types=frozenset(data.get("aggregate_types") or ()),
        event_types=frozenset(data.get("event_types") or ()),
        origin=data.get("origin") or None,
        aggregate_id_prefix=data.get("aggregate_id_prefix") or None,
    )


@dataclass(frozen=True, slots=True)
class SegmentCheckpoint:
    """Where one segment of a group stands: every event of the segment up
    to ``position`` was acknowledged, skipped or parked. Each event is
    counted once, in one place: ``acknowledged`` the acknowledged ones and
    ``skipped`` the skipped ones (when the checkpoint passed it, or when its
    replay was acknowledged or skipped: parking passed it uncounted), and
    ``dismissed`` the parked ones an operator dismissed; those parked now
    are the group's parked rows."""

    segment: int
    position: int
    acknowledged: int = 0
    skipped: int = 0
    dismissed: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerReport:
    """What a consumer's session says of it at each heartbeat
    (``GroupStore.report_consumer``), kept in the store so that every
    replica can show it, not only the one the consumer is connected to.
    Ages are seconds: as written, before the report; as read back
    (``load_group``), before the read, by the store's clock."""

    replica_id: str  # the member id of the replica the consumer is connected to
    replica_address: str  # that replica's API address
    in_flight: int  # events delivered and not yet acked or nacked
    answered_ago: float | None = None  # since the consumer's last ack or nack; None: none yet
    heard_ago: float = 0.0  # since the report was written (0 as written)
    # Since the session joined the group: kept as its first report said it
    # (each later one says the same, give or take its clock's reading).
    # None: reported by a server of an older version.
    connected_ago: float | None = None


@dataclass(frozen=True, slots=True)
class GroupConsumer:
    """A live consumer of a group, the segments it holds, and its session's
    last report (None before its first, or from a server that writes none)."""

    consumer: str
    segments: tuple[int, ...]
    report: ConsumerReport | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupState:
    """A group as one read saw it."""

    spec: GroupSpec
    checkpoints: tuple[SegmentCheckpoint, ...]
    parked: int = 0
    consumers: tuple[GroupConsumer, ...] = ()

    @property
    def position(self) -> int:
        return min((c.position for c in self.checkpoints), default=self.spec.start_position)

    @property
    def acknowledged(self) -> int:
        return sum(c.acknowledged for c in self.checkpoints)

    @property
    def skipped(self) -> int:
        return sum(c.skipped for c in self.checkpoints)

    @property
    def dismissed(self) -> int:
        return sum(c.dismissed for c in self.checkpoints)

    def checkpoint(self, segment: int) -> SegmentCheckpoint:
        return self.checkpoints[segment]


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupParkedEvent:
    """An event a group gave up delivering after ``attempts`` deliveries;
    ``replaying`` while a replay was asked for and not acknowledged.
    ``event_type`` and ``parked_at_us`` (when it was last parked, in
    microseconds since the epoch) are what an operator triages by; a row
    parked by a version from before them reads "" and 0: unknown."""

    event_id: str
    position: int
    segment: int
    aggregate_id: str
    attempts: int
    reason: str
    replaying: bool = False
    event_type: str = ""
    parked_at_us: int = 0


@dataclass(frozen=True, slots=True)
class SettledEvent:
    """An event of a segment settled above the segment's checkpoint (an
    older event of the segment still unsettled kept the checkpoint before
    it), kept when its holder gives the segment up in order, so the next
    holder does not deliver it again (``GroupStore.commit_segment``).
    ``outcome``: ``acked``, ``skipped`` or ``parked`` (its parked row stands
    for it), which says what the group counts it as once the checkpoint
    passes it."""

    event_id: str
    position: int
    outcome: str


def consumers_of(
    members: tuple[str, ...], owners: dict[int, str], reports: dict[str, ConsumerReport] | None = None
) -> tuple[GroupConsumer, ...]:
    """The live ``members`` (member ids) with the segments each holds
    (``owners``: segment → member id) and their last reports (``reports``:
    member id → report; a member's without one is None)."""
    held: dict[str, list[int]] = {member: [] for member in members}
    for segment, owner in sorted(owners.items()):
        if owner in held:
            held[owner].append(segment)
    known = reports or {}
    return tuple(GroupConsumer(member, tuple(segments), known.get(member)) for member, segments in sorted(held.items()))


def owners_from_view(view: LeaseView) -> tuple[tuple[str, ...], dict[int, str]]:
    """A consumer group's lease view as ``consumers_of`` takes it."""
    owners = {int(lease.name): lease.owner for lease in view.leases if lease.owner is not None and lease.name.isdigit()}
    return tuple(m.member_id for m in view.members), owners
