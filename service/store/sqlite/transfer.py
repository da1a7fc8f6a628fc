"""``Transfer`` on SQLite: everything the file holds, read out in pages, and
imports written one batch per write transaction (so an interrupted import
leaves whole batches, and running it again writes only what is missing)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TypeVar

from service.errors import ConcurrencyConflict
from service.store.claim_scope_names import TENANT_SCOPE_MARK, declared_scope, tenant_scopes_range
from service.store.importing import check_snapshots, claim_conflict, data_key_conflict, events_to_write
from service.store.notifier import CommitNotifier
from service.store.records import (
    AggregateLastEvent,
    CommandRecord,
    DataKey,
    HeldClaim,
    NewEvent,
    RecordedEvent,
    Snapshot,
    is_tombstone,
)
from service.store.serialization import dump_metadata
from service.store.sql_common import (
    claim_from_row,
    command_from_row,
    command_params,
    data_key_from_row,
    event_from_row,
    snapshot_from_row,
    snapshot_params,
)
from service.store.sqlite import sql
from service.store.sqlite.keys import empty_wal, forget
from service.store.sqlite.writer import Writer, writing

_OfAggregate = TypeVar("_OfAggregate", Snapshot, HeldClaim)


class TransferRole:
    _writer: Writer
    _commits: CommitNotifier

    async def data_keys_page(self, after: str, limit: int) -> list[DataKey]:
        rows = await self._writer.run(lambda db: db.execute(sql.DATA_KEYS_PAGE, (after, limit)).fetchall())
        return [data_key_from_row(row) for row in rows]

    async def snapshots_page(
        self, after: tuple[str, int], limit: int, *, aggregate_id: str | None = None
    ) -> list[Snapshot]:
        params: tuple[object, ...]
        if aggregate_id is None:
            statement, params = sql.SNAPSHOTS_PAGE, (*after, limit)
        else:
            statement, params = sql.SNAPSHOTS_OF_PAGE, (aggregate_id, *after, limit)
        rows = await self._writer.run(lambda db: db.execute(statement, params).fetchall())
        return [snapshot_from_row(row) for row in rows]

    async def claims_page(
        self, after: tuple[str, str], limit: int, *, aggregate_id: str | None = None
    ) -> list[HeldClaim]:
        params: tuple[object, ...]
        if aggregate_id is None:
            statement, params = sql.CLAIMS_PAGE, (*after, limit)
        else:
            statement, params = sql.CLAIMS_OF_PAGE, (aggregate_id, *after, limit)
        rows = await self._writer.run(lambda db: db.execute(statement, params).fetchall())
        return [claim_from_row(row) for row in rows]

    async def holds_tenant_claims(self, scope: str) -> bool:
        """``base.TenantClaimsProbe``: on the claims' primary key, whose
        text compares in code point order (BINARY)."""
        bounds = tenant_scopes_range(scope)
        return await self._writer.run(lambda db: db.execute(sql.TENANT_CLAIMS_OF_SCOPE, bounds).fetchone() is not None)

    async def tenant_claim_scopes(self) -> list[str]:
        """``base.TenantClaimsProbe``: a walk over the primary key, one
        probe per global scope and one per scope of tenants' claims (past
        all its tenants at once)."""
        found: list[str] = []
        after = ""
        while row := await self._writer.run(_next_claims_scope, after):
            stored = row[0]
            if TENANT_SCOPE_MARK in stored:
                found.append(declared_scope(stored))
                after = tenant_scopes_range(found[-1])[1]
            else:
                # The next scope after this one's values: scopes hold no
                # control character, so none sorts between it and chr(1).
                after = stored + chr(1)
        return found

    async def commands_page(self, after: str, limit: int) -> list[CommandRecord]:
        rows = await self._writer.run(lambda db: db.execute(sql.COMMANDS_PAGE, (after, limit)).fetchall())
        return [command_from_row(row) for row in rows]

    async def forgotten_aggregates(self, aggregate_ids: Sequence[str]) -> set[str]:
        if not aggregate_ids:
            return set()
        return await self._writer.run(_forgotten, aggregate_ids)

    async def import_events(self, events: Sequence[RecordedEvent], *, replacing: Sequence[str] = ()) -> int:
        written, last = await self._writer.run(_import_events, events, replacing)
        if last:
            self._commits.notify(last)
        return written

    async def import_snapshots(self, snapshots: Sequence[Snapshot]) -> int:
        return await self._writer.run(_import_snapshots, snapshots)

    async def import_claims(self, claims: Sequence[HeldClaim], *, released: Sequence[HeldClaim] = ()) -> int:
        return await self._writer.run(_import_claims, claims, released)

    async def import_commands(self, commands: Sequence[CommandRecord]) -> int:
        return await self._writer.run(_insert_each, sql.IMPORT_COMMAND, [command_params(c) for c in commands])

    async def import_data_keys(self, keys: Sequence[DataKey]) -> int:
        return await self._writer.run(_import_data_keys, keys)

    async def remove_aggregate(self, aggregate_id: str) -> int:
        return await self._writer.run(_remove_aggregate, aggregate_id)

    async def delete_aggregate(
        self, aggregate_id: str, tombstone: NewEvent, *, expected_version: int | None = None
    ) -> RecordedEvent | None:
        recorded = await self._writer.run(_delete_aggregate, aggregate_id, tombstone, expected_version)
        if recorded is not None and recorded.event_id == tombstone.event_id:
            self._commits.notify(recorded.position)
        return recorded

    async def aggregates_page(self, after: str, limit: int) -> list[AggregateLastEvent]:
        rows = await self._writer.run(lambda db: db.execute(sql.AGGREGATES_PAGE, (after, limit)).fetchall())
        return [AggregateLastEvent(str(r[0]), str(r[1]), int(r[2]), str(r[3]), int(r[4])) for r in rows]


def _import_events(
    db: sqlite3.Connection, events: Sequence[RecordedEvent], replacing: Sequence[str]
) -> tuple[int, int]:
    """How many were written, and the last position written (0: none)."""

    def stored_at(event_id: str) -> tuple[str, int] | None:
        row = db.execute(sql.EVENT_PLACE, (event_id,)).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))

    last = 0
    with writing(db):
        for aggregate_id in replacing:
            _remove(db, aggregate_id)
        fresh = events_to_write(events, stored_at=stored_at, head=lambda aggregate_id: _head(db, aggregate_id))
        for event in fresh:
            (last,) = db.execute(sql.INSERT_EVENT, _event_params(event)).fetchone()
    return len(fresh), int(last)


def _head(db: sqlite3.Connection, aggregate_id: str) -> tuple[int, str] | None:
    """The aggregate's last version and its type; None: no events."""
    row = db.execute(sql.AGGREGATE_HEAD, (aggregate_id,)).fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


