"""``SnapshotStore`` on PostgreSQL: the newest ``keep_snapshots`` per
aggregate, pruned in the operation that saves a new one."""

from __future__ import annotations

from service.store.postgres import sql
from service.store.postgres.connection import Statement
from service.store.postgres.database import Database
from service.store.postgres.rows import first
from service.store.records import Snapshot
from service.store.sql_common import snapshot_from_row, snapshot_params


class SnapshotsRole:
    _db: Database
    _keep_snapshots: int

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        await self._db.run(
            "save_snapshot",
            [
                Statement(sql.SAVE_SNAPSHOT.encode(), snapshot_params(snapshot)),
                Statement(sql.PRUNE_SNAPSHOTS.encode(), (snapshot.aggregate_id, self._keep_snapshots - 1)),
            ],
        )

    async def load_snapshot(self, aggregate_id: str, *, at_most: int | None = None) -> Snapshot | None:
        (result,) = await self._db.run(
            "load_snapshot",
            [Statement(sql.LOAD_SNAPSHOT.encode(), (aggregate_id, at_most), binary=True)],
            read_only=True,
        )
        row = first(result)
        return None if row is None else snapshot_from_row(row)
