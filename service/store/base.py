"""The ``EventStore`` protocol: what the processor needs from storage.

Three adapters implement it (memory, SQLite, PostgreSQL) and all pass the
same contract suite in ``tests/contract``. Adapters document only where they
differ from what is written here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from service.store.records import AggregateHead, CommandRecord, NewEvent, RecordedEvent, Snapshot


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
    ) -> list[RecordedEvent]:
        """Append ``events`` as versions ``expected_version + 1`` onward.

        All or nothing, in one transaction together with ``commands`` (the
        records that make command ids idempotent; several for a batch).
        Raises ``CommandAlreadyRecorded`` if a command id is already recorded
        (checked first, so a retry is recognised even when the aggregate
        moved on) and ``ConcurrencyConflict`` if the aggregate is not at
        ``expected_version`` (0: it must have no events).

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

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Keep ``snapshot`` as the aggregate's latest, unless a newer one exists."""

    async def load_snapshot(self, aggregate_id: str) -> Snapshot | None:
        """The aggregate's latest snapshot, or None."""