def _forgotten(db: sqlite3.Connection, aggregate_ids: Sequence[str]) -> set[str]:
    """Those of the aggregates that were forgotten."""
    return {str(row[0]) for row in db.execute(sql.FORGOTTEN_AGGREGATES, (json.dumps(list(aggregate_ids)),))}


def _of_live(db: sqlite3.Connection, records: Sequence[_OfAggregate]) -> list[_OfAggregate]:
    """``records`` but those of forgotten aggregates (inside the caller's
    write transaction: a forget, written by the same writer, comes before
    or after it whole)."""
    forgotten = _forgotten(db, sorted({r.aggregate_id for r in records}))
    return [r for r in records if r.aggregate_id not in forgotten]


def _import_snapshots(db: sqlite3.Connection, snapshots: Sequence[Snapshot]) -> int:
    with writing(db):
        snapshots = _of_live(db, snapshots)
        check_snapshots(snapshots, head=lambda aggregate_id: _head(db, aggregate_id))
        return sum(db.execute(sql.IMPORT_SNAPSHOT, snapshot_params(s)).rowcount for s in snapshots)


def _event_params(event: RecordedEvent) -> tuple[object, ...]:
    """The values of ``sql.INSERT_EVENT``, in order."""
    return (
        event.event_id,
        event.aggregate_id,
        event.aggregate_type,
        event.version,
        event.event_type,
        event.schema_version,
        event.payload,
        dump_metadata(event.metadata),
        event.command_id,
        event.user_id,
        event.origin,
        event.correlation_id,
        event.causation_id,
        event.timestamp_us,
    )


