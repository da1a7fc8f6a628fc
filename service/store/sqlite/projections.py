"""``ProjectionStore`` on SQLite: a projection's checkpoint and its
documents (with their subjects), moved and written in one transaction."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from service.errors import ConcurrencyConflict, SubjectsForgotten
from service.store.leasing import Fencing
from service.store.records import DocumentRange, DocumentWrite, ParkedEvent, StoredDocument
from service.store.sql_common import document_from_row, parked_event_from_row, parked_event_row
from service.store.sqlite import sql
from service.store.sqlite.leases import still_held
from service.store.sqlite.writer import Writer, writing


class ProjectionsRole:
    _writer: Writer

    async def projection_position(self, name: str) -> int:
        return await self._writer.run(_position, name)

    async def start_projection(self, name: str, position: int) -> int | None:
        return await self._writer.run(_start, name, position)

    async def projection_version(self, name: str) -> int | None:
        row = await self._writer.run(lambda db: db.execute(sql.PROJECTION_VERSION, (name,)).fetchone())
        return None if row is None else int(row[0])

    async def start_projection_version(self, name: str, version: int) -> int:
        return await self._writer.run(_start_version, name, version)

    async def load_document(self, projection: str, key: str) -> StoredDocument | None:
        row = await self._writer.run(lambda db: db.execute(sql.LOAD_DOCUMENT, (projection, key)).fetchone())
        return None if row is None else document_from_row(row)

    async def load_documents(self, projection: str, keys: Sequence[str]) -> list[StoredDocument]:
        if not keys:
            return []
        wanted = json.dumps(list(dict.fromkeys(keys)))
        found = await self._writer.run(lambda db: db.execute(sql.LOAD_DOCUMENTS, (projection, wanted)).fetchall())
        return [document_from_row(row) for row in found]

    async def commit_projection(
        self,
        name: str,
        *,
        expected_position: int,
        new_position: int,
        writes: Sequence[DocumentWrite],
        fencing: Fencing | None = None,
        parked: Sequence[ParkedEvent] = (),
    ) -> None:
        await self._writer.run(_commit, name, expected_position, new_position, writes, parked, fencing)

    async def count_documents(self, projection: str, prefix: str, *, limit: int) -> int:
        lower, _, upper = DocumentRange(prefix=prefix).bounds()
        statement = sql.count_documents(upper=upper is not None)
        parameters = (projection, lower, *(() if upper is None else (upper,)), limit)
        row = await self._writer.run(lambda db: db.execute(statement, parameters).fetchone())
        return int(row[0])

    async def list_documents(self, projection: str, listing: DocumentRange) -> list[StoredDocument]:
        lower, inclusive, upper = listing.bounds()
        statement = sql.list_documents(
            lower_inclusive=inclusive, upper=upper is not None, descending=listing.descending
        )
        parameters = (projection, lower, *(() if upper is None else (upper,)), listing.limit)
        rows = await self._writer.run(lambda db: db.execute(statement, parameters).fetchall())
        return [document_from_row(row) for row in rows]

    async def reset_projection(self, name: str, version: int | None = None) -> None:
        await self._writer.run(_reset, name, version)

    async def stored_projections(self) -> list[tuple[str, int]]:
        rows = await self._writer.run(lambda db: db.execute(sql.STORED_PROJECTIONS).fetchall())
        return [(str(name), int(position)) for name, position in rows]

    async def delete_projection(self, name: str, *, limit: int) -> int:
        return await self._writer.run(_delete_page, name, limit)

    async def parked_events(
        self, projection: str, *, after: tuple[int, str] | None = None, limit: int = 100
    ) -> list[ParkedEvent]:
        position, event_id = after if after is not None else (-1, "")
        rows = await self._writer.run(
            lambda db: db.execute(sql.PARKED_EVENTS, (projection, position, event_id, limit)).fetchall()
        )
        return [parked_event_from_row(row) for row in rows]

    async def count_parked_events(self, projection: str) -> int:
        row = await self._writer.run(lambda db: db.execute(sql.COUNT_PARKED_EVENTS, (projection,)).fetchone())
        return int(row[0])

    async def count_parked_commands(self, reaction: str) -> int:
        row = await self._writer.run(lambda db: db.execute(sql.COUNT_PARKED_COMMANDS, (reaction,)).fetchone())
        return int(row[0])

    async def due_documents(self, projection: str, *, until_us: int, limit: int) -> list[StoredDocument]:
        rows = await self._writer.run(
            lambda db: db.execute(sql.DUE_DOCUMENTS, (projection, until_us, limit)).fetchall()
        )
        return [document_from_row(row) for row in rows]

    async def due_summary(self, projection: str) -> tuple[int, int | None]:
        count, soonest = await self._writer.run(lambda db: db.execute(sql.DUE_SUMMARY, (projection,)).fetchone())
        return int(count), None if soonest is None else int(soonest)


def _position(db: sqlite3.Connection, name: str) -> int:
    row = db.execute(sql.PROJECTION_POSITION, (name,)).fetchone()
    return int(row[0]) if row else 0


def _start(db: sqlite3.Connection, name: str, position: int) -> int | None:
    """Read and written under the write lock: one start wins."""
    with writing(db):
        row = db.execute(sql.PROJECTION_POSITION, (name,)).fetchone()
        if row is None:
            db.execute(sql.START_CHECKPOINT, (name, position))
            return None
        return int(row[0])


def _start_version(db: sqlite3.Connection, name: str, version: int) -> int:
    """Read and written under the write lock: one first run records its version."""
    with writing(db):
        row = db.execute(sql.PROJECTION_VERSION, (name,)).fetchone()
        if row is None:
            db.execute(sql.START_VERSIONED_CHECKPOINT, (name, version))
            return version
        return int(row[0])


def _commit(
    db: sqlite3.Connection,
    name: str,
    expected_position: int,
    new_position: int,
    writes: Sequence[DocumentWrite],
    parked: Sequence[ParkedEvent],
    fencing: Fencing | None,
) -> None:
    """The checkpoint is the guard: read under the write lock, so of two
    runners of one projection the second finds it moved. The fencing token,
    read under the same lock, stops a runner that lost the lease to another
    process even when the checkpoint is where it read it (a rebuild moved it
    back)."""
    with writing(db):
        current = _position(db, name)
        if current != expected_position:
            raise ConcurrencyConflict(f"projection:{name}", expected_position, current=current)
        if fencing is not None and not still_held(db, fencing):
            raise ConcurrencyConflict(f"projection:{name}", expected_position)
        subjects = sorted({subject for write in writes if write.data is not None for subject in write.subjects})
        if subjects:
            forgotten = [row[0] for row in db.execute(sql.FORGOTTEN_SUBJECTS, (json.dumps(subjects),))]
            if forgotten:
                raise SubjectsForgotten(forgotten)
        for write in writes:
            db.execute(sql.DELETE_STALE_SUBJECTS, (name, write.key, json.dumps(write.subjects)))
            if write.data is None:
                db.execute(sql.DELETE_DOCUMENT, (name, write.key))
            else:
                db.execute(sql.PUT_DOCUMENT, (name, write.key, write.type_name, write.data, write.due_us))
                for subject in write.subjects:
                    db.execute(sql.PUT_DOCUMENT_SUBJECT, (name, write.key, subject))
        for event in parked:
            db.execute(sql.PARK_EVENT, parked_event_row(event))
        db.execute(sql.MOVE_CHECKPOINT, (name, new_position))


def _reset(db: sqlite3.Connection, name: str, version: int | None) -> None:
    with writing(db):
        db.execute(sql.RESET_DOCUMENTS, (name,))
        db.execute(sql.RESET_SUBJECTS, (name,))
        db.execute(sql.RESET_PARKED_EVENTS, (name,))
        db.execute(sql.RESET_CHECKPOINT, (version, name))


def _delete_page(db: sqlite3.Connection, name: str, limit: int) -> int:
    with writing(db):
        db.execute(sql.DELETE_CHECKPOINT, (name,))
        keys = [row[0] for row in db.execute(sql.DOCUMENT_KEYS_PAGE, (name, limit))]
        for key in keys:
            db.execute(sql.DELETE_DOCUMENT, (name, key))
            # Subjects kept but none: every subject row of the key goes with it.
            db.execute(sql.DELETE_STALE_SUBJECTS, (name, key, "[]"))
        parked = db.execute(sql.DELETE_PARKED_EVENTS_PAGE, (name, limit)).rowcount
        return len(keys) + parked
