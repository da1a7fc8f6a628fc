"""``Transfer`` on PostgreSQL: pages of every table in key order, and each
import batch as one operation (its statements committed together, one
round trip), refused whole (``chronicle.refuse``) before anything is
written when a record does not fit."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from service.errors import ConcurrencyConflict, ImportRaced
from service.store.claim_scope_names import declared_scope, tenant_scopes_range
from service.store.importing import (
    DATA_KEY_CONFLICT,
    claim_conflict,
    data_key_conflict,
    import_conflict,
    snapshot_conflict,
)
from service.store.postgres import sql
from service.store.postgres.appends import JsonOf, commands_json
from service.store.postgres.connection import Statement
from service.store.postgres.database import Database
from service.store.postgres.errors import Refused, UniqueViolation
from service.store.postgres.rows import rows
from service.store.records import (
    TOMBSTONE_EVENT_TYPE,
    AggregateLastEvent,
    CommandRecord,
    DataKey,
    HeldClaim,
    NewEvent,
    RecordedEvent,
    Snapshot,
)
from service.store.sql_common import (
    claim_from_row,
    command_from_row,
    data_key_from_row,
    event_from_row,
    snapshot_from_row,
)


class TransferRole:
    _db: Database
    _json_of: JsonOf | None

    async def _page(self, what: str, statement: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        (result,) = await self._db.run(what, [Statement(statement.encode(), params, binary=True)], read_only=True)
        return rows(result)

    async def data_keys_page(self, after: str, limit: int) -> list[DataKey]:
        return [data_key_from_row(row) for row in await self._page("export", sql.DATA_KEYS_PAGE, (after, limit))]

    async def snapshots_page(
        self, after: tuple[str, int], limit: int, *, aggregate_id: str | None = None
    ) -> list[Snapshot]:
        if aggregate_id is None:
            found = await self._page("export", sql.SNAPSHOTS_PAGE, (*after, limit))
        else:
            found = await self._page("export", sql.SNAPSHOTS_OF_PAGE, (aggregate_id, *after, limit))
        return [snapshot_from_row(row) for row in found]

    async def claims_page(
        self, after: tuple[str, str], limit: int, *, aggregate_id: str | None = None
    ) -> list[HeldClaim]:
        if aggregate_id is None:
            found = await self._page("export", sql.CLAIMS_PAGE, (*after, limit))
        else:
            found = await self._page("export", sql.CLAIMS_OF_PAGE, (aggregate_id, *after, limit))
        return [claim_from_row(row) for row in found]

    async def holds_tenant_claims(self, scope: str) -> bool:
        """``base.TenantClaimsProbe``."""
        return bool(await self._page("check", sql.TENANT_CLAIMS_OF_SCOPE, tenant_scopes_range(scope)))

    async def tenant_claim_scopes(self) -> list[str]:
        """``base.TenantClaimsProbe``: a walk over the partial index of
        tenants' claims, jumping past each scope's tenants."""
        found: list[str] = []
        after = ""
        while rows := await self._page("check", sql.NEXT_TENANT_CLAIMS_SCOPE, (after,)):
            found.append(declared_scope(rows[0][0]))
            after = tenant_scopes_range(found[-1])[1]
        return found

    async def commands_page(self, after: str, limit: int) -> list[CommandRecord]:
        return [command_from_row(row) for row in await self._page("export", sql.COMMANDS_PAGE, (after, limit))]

    async def import_events(self, events: Sequence[RecordedEvent], *, replacing: Sequence[str] = ()) -> int:
        if not events:
            if replacing:
                await self._db.run("import", [s for a in replacing for s in remove_statements(a)])
            return 0
        batch = _events_json(events, self._json_of)
        try:
            *_, written = await self._db.run(
                "import",
                [
                    # Its removals first, in the same transaction: the check sees the aggregates gone.
                    *(statement for aggregate_id in replacing for statement in remove_statements(aggregate_id)),
                    Statement(sql.IMPORT_EVENTS_CHECK.encode(), (batch, TOMBSTONE_EVENT_TYPE)),
                    Statement(sql.IMPORT_EVENTS.encode(), (batch,)),
                ],
            )
        except Refused as refused:
            reason, index = _refusal(refused)
            raise import_conflict(reason, events[int(index[0])]) from None
        except UniqueViolation as violation:
            # Another writer (another import of the same export, most
            # often) took a version or an id between the check and the
            # insert, the check's snapshot taken before it committed: nothing
            # was written, and importing again skips what it wrote.
            raise ImportRaced(
                f"another writer (another import into this store?) wrote events of this batch's aggregates while it"
                f" was written ({violation.constraint}): nothing of the batch was written. Import again once it has"
                " finished: what is there is skipped, and a history that parts from the stream's is refused"
                " (AGGREGATE_NOT_EMPTY)",
                metadata={"constraint": str(violation.constraint or "")},
            ) from None
        if written.ntuples:
            self._db.commits.notify(max(int(row[0]) for row in rows(written)))
        return int(written.ntuples)

    async def import_snapshots(self, snapshots: Sequence[Snapshot]) -> int:
        if not snapshots:
            return 0
        batch = json.dumps(
            [
                {
                    "i": i,
                    "a": s.aggregate_id,
                    "t": s.aggregate_type,
                    "v": s.version,
                    "st": s.state_type,
                    "s": s.schema_version,
                    "state": s.state.hex(),
                }
                for i, s in enumerate(snapshots)
            ],
            separators=(",", ":"),
        )
        try:
            _, _, result = await self._db.run(
                "import",
                [
                    Statement(sql.LOCK_KEYS_OF_IMPORTED.encode(), (batch,)),
                    Statement(sql.IMPORT_SNAPSHOTS_CHECK.encode(), (batch,)),
                    Statement(sql.IMPORT_SNAPSHOTS.encode(), (batch,)),
                ],
            )
        except Refused as refused:
            reason, (index, *_) = _refusal(refused)
            snapshot = snapshots[int(index)]
            head = await self._head(snapshot.aggregate_id)
            raise snapshot_conflict(reason, snapshot, head) from None
        return int(result.ntuples)

    async def _head(self, aggregate_id: str) -> tuple[int, str] | None:
        """The aggregate's last version and type (None: no events), to say
        why a snapshot was refused."""
        found = await self._page("import", sql.LAST_EVENT, (aggregate_id,))
        if not found:
            return None
        last = event_from_row(found[0])
        return last.version, last.aggregate_type

    async def import_claims(self, claims: Sequence[HeldClaim], *, released: Sequence[HeldClaim] = ()) -> int:
        if not claims and not released:
            return 0
        batch, gone = _claims_json(claims), _claims_json(released)
        try:
            *_, taken, _ = await self._db.run(
                "import",
                [
                    Statement(sql.LOCK_KEYS_OF_IMPORTED.encode(), (batch,)),
                    *([Statement(sql.RELEASE_IMPORTED_CLAIMS.encode(), (gone,))] if released else []),
                    Statement(sql.IMPORT_CLAIMS.encode(), (batch,)),
                    Statement(sql.IMPORT_CLAIMS_CHECK.encode(), (batch,)),
                ],
            )
        except Refused as refused:
            _, (index, holder) = _refusal(refused)
            claim = claims[int(index)]
            raise claim_conflict(claim.scope, claim.aggregate_id, holder) from None
        return int(taken.ntuples)

    async def forgotten_aggregates(self, aggregate_ids: Sequence[str]) -> set[str]:
        if not aggregate_ids:
            return set()
        found = await self._page("import", sql.FORGOTTEN_AGGREGATES, (json.dumps(list(aggregate_ids)),))
        return {str(row[0]) for row in found}

    async def import_commands(self, commands: Sequence[CommandRecord]) -> int:
        if not commands:
            return 0
        (result,) = await self._db.run("import", [Statement(sql.IMPORT_COMMANDS.encode(), (commands_json(commands),))])
        return int(result.ntuples)

    async def import_data_keys(self, keys: Sequence[DataKey]) -> int:
        if not keys:
            return 0
        batch = json.dumps(
            [
                {"i": i, "a": k.aggregate_id, "m": k.master_key_id, "w": None if k.wrapped is None else k.wrapped.hex()}
                for i, k in enumerate(keys)
            ],
            separators=(",", ":"),
        )
        try:
            _, inserted, forgotten = await self._db.run(
                "import",
                [
                    Statement(sql.IMPORT_DATA_KEYS_CHECK.encode(), (batch,)),
                    Statement(sql.IMPORT_DATA_KEYS.encode(), (batch,)),
                    Statement(sql.IMPORT_TOMBSTONES.encode(), (batch,)),
                ],
            )
        except Refused as refused:
            reason, (index, *_) = _refusal(refused)
            assert reason == DATA_KEY_CONFLICT
            raise data_key_conflict(keys[int(index)].aggregate_id) from None
        return int(inserted.ntuples + forgotten.ntuples)

    async def delete_aggregate(
        self, aggregate_id: str, tombstone: NewEvent, *, expected_version: int | None = None
    ) -> RecordedEvent | None:
        recorded = RecordedEvent.committed(tombstone, aggregate_id=aggregate_id, version=0, position=0)
        _, _, found, *_ = await self._db.run(
            "delete_aggregate", delete_statements(aggregate_id, recorded, expected_version=expected_version)
        )
        version, event_type, aggregate_type, position = rows(found)[0]
        if version is None:
            return None
        if event_type == TOMBSTONE_EVENT_TYPE:
            (existing,) = await self._page("delete_aggregate", sql.LAST_EVENT, (aggregate_id,))
            return event_from_row(existing)
        if position is None:
            raise ConcurrencyConflict(aggregate_id, expected_version or 0, current=int(version))
        self._db.commits.notify(int(position))
        return replace(recorded, aggregate_type=str(aggregate_type), version=int(version) + 1, position=int(position))

    async def aggregates_page(self, after: str, limit: int) -> list[AggregateLastEvent]:
        found = await self._page("aggregates", sql.AGGREGATES_PAGE, (after, limit))
        return [AggregateLastEvent(str(r[0]), str(r[1]), int(r[2]), str(r[3]), int(r[4])) for r in found]

    async def remove_aggregate(self, aggregate_id: str) -> int:
        _, removed, *_ = await self._db.run("remove_aggregate", remove_statements(aggregate_id))
        return int(removed.command_tuples or 0)


def delete_statements(aggregate_id: str, tombstone: RecordedEvent, *, expected_version: int | None) -> list[Statement]:
    """Deleting an aggregate, in the store's lock order (sql.py, "Lock
    order"): its claims' rows, the position lock, its events and tombstone,
    then its snapshots, claims and parked events if the tombstone was
    written. The third statement's row says what the deletion found."""
    return [
        Statement(sql.LOCK_CLAIMS_OF_AGGREGATE.encode(), (aggregate_id,)),
        Statement(sql.LOCK_LOG_HEAD.encode()),
        Statement(
            sql.DELETE_AGGREGATE.encode(),
            (
                aggregate_id,
                -1 if expected_version is None else expected_version,
                _events_json([tombstone]),
                TOMBSTONE_EVENT_TYPE,
            ),
        ),
        Statement(sql.DELETE_SNAPSHOTS_OF_DELETED.encode(), (aggregate_id, tombstone.event_id)),
        Statement(sql.REMOVE_CLAIMS_OF_DELETED.encode(), (aggregate_id, tombstone.event_id)),
        Statement(sql.REMOVE_PARKED_OF_DELETED.encode(), (aggregate_id, tombstone.event_id)),
        Statement(sql.REMOVE_GROUP_PARKED_OF_DELETED.encode(), (aggregate_id, tombstone.event_id)),
    ]


