"""What the SQLite adapter adds to the contract: opening its file again
changes nothing (migrating older files: tests/integration/test_migrations_over_data.py),
and its log pages come in position order from an index, whatever the filter."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path

import pytest

from service.store.leasing import Lease, LeaseMember
from service.store.records import ClaimChange, DataKey, LogFilter, Snapshot
from service.store.sql_common import SQLITE, log_conditions
from service.store.sqlite import SqliteStore, sql
from tests.support.contents import contents
from tests.support.events import command_record, new_event


async def test_opening_a_current_file_again_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    store = SqliteStore(path)
    await store.open()
    email = ClaimChange("users.email", "ann@example.com")
    await store.append("u-1", [new_event()], 0, commands=[command_record("u-1", 1, 1)], claims=[email])
    await store.save_snapshot(Snapshot("u-1", "User", 1, "users.v1.User", 1, b"x"))
    await store.close()
    before = await contents(store)
    reopened = SqliteStore(path)
    await reopened.open()
    try:
        assert (await contents(reopened)).changes_since(before) == {}  # schema and rows alike
        assert await reopened.load_snapshot("u-1") == Snapshot("u-1", "User", 1, "users.v1.User", 1, b"x")
    finally:
        await reopened.close()


@pytest.mark.parametrize(
    "log_filter",
    [
        LogFilter(),
        LogFilter(aggregate_types=frozenset({"Box"})),
        LogFilter(aggregate_types=frozenset({"Box", "Account"})),
        LogFilter(event_types=frozenset({"t.A", "t.B", "t.C"})),
        LogFilter(aggregate_types=frozenset({"Box"}), event_types=frozenset({"t.A", "t.B"})),
        LogFilter(aggregate_types=frozenset({"Box", "Account"}), event_types=frozenset({"t.A", "t.B"})),
    ],
    ids=["all", "one-type", "two-types", "three-event-types", "type-and-event-types", "both-lists"],
)
async def test_a_page_of_the_log_is_read_in_position_order_and_stops_at_its_end(
    tmp_path: Path, log_filter: LogFilter
) -> None:
    # Issue 17 (stores that grow): a page filtered to several types read
    # every later match through a type index and sorted them all, so each
    # page of a catch-up read the rest of the log. A page must come from an
    # index in position order: no sort before its LIMIT.
    path = tmp_path / "events.db"
    store = SqliteStore(path)
    await store.open()
    await store.close()
    conditions = log_conditions(SQLITE, 0, log_filter)
    with contextlib.closing(sqlite3.connect(path)) as db:
        steps = [
            row[3]
            for row in db.execute(
                "EXPLAIN QUERY PLAN " + sql.read_log(conditions.where), [*conditions.params, 100, 10**6]
            )
        ]
    page = steps[steps.index("MATERIALIZE page") + 1 : steps.index("SCAN page")]
    assert len(page) == 1, steps
    assert page[0].startswith("SEARCH events USING"), steps
    assert "position>?" in page[0] or "rowid>?" in page[0], steps


async def test_deleted_content_is_zeroed_whatever_sqlite_was_built_with(tmp_path: Path) -> None:
    """Forgetting relies on it (free space must not keep a wrapped key or a
    document); some builds of SQLite default to it, others do not."""
    store = SqliteStore(tmp_path / "events.db")
    await store.open()
    try:
        (secure_delete,) = await store._writer.run(lambda db: db.execute("PRAGMA secure_delete").fetchone())
    finally:
        await store.close()
    assert secure_delete == 1


def on_disk(path: Path | str) -> bytes:
    return Path(path).read_bytes()


async def test_a_reader_holding_the_file_delays_the_checkpoint_after_a_forget_and_it_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/security.md: the WAL keeps the wrapped key until a checkpoint,
    which a reader in another process can hold back; the server says so,
    and the next forget's checkpoint empties it."""
    path = tmp_path / "events.db"
    wrapped = os.urandom(40)
    store = SqliteStore(path)
    await store.open()
    try:
        await store.create_data_key(DataKey(aggregate_id="acc-1", master_key_id="k1", wrapped=wrapped))
        reader = sqlite3.connect(path, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM data_keys").fetchone()  # a snapshot of the file as it is now
        # The checkpoint waits for the reader as long as the busy timeout
        # (5 s); the test need not.
        await store._writer.run(lambda db: db.execute("PRAGMA busy_timeout = 50"))
        with caplog.at_level(logging.WARNING, logger="chronicle"):
            assert await store.forget_data_key("acc-1")
        assert "forgot acc-1, but a reader of the SQLite file held back the WAL checkpoint" in caplog.text
        assert wrapped in on_disk(f"{path}-wal")
        reader.execute("COMMIT")
        reader.close()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="chronicle"):
            await store.forget_data_key("acc-1")  # forgetting again: its checkpoint is not held back
        assert "held back" not in caplog.text
        assert on_disk(f"{path}-wal") == b""
        assert wrapped not in on_disk(path)
    finally:
        await store.close()


