"""``ProjectionStore`` on PostgreSQL: a projection's checkpoint and its
documents (with their subjects), moved and written in one operation (so one
transaction)."""

from __future__ import annotations

from collections.abc import Sequence

from service.errors import ConcurrencyConflict, SubjectsForgotten
from service.store.leasing import Fencing
from service.store.postgres import sql
from service.store.postgres.connection import Statement
from service.store.postgres.database import Database
from service.store.postgres.errors import Refused
from service.store.postgres.rows import first, rows, scalar
from service.store.records import DocumentRange, DocumentWrite, ParkedEvent, StoredDocument
from service.store.serialization import compact_json
from service.store.sql_common import document_from_row, parked_event_from_row

# First in every operation that reads or writes documents by key (see sql.py).
_BY_KEY = Statement.prepared(sql.BY_KEY_SETTINGS)


class ProjectionsRole:
    _db: Database

    async def projection_position(self, name: str) -> int:
        (result,) = await self._db.run(
            "projection_position", [Statement(sql.PROJECTION_POSITION.encode(), (name,))], read_only=True
        )
        return int(scalar(result) or 0)

    async def start_projection(self, name: str, position: int) -> int | None:
        # The read after the insert is a statement of its own: in READ
        # COMMITTED it sees the row another replica's insert (which this one
        # waited for) committed.
        made, found = await self._db.run(
            "start_projection",
            [
                Statement(sql.START_CHECKPOINT.encode(), (name, position)),
                Statement(sql.PROJECTION_POSITION.encode(), (name,)),
            ],
        )
        return None if first(made) is not None else int(scalar(found))

    async def projection_version(self, name: str) -> int | None:
        (result,) = await self._db.run(
            "projection_version", [Statement(sql.PROJECTION_VERSION.encode(), (name,))], read_only=True
        )
        found = scalar(result)
        return None if found is None else int(found)

    async def start_projection_version(self, name: str, version: int) -> int:
        # The read is a statement of its own, as start_projection's: in READ
        # COMMITTED it sees the row another runner's insert committed.
        _, found = await self._db.run(
            "start_projection_version",
            [
                Statement(sql.START_VERSIONED_CHECKPOINT.encode(), (name, version)),
                Statement(sql.PROJECTION_VERSION.encode(), (name,)),
            ],
        )
        return int(scalar(found))

    async def load_document(self, projection: str, key: str) -> StoredDocument | None:
        *_, result = await self._db.run("load_document", load_document_statements(projection, key), read_only=True)
        row = first(result)
        return None if row is None else document_from_row(row)

    async def load_documents(self, projection: str, keys: Sequence[str]) -> list[StoredDocument]:
        if not keys:
            return []
        statements = load_documents_statements(projection, keys)
        *_, result = await self._db.run("load_documents", statements, read_only=True)
        return [document_from_row(row) for row in rows(result)]

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
        statements = commit_projection_statements(name, expected_position, new_position, writes, fencing, parked)
        try:
            await self._db.run("commit_projection", statements)
        except Refused as refused:
            if refused.code == sql.SUBJECTS_FORGOTTEN:
                raise SubjectsForgotten(refused.detail.split("\n")) from None
            # the checkpoint moved, or (fencing) the lease changed holder
            raise ConcurrencyConflict(f"projection:{name}", expected_position) from None

    async def list_documents(self, projection: str, listing: DocumentRange) -> list[StoredDocument]:
        lower, inclusive, upper = listing.bounds()
        statement = sql.list_documents(
            lower_inclusive=inclusive, upper=upper is not None, descending=listing.descending
        )
        parameters = (projection, lower, *(() if upper is None else (upper,)), listing.limit)
        _, result = await self._db.run(
            "list_documents",
            [Statement(sql.DOCUMENT_PAGE_SETTINGS.encode()), Statement(statement.encode(), parameters, binary=True)],
            read_only=True,
        )
        return [document_from_row(row) for row in rows(result)]

    async def count_documents(self, projection: str, prefix: str, *, limit: int) -> int:
        *_, result = await self._db.run(
            "count_documents", count_documents_statements(projection, prefix, limit), read_only=True
        )
        return int(scalar(result) or 0)

    async def reset_projection(self, name: str, version: int | None = None) -> None:
        await self._db.run(
            "reset_projection",
            [
                Statement(sql.RESET_CHECKPOINT.encode(), (name, version)),
                Statement(sql.RESET_DOCUMENTS.encode(), (name,)),
                Statement(sql.RESET_PARKED_EVENTS.encode(), (name,)),
            ],
        )

    async def stored_projections(self) -> list[tuple[str, int]]:
        # By key too: the walk's probes stay index probes on a table the
        # planner last saw small (test_postgres_plans).
        _, result = await self._db.run(
            "stored_projections", [_BY_KEY, Statement(sql.STORED_PROJECTIONS.encode())], read_only=True
        )
        return [(str(name), int(position)) for name, position in rows(result)]

    async def delete_projection(self, name: str, *, limit: int) -> int:
        _, _, documents, parked = await self._db.run(
            "delete_projection",
            [
                _BY_KEY,
                Statement(sql.DELETE_CHECKPOINT.encode(), (name,)),
                Statement(sql.DELETE_DOCUMENTS_PAGE.encode(), (name, limit)),
                Statement(sql.DELETE_PARKED_EVENTS_PAGE.encode(), (name, limit)),
            ],
        )
        return int(scalar(documents)) + int(scalar(parked))

    async def parked_events(
        self, projection: str, *, after: tuple[int, str] | None = None, limit: int = 100
    ) -> list[ParkedEvent]:
        position, event_id = after if after is not None else (-1, "")
        (result,) = await self._db.run(
            "parked_events",
            [Statement(sql.PARKED_EVENTS.encode(), (projection, position, event_id, limit), binary=True)],
            read_only=True,
        )
        return [parked_event_from_row(row) for row in rows(result)]

    async def count_parked_events(self, projection: str) -> int:
        (result,) = await self._db.run(
            "count_parked_events", [Statement(sql.COUNT_PARKED_EVENTS.encode(), (projection,))], read_only=True
        )
        return int(scalar(result) or 0)

    async def count_parked_commands(self, reaction: str) -> int:
        *_, result = await self._db.run(
            "count_parked_commands", count_parked_commands_statements(reaction), read_only=True
        )
        return int(scalar(result) or 0)

    async def due_documents(self, projection: str, *, until_us: int, limit: int) -> list[StoredDocument]:
        _, result = await self._db.run(
            "due_documents", due_documents_statements(projection, until_us, limit), read_only=True
        )
        return [document_from_row(row) for row in rows(result)]

    async def due_summary(self, projection: str) -> tuple[int, int | None]:
        _, result = await self._db.run("due_summary", due_summary_statements(projection), read_only=True)
        count, soonest = first(result) or (0, None)
        return int(count), None if soonest is None else int(soonest)