def remove_statements(aggregate_id: str) -> list[Statement]:
    """Removing an aggregate's events and what hangs on them (an import
    that overwrites it), in the store's lock order: its claims first. The
    second statement's count is the events removed."""
    return [
        Statement(sql.REMOVE_CLAIMS.encode(), (aggregate_id,)),
        Statement(sql.REMOVE_EVENTS.encode(), (aggregate_id,)),
        Statement(sql.DELETE_SNAPSHOTS.encode(), (aggregate_id,)),
        Statement(sql.REMOVE_PARKED.encode(), (aggregate_id,)),
        Statement(sql.REMOVE_GROUP_PARKED.encode(), (aggregate_id,)),
    ]


def _refusal(refused: Refused) -> tuple[str, list[str]]:
    """The reason and the arguments of an import's refusal ("REASON index …")."""
    if refused.code != sql.IMPORT_REFUSED:
        raise refused
    reason, *arguments = refused.detail.split(" ", 2)
    return reason, arguments


def _events_json(events: Sequence[RecordedEvent], json_of: JsonOf | None = None) -> str:
    return json.dumps(
        [
            {
                "i": i,
                "id": e.event_id,
                "a": e.aggregate_id,
                "t": e.aggregate_type,
                "v": e.version,
                "e": e.event_type,
                "s": e.schema_version,
                "p": e.payload.hex(),
                "m": dict(e.metadata) if e.metadata else None,
                "c": e.command_id,
                "u": e.user_id,
                "o": e.origin,
                "r": e.correlation_id,
                "k": e.causation_id,
                "at": e.timestamp_us,
                "j": None if json_of is None else json_of(e.event_type, e.payload),
            }
            for i, e in enumerate(events)
        ],
        separators=(",", ":"),
    )


def _claims_json(claims: Sequence[HeldClaim]) -> str:
    """``claims`` as the statements on ``_IMPORTED_CLAIMS`` (sql.py) take them."""
    return json.dumps(
        [{"i": i, "s": c.scope, "v": c.value, "a": c.aggregate_id} for i, c in enumerate(claims)],
        separators=(",", ":"),
    )
