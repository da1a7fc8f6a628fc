"""``KeyStore`` on PostgreSQL: per-aggregate data keys; forgetting one
leaves a tombstone, removes the aggregate's snapshots, claims, the documents
derived from it and what projections and groups parked of it, and erases its command
records' fingerprints and refusal texts, in the same operation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from psycopg.pq.abc import PGresult

from service.store.postgres import sql
from service.store.postgres.connection import Statement, text_array
from service.store.postgres.database import Database
from service.store.postgres.rows import first, rows, scalar
from service.store.records import AuditEntry, DataKey, Forgetting, prefix_end
from service.store.sql_common import audit_entry_params, data_key_from_row, other_subjects


class KeysRole:
    _db: Database

    async def create_data_key(self, key: DataKey) -> DataKey:
        results = await self._db.run(
            "create_data_key",
            [
                Statement(sql.CREATE_DATA_KEY.encode(), (key.aggregate_id, key.master_key_id, key.wrapped)),
                Statement(sql.LOAD_DATA_KEY.encode(), (key.aggregate_id,), binary=True),
            ],
        )
        row = first(results[-1])
        assert row is not None
        return data_key_from_row(row)

    async def load_data_key(self, aggregate_id: str) -> DataKey | None:
        (result,) = await self._db.run(
            "load_data_key", [Statement(sql.LOAD_DATA_KEY.encode(), (aggregate_id,), binary=True)], read_only=True
        )
        row = first(result)
        return None if row is None else data_key_from_row(row)

    async def forget_data_key(self, aggregate_id: str) -> bool:
        return (await self.forget_aggregate_data(aggregate_id)).erased

    async def forget_aggregate_data(self, aggregate_id: str) -> Forgetting:
        results = await self._db.run("forget_data_key", forget_statements(aggregate_id))
        return _forgetting(results.__getitem__)

    async def forget_aggregates_data(
        self, aggregate_ids: Sequence[str], *, audit: AuditEntry | None = None
    ) -> list[Forgetting]:
        ids = list(aggregate_ids)
        if not ids:
            return []
        # Each kind of statement for every aggregate before the next kind:
        # the tables in the store's lock order, as for one aggregate. The
        # texts of all first, one pass over each table for the batch.
        kinds = [forget_statements(aggregate_id) for aggregate_id in ids]
        array = text_array(ids)
        statements = [
            Statement(sql.ERASE_COMMAND_TEXTS_OF_ALL_FORGOTTEN.encode(), (array,)),
            Statement(sql.ERASE_AUDIT_TEXTS_OF_ALL_FORGOTTEN.encode(), (array,)),
            *(kind[step] for step in range(TEXT_STATEMENTS, len(kinds[0])) for kind in kinds),
        ]
        if audit is not None:  # last: the results before it are read by position
            params = (*audit_entry_params(audit), array)
            statements.append(Statement(sql.RECORD_AUDIT_ENTRY_IF_ERASED.encode(), params))
        results = await self._db.run("forget_data_keys", statements)
        return [_forgetting(_results_of(results, len(ids), index)) for index in range(len(ids))]

    async def live_keys(self, prefix: str, *, after: str = "", limit: int) -> list[str]:
        upper = prefix_end(prefix)
        params = [prefix, after, *([] if upper is None else [upper]), limit]
        (result,) = await self._db.run(
            "live_keys", [Statement(sql.live_keys(upper=upper is not None).encode(), tuple(params))], read_only=True
        )
        return [str(row[0]) for row in rows(result)]

    async def count_live_keys(self, prefix: str) -> int:
        upper = prefix_end(prefix)
        params = (prefix,) if upper is None else (prefix, upper)
        (result,) = await self._db.run(
            "count_live_keys",
            [Statement(sql.count_live_keys(upper=upper is not None).encode(), params)],
            read_only=True,
        )
        return int(scalar(result) or 0)

    async def data_keys_to_rewrap(self, active_master_key_id: str, limit: int, *, after: str = "") -> list[DataKey]:
        (result,) = await self._db.run(
            "data_keys_to_rewrap",
            [Statement(sql.DATA_KEYS_TO_REWRAP.encode(), (active_master_key_id, limit, after), binary=True)],
            read_only=True,
        )
        return [data_key_from_row(row) for row in rows(result)]

    async def rewrap_data_keys(self, rewraps: Sequence[tuple[DataKey, DataKey]]) -> int:
        if not rewraps:
            return 0
        statements = [
            Statement(
                sql.REWRAP_DATA_KEY.encode(),
                (new.master_key_id, new.wrapped, old.aggregate_id, old.master_key_id, old.wrapped),
            )
            for old, new in rewraps
        ]
        results = await self._db.run("rewrap_data_keys", statements)
        return sum(result.ntuples for result in results)


# How many of forget_statements erase texts (the first): a batch erases
# those of all its aggregates in as many statements.
TEXT_STATEMENTS = 2
# Which of forget_statements erases the key (and says whether it did).
FORGET_KEY_STATEMENT = 2
# Which reads the other subjects of the process states about to go.
OTHER_SUBJECTS_STATEMENT = 5
# Which deletes the documents derived from it (and counts them by type).
DELETE_DOCUMENTS_STATEMENT = 6
# Which reads when the key was erased (the last).
FORGOTTEN_AT_STATEMENT = 9


def _results_of(results: list[PGresult], count: int, index: int) -> Callable[[int], PGresult]:
    """The results of the ``index``-th of ``count`` aggregates' steps, by
    step (after the batch's TEXT_STATEMENTS erasing the texts of them all)."""
    return lambda step: results[TEXT_STATEMENTS + (step - TEXT_STATEMENTS) * count + index]


def _forgetting(result_of: Callable[[int], PGresult]) -> Forgetting:
    """What ``forget_statements`` did, from the result of each of its steps."""
    deleted = {(name, type_name): int(count) for name, type_name, count in rows(result_of(DELETE_DOCUMENTS_STATEMENT))}
    named = other_subjects(rows(result_of(OTHER_SUBJECTS_STATEMENT)))
    when = first(result_of(FORGOTTEN_AT_STATEMENT))
    forgotten_at_us = None if when is None or when[0] is None else int(when[0])
    return Forgetting(result_of(FORGET_KEY_STATEMENT).ntuples == 1, deleted, named, forgotten_at_us)


def forget_statements(aggregate_id: str) -> list[Statement]:
    """Forgetting an aggregate's data key, in the store's lock order
    (sql.py, "Lock order"): the fingerprints and refusal texts of its
    command records and audit entries erased, its key's row, its claims,
    then its snapshots, the documents derived from it (the other subjects
    of the process states among them read first) and what projections
    and subscription groups parked of it."""
    return [
        Statement(sql.ERASE_COMMAND_TEXTS_OF_FORGOTTEN.encode(), (aggregate_id,)),
        Statement(sql.ERASE_AUDIT_TEXTS_OF_FORGOTTEN.encode(), (aggregate_id,)),
        Statement(sql.FORGET_DATA_KEY.encode(), (aggregate_id,)),
        Statement(sql.RELEASE_CLAIMS_OF_FORGOTTEN.encode(), (aggregate_id,)),
        Statement(sql.DELETE_SNAPSHOTS.encode(), (aggregate_id,)),
        Statement(sql.OTHER_SUBJECTS_OF_FORGOTTEN.encode(), (aggregate_id,)),
        Statement(sql.DELETE_DOCUMENTS_OF_FORGOTTEN.encode(), (aggregate_id,)),
        Statement(sql.DELETE_PARKED_OF_FORGOTTEN.encode(), (aggregate_id,)),
        Statement(sql.DELETE_GROUP_PARKED_OF_FORGOTTEN.encode(), (aggregate_id,)),
        Statement(sql.FORGOTTEN_AT.encode(), (aggregate_id,)),  # last: Forgetting.forgotten_at_us
    ]
