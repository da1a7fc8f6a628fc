"""``SnapshotStore`` on PostgreSQL: the newest ``keep_snapshots`` per
aggregate, pruned in the operation that saves a new one."""

from __future__ import annotations

from service.store.base import DEFAULT_KEEP_SNAPSHOTS, SnapshotKind
from service.store.postgres import sql
from service.store.postgres.connection import Statement
from service.store.postgres.database import Database
from service.store.postgres.rows import first, in_order, rows
from service.store.records import TOMBSTONE_EVENT_TYPE, RecordedEvent, Snapshot
from service.store.sql_common import event_from_row, snapshot_from_row, snapshot_params


class SnapshotsRole:
    _db: Database
    _keep_snapshots: int

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        await self._db.run(
            "save_snapshot",
            [
                Statement(sql.SNAPSHOT_LOCK_LAST_EVENT.encode(), (snapshot.aggregate_id,)),
                Statement(
                    sql.SAVE_SNAPSHOT.encode(),
                    (*snapshot_params(snapshot), TOMBSTONE_EVENT_TYPE, snapshot.through_event_id),
                ),
                Statement(sql.PRUNE_SNAPSHOTS.encode(), (snapshot.aggregate_id, self._keep_snapshots - 1)),
            ],
        )

    async def load_snapshot(
        self, aggregate_id: str, *, at_most: int | None = None, kind: SnapshotKind | None = None
    ) -> Snapshot | None:
        params: tuple[object, ...]
        if kind is None:
            statement, params = sql.LOAD_SNAPSHOT, (aggregate_id, at_most)
        else:
            statement = sql.LOAD_SNAPSHOT_OF_KIND
            params = (aggregate_id, at_most, *_kind_params(kind), self._keep_snapshots)
        (result,) = await self._db.run(
            "load_snapshot", [Statement(statement.encode(), params, binary=True)], read_only=True
        )
        row = first(result)
        return None if row is None else snapshot_from_row(row)

    async def load_from_snapshot(
        self, aggregate_id: str, kind: SnapshotKind, *, to_version: int | None = None
    ) -> tuple[Snapshot | None, list[RecordedEvent]] | None:
        """The latest snapshot ``kind`` can use and the events after it in
        one round trip (a cold aggregate's load took two: the snapshot, then
        what follows)."""
        _, snapshot_result, events_result = await self._db.run(
            "load_from_snapshot",
            load_from_snapshot_statements(aggregate_id, kind, to_version, self._keep_snapshots),
            read_only=True,
        )
        row = first(snapshot_result)
        snapshot = None if row is None else snapshot_from_row(row)
        loaded = rows(events_result)
        floor = int(loaded[0][0])
        if floor != (snapshot.version if snapshot is not None else 0):
            return None  # the latest snapshot changed between the two statements
        events = in_order([event_from_row(row[1:]) for row in loaded if row[1] is not None], _version)
        return snapshot, list(events)


def _version(event: RecordedEvent) -> int:
    return event.version


# First in an aggregate's load (see sql.py: its prepared statements keep the
# plan they were first given, and the snapshots table starts empty).
_BY_KEY = Statement.prepared(sql.BY_KEY_SETTINGS)


def load_from_snapshot_statements(
    aggregate_id: str, kind: SnapshotKind, to_version: int | None, keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS
) -> list[Statement]:
    return [
        _BY_KEY,
        Statement.prepared(
            sql.LOAD_SNAPSHOT_OF_KIND, (aggregate_id, to_version, *_kind_params(kind), keep_snapshots), binary=True
        ),
        Statement.prepared(
            sql.EVENTS_AFTER_SNAPSHOT, (aggregate_id, *_kind_params(kind), to_version, keep_snapshots), binary=True
        ),
    ]


def _kind_params(kind: SnapshotKind) -> tuple[str, str, int]:
    return kind.aggregate_type, kind.state_type, kind.schema_version