async def test_a_reactions_parked_commands_are_counted_from_their_index_alone(tmp_path: Path) -> None:
    # GetReaction counts them: from the partial index of parked commands,
    # not by reading every document of the reaction (its process states).
    path = tmp_path / "events.db"
    store = SqliteStore(path)
    await store.open()
    await store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        steps = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql.COUNT_PARKED_COMMANDS, ["r"])]
    index = "projection_documents_parked_commands"
    assert steps == [f"SEARCH projection_documents USING COVERING INDEX {index} (projection=? AND type_name=?)"]


async def test_documents_are_counted_from_a_range_of_the_primary_key_alone(tmp_path: Path) -> None:
    # CountDocuments: the prefix's range of the (projection, key) index, no
    # document read, the limit inside the subquery (it stops there).
    path = tmp_path / "events.db"
    store = SqliteStore(path)
    await store.open()
    await store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        for upper, params in ((True, ["p", "owner:", "owner;", 10]), (False, ["p", "", 10])):
            steps = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql.count_documents(upper=upper), params)]
            bounds = "projection=? AND key>? AND key<?" if upper else "projection=? AND key>?"
            assert steps == [
                "CO-ROUTINE (subquery-1)",
                f"SEARCH projection_documents USING COVERING INDEX sqlite_autoindex_projection_documents_1 ({bounds})",
                "SCAN (subquery-1)",
            ]


async def test_lease_heartbeats_commit_on_a_connection_of_their_own_without_a_sync_of_their_own(
    tmp_path: Path,
) -> None:
    # The store's own commits are synced (FULL); the heartbeats' are not
    # (NORMAL): the next synced commit carries them to disk (store.py).
    store = SqliteStore(tmp_path / "events.db")
    await store.open()
    try:
        synchronous = "PRAGMA synchronous"
        assert await store._writer.run(lambda db: db.execute(synchronous).fetchone()[0]) == 2
        assert await store._lease_writer.run(lambda db: db.execute(synchronous).fetchone()[0]) == 1
    finally:
        await store.close()


async def test_a_database_in_memory_keeps_its_leases_and_a_held_one_is_not_taken_by_another_member() -> None:
    # In memory the file is the one connection's: the leases share it.
    store = SqliteStore(":memory:")
    await store.open()
    try:
        await store.renew_leases("g", LeaseMember("m-1", "a:1"), ["0"], 30)
        assert await store.change_leases("g", "m-1", release=(), acquire=["0"], ttl=30) == [Lease("0", "m-1", 1)]
        view = await store.renew_leases("g", LeaseMember("m-2", "a:2"), ["0"], 30)
        assert [m.member_id for m in view.members] == ["m-1", "m-2"]
        assert view.leases == (Lease("0", "m-1", 1),)
        assert await store.change_leases("g", "m-2", release=(), acquire=["0"], ttl=30) == []
    finally:
        await store.close()