def _parked_json(parked: Sequence[ParkedEvent]) -> str:
    return compact_json(
        [
            {
                "position": p.position,
                "event_id": p.event_id,
                "event_type": p.event_type,
                "aggregate_id": p.aggregate_id,
                "error": p.error,
                "attempts": p.attempts,
                "parked_at_us": p.parked_at_us,
            }
            for p in parked
        ]
    )


def load_document_statements(projection: str, key: str) -> list[Statement]:
    return [_BY_KEY, Statement.prepared(sql.LOAD_DOCUMENT, (projection, key), binary=True)]


def count_documents_statements(projection: str, prefix: str, limit: int) -> list[Statement]:
    # The primary key's range, never a scan of the table for a read model
    # planned small (BY_KEY_SETTINGS: test_postgres_plans saw one, its
    # filter reading every row) nor a bitmap of the whole range (the
    # listing's settings), which would not stop at the limit.
    lower, _, upper = DocumentRange(prefix=prefix).bounds()
    statement = sql.count_documents(upper=upper is not None)
    parameters = (projection, lower, *(() if upper is None else (upper,)), limit)
    return [_BY_KEY, Statement(sql.DOCUMENT_PAGE_SETTINGS.encode()), Statement(statement.encode(), parameters)]


def count_parked_commands_statements(reaction: str) -> list[Statement]:
    # From the partial index, planned while it was small or not (BY_KEY_SETTINGS).
    return [_BY_KEY, Statement.prepared(sql.COUNT_PARKED_COMMANDS, (reaction,))]


