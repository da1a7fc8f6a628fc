"""The ``EventStore`` protocol: what the processor needs from storage.

Three adapters implement it (memory, SQLite, PostgreSQL) and all pass the
same contract suite in ``tests/contract``. Adapters document only where they
differ from what is written here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from service.store.records import AggregateHead, ClaimChange, CommandRecord, NewEvent, RecordedEvent, Snapshot


@dataclass(frozen=True, slots=True)
class AggregateQuery:
    """Which of an aggregate's events to read.

    Versions are inclusive bounds. ``event_types`` empty means all types;
    ``origin`` None means any origin. ``backwards`` returns the newest first
    (``from_version`` is then ignored unless set; ``to_version`` caps).
    """

    from_version: int = 1
    to_version: int | None = None
    origin: str | None = None
    event_types: frozenset[str] = frozenset()
    limit: int | None = None
    backwards: bool = False


class EventStore(Protocol):
    async def open(self) -> None:
        """Connect and create or migrate the schema. Idempotent."""

    async def close(self) -> None:
        """Release connections. The store is unusable afterwards."""

    async def ping(self) -> None:
        """Return if the store can serve requests, raise StoreUnavailable if not."""

    async def append(
        self,
        aggregate_id: str,
        events: Sequence[NewEvent],
        expected_version: int,
        *,
        commands: Sequence[CommandRecord] = (),
        claims: Sequence[ClaimChange] = (),
    ) -> list[RecordedEvent]:
        """Append ``events`` as versions ``expected_version + 1`` onward.

        All or nothing, in one transaction together with ``commands`` (the
        records that make command ids idempotent; several for a batch) and
        ``claims`` (uniqueness claims taken or released for
        ``aggregate_id``, applied in order). Checked in this order, the
        first failure raising and writing nothing:

        1. ``CommandAlreadyRecorded`` if a command id is already recorded
           (first, so a retry is recognised even when the aggregate moved on);
        2. ``ConcurrencyConflict`` if the aggregate is not at
           ``expected_version`` (0: it must have no events);
        3. ``NotUnique`` if a claimed value is held by another aggregate.
           Claiming a value the aggregate already holds, or releasing one it
           does not hold, changes nothing. The database enforces this (a
           unique constraint on scope and value), so concurrent appends by
           several replicas cannot both take one value.

        The version is checked even when ``events`` is empty: recording that
        a command changed nothing, or was refused, is only right if it was
        decided on the aggregate's latest state.
        """

    async def find_command(self, command_id: str) -> CommandRecord | None:
        """The record of a command id, or None."""

    async def head(self, aggregate_id: str) -> AggregateHead | None:
        """The aggregate's type and latest version, or None if it has no events."""

    async def read_aggregate(self, aggregate_id: str, query: AggregateQuery = AggregateQuery()) -> list[RecordedEvent]:
        """The aggregate's events matching ``query``, in version order
        (descending when ``query.backwards``)."""

    async def version_at(self, aggregate_id: str, timestamp_us: int) -> int:
        """The aggregate's version as of ``timestamp_us`` (microseconds since
        the epoch): the last version of the longest run of events from
        version 1 whose timestamps are all at or before it. 0 if the first
        event is later (or there is none). Defined over the prefix because
        clocks of different writers may disagree: versions, not timestamps,
        order an aggregate's events."""

    async def claim_owner(self, scope: str, value: str) -> str | None:
        """The aggregate holding ``value`` in ``scope``, or None."""

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Keep ``snapshot`` beside the aggregate's earlier ones (replacing
        one at the same version), so that past versions load from a
        snapshot too."""

    async def load_snapshot(self, aggregate_id: str, *, at_most: int | None = None) -> Snapshot | None:
        """The aggregate's latest snapshot, or with ``at_most`` the latest at
        or below that version; None if there is none."""