def _insert_each(db: sqlite3.Connection, statement: str, rows: Sequence[tuple[object, ...]]) -> int:
    with writing(db):
        return sum(db.execute(statement, row).rowcount for row in rows)


def _import_claims(db: sqlite3.Connection, claims: Sequence[HeldClaim], released: Sequence[HeldClaim]) -> int:
    taken = 0
    with writing(db):
        for claim in released:
            db.execute(sql.RELEASE_CLAIM, (claim.scope, claim.value, claim.aggregate_id))
        for claim in _of_live(db, claims):
            taken += db.execute(sql.TAKE_CLAIM, (claim.scope, claim.value, claim.aggregate_id)).rowcount
            (holder,) = db.execute(sql.CLAIM_OWNER, (claim.scope, claim.value)).fetchone()
            if holder != claim.aggregate_id:
                raise claim_conflict(claim.scope, claim.aggregate_id, str(holder))
    return taken


def _import_data_keys(db: sqlite3.Connection, keys: Sequence[DataKey]) -> int:
    written = 0
    erased = 0
    now = time.time_ns() // 1000
    with writing(db):
        for key in keys:
            row = db.execute(sql.LOAD_DATA_KEY, (key.aggregate_id,)).fetchone()
            held = None if row is None else data_key_from_row(row)
            if held is None:
                forgotten_at = now if key.forgotten else None
                params = (key.aggregate_id, key.master_key_id, key.wrapped, now, forgotten_at)
                written += db.execute(sql.IMPORT_DATA_KEY, params).rowcount
            elif key.forgotten and not held.forgotten:
                erased += forget(db, key.aggregate_id)
            elif not key.forgotten and not held.forgotten and held != key:
                raise data_key_conflict(key.aggregate_id)
    if erased:
        empty_wal(db, f"imported {erased} forgotten aggregates")
    return written + erased


def _remove_aggregate(db: sqlite3.Connection, aggregate_id: str) -> int:
    with writing(db):
        return _remove(db, aggregate_id)


def _remove(db: sqlite3.Connection, aggregate_id: str) -> int:
    removed = db.execute(sql.REMOVE_EVENTS, (aggregate_id,)).rowcount
    db.execute(sql.DELETE_SNAPSHOTS, (aggregate_id,))
    db.execute(sql.REMOVE_CLAIMS, (aggregate_id,))
    db.execute(sql.REMOVE_PARKED, (aggregate_id,))
    db.execute(sql.REMOVE_GROUP_PARKED, (aggregate_id,))
    return int(removed)


def _delete_aggregate(
    db: sqlite3.Connection, aggregate_id: str, tombstone: NewEvent, expected_version: int | None
) -> RecordedEvent | None:
    with writing(db):
        row = db.execute(sql.LAST_EVENT, (aggregate_id,)).fetchone()
        if row is None:
            return None
        last = event_from_row(row)
        if is_tombstone(last):
            return last
        if expected_version is not None and last.version != expected_version:
            raise ConcurrencyConflict(aggregate_id, expected_version, current=last.version)
        _remove(db, aggregate_id)
        recorded = RecordedEvent.committed(
            replace(tombstone, aggregate_type=last.aggregate_type),
            aggregate_id=aggregate_id,
            version=last.version + 1,
            position=0,
        )
        (position,) = db.execute(sql.INSERT_EVENT, _event_params(recorded)).fetchone()
    return replace(recorded, position=int(position))


def _next_claims_scope(db: sqlite3.Connection, at: str) -> tuple[str] | None:
    row: tuple[str] | None = db.execute(sql.NEXT_CLAIMS_SCOPE, (at,)).fetchone()
    return row
