"""What the SQLite adapter adds to the contract: opening its file again
changes nothing (migrating older files: tests/integration/test_migrations_over_data.py)."""

from __future__ import annotations

from pathlib import Path

from service.store.records import ClaimChange, Snapshot
from service.store.sqlite import SqliteStore
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