def due_documents_statements(projection: str, until_us: int, limit: int) -> list[Statement]:
    # From the partial index of documents with a due time, planned while it
    # was small or not (BY_KEY_SETTINGS), as the parked commands' count.
    return [_BY_KEY, Statement(sql.DUE_DOCUMENTS.encode(), (projection, until_us, limit), binary=True)]


def due_summary_statements(projection: str) -> list[Statement]:
    return [_BY_KEY, Statement(sql.DUE_SUMMARY.encode(), (projection,))]


def load_documents_statements(projection: str, keys: Sequence[str]) -> list[Statement]:
    return [_BY_KEY, Statement.prepared(sql.LOAD_DOCUMENTS, (projection, list(dict.fromkeys(keys))), binary=True)]


def commit_projection_statements(
    name: str,
    expected_position: int,
    new_position: int,
    writes: Sequence[DocumentWrite],
    fencing: Fencing | None,
    parked: Sequence[ParkedEvent],
) -> list[Statement]:
    """One commit of a projection: its checkpoint moved, its documents
    written and deleted, its parked events recorded, in one transaction."""
    statements = [_BY_KEY]
    if fencing is not None:
        # First, so that a stale runner writes nothing at all.
        fenced = (fencing.group, fencing.name, fencing.member_id, fencing.epoch)
        statements.append(Statement.prepared(sql.CHECK_FENCING, fenced))
    # The checkpoint's row is made by the first commit (from 0) and never
    # deleted, so later commits only move it.
    if expected_position == 0:
        statements.append(Statement(sql.ENSURE_CHECKPOINT.encode(), (name,)))
    statements.append(Statement.prepared(sql.MOVE_CHECKPOINT, (name, new_position, expected_position)))
    deletes: list[str] = []
    keys: list[str] = []
    type_names: list[str] = []
    data: list[str] = []
    subjects: list[tuple[str, ...]] = []
    due: list[DocumentWrite] = []
    for write in writes:
        if write.data is None:
            deletes.append(write.key)
        elif write.due_us is not None:
            due.append(write)  # a reaction's deadline: rare, a statement of its own
        else:
            keys.append(write.key)
            type_names.append(write.type_name)
            data.append(write.data.hex())
            subjects.append(write.subjects)
    named = compact_json(subjects)  # encoded once: checked, then written
    if due:
        # A reaction's deadlines' subjects are checked with the others.
        checked = compact_json(subjects + [write.subjects for write in due])
        statements.append(Statement.prepared(sql.CHECK_SUBJECTS, (checked,)))
    elif any(subjects):
        statements.append(Statement.prepared(sql.CHECK_SUBJECTS, (named,)))
    if deletes:
        statements.extend(Statement.prepared(sql.DELETE_DOCUMENT, (name, key)) for key in deletes)
    if keys:
        columns = (compact_json(keys), compact_json(type_names), compact_json(data), named)
        statements.append(Statement.prepared(sql.PUT_DOCUMENTS, (name, *columns)))
    if due:
        due_columns = (
            compact_json([write.key for write in due]),
            compact_json([write.type_name for write in due]),
            compact_json([(write.data or b"").hex() for write in due]),
            compact_json([write.subjects for write in due]),
            compact_json([str(write.due_us) for write in due]),
        )
        statements.append(Statement(sql.PUT_DUE_DOCUMENTS.encode(), (name, *due_columns)))
    if parked:
        statements.append(Statement(sql.PARK_EVENTS.encode(), (name, _parked_json(parked))))
    return statements
