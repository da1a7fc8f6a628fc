"""``KeyStore`` on SQLite: per-aggregate data keys; forgetting one leaves a
tombstone and removes the aggregate's snapshots, claims, the documents
derived from it and what projections and groups parked of it, and erases its command
records' fingerprints and refusal texts, in the same transaction, then empties the WAL (the file
zeroes what it deletes: ``secure_delete``)."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Sequence

from service.store.encryption import ERASED_FINGERPRINT
from service.store.records import AuditEntry, DataKey, Forgetting, prefix_end
from service.store.sql_common import audit_entry_params, data_key_from_row, other_subjects
from service.store.sqlite import sql
from service.store.sqlite.writer import Writer, writing

log = logging.getLogger(__name__)


class KeysRole:
    _writer: Writer

    async def create_data_key(self, key: DataKey) -> DataKey:
        stored = await self._writer.run(_create, key)
        assert stored is not None
        return stored

    async def load_data_key(self, aggregate_id: str) -> DataKey | None:
        return await self._writer.run(_load, aggregate_id)

    async def forget_data_key(self, aggregate_id: str) -> bool:
        return (await self.forget_aggregate_data(aggregate_id)).erased

    async def forget_aggregate_data(self, aggregate_id: str) -> Forgetting:
        return await self._writer.run(_forget, aggregate_id)

    async def forget_aggregates_data(
        self, aggregate_ids: Sequence[str], *, audit: AuditEntry | None = None
    ) -> list[Forgetting]:
        return await self._writer.run(_forget_all, list(aggregate_ids), audit)

    async def live_keys(self, prefix: str, *, after: str = "", limit: int) -> list[str]:
        upper = prefix_end(prefix)
        statement = sql.live_keys(upper=upper is not None)
        params = (prefix, after, upper, limit)
        return [row[0] for row in await self._writer.run(lambda db: db.execute(statement, params).fetchall())]

    async def count_live_keys(self, prefix: str) -> int:
        upper = prefix_end(prefix)
        statement = sql.count_live_keys(upper=upper is not None)
        params = (prefix,) if upper is None else (prefix, upper)
        (count,) = await self._writer.run(lambda db: db.execute(statement, params).fetchone())
        return int(count)

    async def data_keys_to_rewrap(self, active_master_key_id: str, limit: int, *, after: str = "") -> list[DataKey]:
        params = (active_master_key_id, after, limit)
        rows = await self._writer.run(lambda db: db.execute(sql.DATA_KEYS_TO_REWRAP, params).fetchall())
        return [data_key_from_row(row) for row in rows]

    async def rewrap_data_keys(self, rewraps: Sequence[tuple[DataKey, DataKey]]) -> int:
        return await self._writer.run(_rewrap_all, list(rewraps))


def _create(db: sqlite3.Connection, key: DataKey) -> DataKey | None:
    db.execute(sql.CREATE_DATA_KEY, (key.aggregate_id, key.master_key_id, key.wrapped, _now_us()))
    return _load(db, key.aggregate_id)


def _load(db: sqlite3.Connection, aggregate_id: str) -> DataKey | None:
    row = db.execute(sql.LOAD_DATA_KEY, (aggregate_id,)).fetchone()
    return None if row is None else data_key_from_row(row)


def _rewrap_all(db: sqlite3.Connection, rewraps: list[tuple[DataKey, DataKey]]) -> int:
    """Each key still as read replaced, in one write transaction, then the
    WAL emptied: the page as it was (the key wrapped by the old master key,
    a tenant's by the shared one) would stay in the WAL, and in the file
    until a checkpoint copied the new page over it (the file zeroes what
    an update frees: ``secure_delete``)."""
    if not rewraps:
        return 0
    with writing(db):
        done = sum(
            db.execute(sql.REWRAP_DATA_KEY, (new.master_key_id, new.wrapped, *_stored(old))).rowcount
            for old, new in rewraps
        )
    if done:
        empty_wal(db, f"rewrapped {done} data keys")
    return done


def _stored(key: DataKey) -> tuple[str, str | None, bytes | None]:
    return key.aggregate_id, key.master_key_id, key.wrapped


def _forget(db: sqlite3.Connection, aggregate_id: str) -> Forgetting:
    with writing(db):
        forgetting = _forget_in(db, aggregate_id)
    empty_wal(db, f"forgot {aggregate_id}")
    return forgetting


def _forget_all(db: sqlite3.Connection, aggregate_ids: list[str], audit: AuditEntry | None) -> list[Forgetting]:
    """Each aggregate forgotten in one write transaction (the command and
    audit texts of them all in one pass over each table), with ``audit``
    when a key was erased, then the WAL emptied once, not once per aggregate."""
    if not aggregate_ids:
        return []
    with writing(db):
        forgettings = [_forget_in(db, aggregate_id, texts=False) for aggregate_id in aggregate_ids]
        erase_texts(db, aggregate_ids)
        if audit is not None and any(forgetting.erased for forgetting in forgettings):
            db.execute(sql.RECORD_AUDIT_ENTRY, audit_entry_params(audit))
    empty_wal(db, f"forgot {len(aggregate_ids)} aggregates")
    return forgettings


def _forget_in(db: sqlite3.Connection, aggregate_id: str, *, texts: bool = True) -> Forgetting:
    """Forget the aggregate inside the caller's write transaction, saying what went."""
    # Counted in the write transaction that deletes them: no write between.
    counted = db.execute(sql.COUNT_DOCUMENTS_OF_FORGOTTEN, (aggregate_id, aggregate_id)).fetchall()
    named = db.execute(sql.OTHER_SUBJECTS_OF_FORGOTTEN, (aggregate_id,) * 3).fetchall()
    erased = forget(db, aggregate_id, texts=texts)
    when = db.execute(sql.FORGOTTEN_AT, (aggregate_id,)).fetchone()
    return Forgetting(
        erased == 1,
        {(name, type_name): count for name, type_name, count in counted},
        other_subjects(named),
        None if when is None or when[0] is None else int(when[0]),
    )


def forget(db: sqlite3.Connection, aggregate_id: str, *, texts: bool = True) -> int:
    """Forget the aggregate inside the caller's write transaction: its key
    erased (1 if it had a live one), its snapshots, claims, the documents
    derived from it and the events projections and subscription groups
    parked for it gone, the
    fingerprints and refusal texts of its command records and audit entries
    erased (unless ``texts`` is False: the caller erases those of a batch
    at once, ``erase_texts``). The caller empties the WAL after its commit
    (``empty_wal``)."""
    erased = db.execute(sql.FORGET_DATA_KEY, (_now_us(), aggregate_id)).rowcount
    db.execute(sql.DELETE_SNAPSHOTS, (aggregate_id,))
    db.execute(sql.RELEASE_CLAIMS_OF_FORGOTTEN, (aggregate_id, aggregate_id))
    db.execute(sql.DELETE_DOCUMENTS_OF_FORGOTTEN, (aggregate_id, aggregate_id))
    db.execute(sql.DELETE_SUBJECTS_OF_FORGOTTEN, (aggregate_id, aggregate_id))
    db.execute(sql.DELETE_PARKED_OF_FORGOTTEN, (aggregate_id, aggregate_id))
    db.execute(sql.DELETE_GROUP_PARKED_OF_FORGOTTEN, (aggregate_id, aggregate_id))
    if texts:
        erased_texts = (ERASED_FINGERPRINT, aggregate_id, ERASED_FINGERPRINT, aggregate_id)
        db.execute(sql.ERASE_COMMAND_TEXTS_OF_FORGOTTEN, erased_texts)
        db.execute(sql.ERASE_AUDIT_TEXTS_OF_FORGOTTEN, (aggregate_id, aggregate_id))
    return int(erased)


def erase_texts(db: sqlite3.Connection, aggregate_ids: Sequence[str]) -> None:
    """The command records' and audit entries' texts of forgotten
    ``aggregate_ids`` erased, one pass over each table for them all."""
    ids = json.dumps(list(aggregate_ids))
    db.execute(sql.ERASE_COMMAND_TEXTS_OF_ALL_FORGOTTEN, (ERASED_FINGERPRINT, ids))
    db.execute(sql.ERASE_AUDIT_TEXTS_OF_ALL_FORGOTTEN, (ids,))


def empty_wal(db: sqlite3.Connection, done: str) -> None:
    """After an erasure or a rewrap (committed; ``done`` says which): the pages as they were before
    (the wrapped key, the snapshots) are in the WAL until a checkpoint
    copies the new ones over them: empty it now."""
    busy, _, _ = db.execute(sql.CHECKPOINT_TRUNCATE).fetchone()
    if busy:
        log.warning(
            "%s, but a reader of the SQLite file held back the WAL checkpoint: the WAL keeps the"
            " old pages (the wrapped key) until the next checkpoint",
            done,
        )


def _now_us() -> int:
    return time.time_ns() // 1000
