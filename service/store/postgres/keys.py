"""``KeyStore`` on PostgreSQL: per-aggregate data keys; forgetting one
leaves a tombstone, removes the aggregate's snapshots, claims, the documents
derived from it and what projections and groups parked of it, and erases its command
records' fingerprints and refusal texts, in the same operation."""

from __future__ import annotations

from service.store.postgres import sql
from service.store.postgres.connection import Statement
from service.store.postgres.database import Database
from service.store.postgres.rows import first, rows
from service.store.records import DataKey, Forgetting
from service.store.sql_common import data_key_from_row, other_subjects


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
        deleted = {
            (name, type_name): int(count) for name, type_name, count in rows(results[DELETE_DOCUMENTS_STATEMENT])
        }
        named = other_subjects(rows(results[OTHER_SUBJECTS_STATEMENT]))
        when = first(results[-1])
        forgotten_at_us = None if when is None or when[0] is None else int(when[0])
        return Forgetting(results[FORGET_KEY_STATEMENT].ntuples == 1, deleted, named, forgotten_at_us)

    async def data_keys_to_rewrap(self, active_master_key_id: str, limit: int) -> list[DataKey]:
        (result,) = await self._db.run(
            "data_keys_to_rewrap",
            [Statement(sql.DATA_KEYS_TO_REWRAP.encode(), (active_master_key_id, limit), binary=True)],
            read_only=True,
        )
        return [data_key_from_row(row) for row in rows(result)]

    async def rewrap_data_key(self, old: DataKey, new: DataKey) -> bool:
        (result,) = await self._db.run(
            "rewrap_data_key",
            [
                Statement(
                    sql.REWRAP_DATA_KEY.encode(),
                    (new.master_key_id, new.wrapped, old.aggregate_id, old.master_key_id, old.wrapped),
                )
            ],
        )
        return result.ntuples == 1


# Which of forget_statements erases the key (and says whether it did).
FORGET_KEY_STATEMENT = 2
# Which reads the other subjects of the process states about to go.
OTHER_SUBJECTS_STATEMENT = 5
# Which deletes the documents derived from it (and counts them by type).
DELETE_DOCUMENTS_STATEMENT = 6


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
