"""A database made by an older Chronicle opens, migrated, with its data."""

from __future__ import annotations

import sqlite3
from importlib import resources
from pathlib import Path

from service.store.base import AuditQuery
from service.store.records import ACCEPTED
from service.store.sqlite import SqliteStore
from service.store.sqlite.migrations import SCHEMA_VERSION


async def test_a_version_1_database_is_migrated_and_its_commands_are_audited(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.executescript(
            resources.files("service.store.sqlite").joinpath("migrations", "0001_initial.sql").read_text()
        )
        old.execute("PRAGMA user_version=1")
        old.execute(
            "INSERT INTO commands VALUES (?,?,?,?,?,?,?)", ("c-1", "a-1", "test.v1.Do", b"\x01" * 32, 1, 1, None)
        )
    store = SqliteStore(path)
    await store.open()
    try:
        (entry,) = await store.read_audit(AuditQuery())
        assert (entry.command_id, entry.outcome, entry.principal) == ("c-1", ACCEPTED, "")
        assert await store.load_data_key("a-1") is None
    finally:
        await store.close()
    with sqlite3.connect(path) as reopened:
        assert reopened.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
