"""When to take a snapshot.

A snapshot is saved each time an aggregate's version crosses a multiple of
its interval: the plugin's ``snapshot_every`` for that aggregate type, else
the server-wide default (None or 0 there: never). Crossing, not landing on,
so that a command appending several events cannot step over the point.

The worker counts an aggregate it had to load (not cached) as coming from
the version of the snapshot the load started from, or from version 0 when
it found none it could use (none yet, or only ones taken under another
state fingerprint: ``service.plugins.fingerprint``) and replayed the whole
history. So the first append after such a load saves a snapshot whenever
the aggregate is at or past its interval (waiting for the next multiple
would have every cache miss until then replay it again), and the first
append after a load from a recent snapshot saves none until the next
multiple is crossed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.plugins.api import AggregateType


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    default_every: int | None = None

    def interval(self, aggregate_type: AggregateType[Any]) -> int | None:
        return aggregate_type.snapshot_every or self.default_every or None

    def due(self, aggregate_type: AggregateType[Any], before: int, after: int) -> bool:
        every = self.interval(aggregate_type)
        return every is not None and before // every != after // every
