"""What the SQLite adapter adds to the contract: its file schema migrates."""

from __future__ import annotations

import sqlite3
from importlib import resources
from pathlib import Path

from service.store.records import ClaimChange, Snapshot
from service.store.sqlite import SqliteStore
from service.store.sqlite.migrations import SCHEMA_VERSION
from tests.support.contents import contents
from tests.support.events import command_record, new_event


def _version_one_file(path: Path) -> None:
    schema = resources.files("service.store.sqlite").joinpath("migrations", "0001_initial.sql").read_text()
    conn = sqlite3.connect(path)
    conn.executescript(f"{schema};PRAGMA user_version=1;")
    conn.execute(
        "INSERT INTO snapshots (aggregate_id, aggregate_type, version, state_type, schema_version, state)"
        " VALUES ('a-1', 'Account', 7, 'bank.v1.Account', 1, x'0a03616e6e')"
    )
    conn.commit()
    conn.close()


async def test_a_version_one_file_is_migrated_and_keeps_its_snapshots(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _version_one_file(path)
    store = SqliteStore(path)
    await store.open()
    try:
        assert await store.load_snapshot("a-1") == Snapshot("a-1", "Account", 7, "bank.v1.Account", 1, b"\x0a\x03ann")
        await store.save_snapshot(Snapshot("a-1", "Account", 9, "bank.v1.Account", 1, b""))
        snapshot = await store.load_snapshot("a-1", at_most=8)
        assert snapshot is not None and snapshot.version == 7
        await store.append("u-1", [new_event()], 0, claims=[ClaimChange("users.email", "ann@example.com")])
        assert await store.claim_owner("users.email", "ann@example.com") == "u-1"
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


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
