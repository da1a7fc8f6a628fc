"""``SnapshotStore`` on SQLite: the newest ``keep_snapshots`` per aggregate,
pruned in the transaction that saves a new one."""

from __future__ import annotations

import sqlite3

from service.store.base import SnapshotKind
from service.store.records import TOMBSTONE_EVENT_TYPE, Snapshot
from service.store.sql_common import snapshot_from_row, snapshot_params
from service.store.sqlite import sql
from service.store.sqlite.writer import Writer, writing


class SnapshotsRole:
    _writer: Writer
    _keep_snapshots: int

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        await self._writer.run(_save_snapshot, snapshot, self._keep_snapshots)

    async def load_snapshot(
        self, aggregate_id: str, *, at_most: int | None = None, kind: SnapshotKind | None = None
    ) -> Snapshot | None:
        params: tuple[object, ...]
        if kind is None:
            statement, params = sql.LOAD_SNAPSHOT, (aggregate_id, at_most)
        else:
            statement = sql.LOAD_SNAPSHOT_OF_KIND
            params = (aggregate_id, at_most, kind.aggregate_type, kind.state_type, kind.schema_version)
        row = await self._writer.run(lambda db: db.execute(statement, params).fetchone())
        return None if row is None else snapshot_from_row(row)


def _save_snapshot(db: sqlite3.Connection, snapshot: Snapshot, keep: int) -> None:
    with writing(db):
        through = snapshot.through_event_id
        db.execute(
            sql.SAVE_SNAPSHOT,
            (
                *snapshot_params(snapshot),
                snapshot.aggregate_id,
                TOMBSTONE_EVENT_TYPE,
                through,
                snapshot.aggregate_id,
                snapshot.version,
                through,
            ),
        )
        db.execute(sql.PRUNE_SNAPSHOTS, (snapshot.aggregate_id, snapshot.aggregate_id, keep - 1))
