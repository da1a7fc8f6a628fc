"""What an export read after its events may carry: only what those events
cover, so that an export of a running store is a consistent copy up to its
``log_head``.

The exporter reads the log's head first, then the events up to it, then
snapshots, claims and command records, each read when its turn comes: a
command decided after the head (a deposit, an aggregate's creation) is in
the store by then, its events are not in the export. Imported, such a
record would answer a retry "replayed" with whatever event later takes its
version (the command lost, the client told it succeeded), or, sealed under
a data key minted after the keys were read, never open (DATA_LOSS). So a
record is kept only where the events up to the head reach:

- a command record whose last version's event is at or below the head (a
  deleted aggregate's: its tombstone, after the events it replaced; one
  that appended nothing on an aggregate with no events, a refusal at
  version 0, has no event to look at: it is kept, and its aggregate's data
  key is sent after it, since that key may be younger than the keys read
  first);
- a snapshot whose version's event is at or below the head;
- a claim whose holder's first event is at or below the head (a claim is
  the holder's present state, not its state at the head: an aggregate
  created after the head holds nothing in the export).

Each look-up reads one event of the store; those of one page are
remembered for that page only, so memory stays bounded whatever the
store's size.
"""

from __future__ import annotations

from service.store.base import AggregateQuery, Store


class HeadBound:
    """Whether an aggregate's version is among the events an export holds:
    its event at or below ``head``."""

    def __init__(self, store: Store, head: int) -> None:
        self._store = store
        self._head = head
        self._known: dict[tuple[str, int], bool] = {}

    def next_page(self) -> None:
        """Forget the look-ups of the page before (bounded memory)."""
        self._known.clear()

    async def covers(self, aggregate_id: str, version: int) -> bool:
        """Whether the exported events of ``aggregate_id`` reach ``version``:
        its first event at or after it is at or below the head. (At or
        after: a deleted aggregate keeps only its tombstone, at the version
        after the events it replaced, and its command records stay covered.)"""
        known = self._known.get((aggregate_id, version))
        if known is None:
            events = await self._store.events.read_aggregate(
                aggregate_id, AggregateQuery(from_version=version, limit=1)
            )
            known = bool(events) and events[0].position <= self._head
            self._known[(aggregate_id, version)] = known
        return known
