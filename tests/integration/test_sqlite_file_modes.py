"""The SQLite database and its -wal and -shm are created readable by their
owner only, whatever the umask (they hold every event's envelope, and
payloads without a master key); one that is there already, open to its
group or others, is served with a WARNING naming it (docs/security.md,
"Files")."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.store.sqlite import SqliteStore
from tests.support.grpc_client import command, running_server

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_a_new_database_and_its_wal_and_shm_are_the_owners_alone(tmp_path: Path) -> None:
    path = tmp_path / "data" / "chronicle.db"
    previous = os.umask(0o022)  # the common default: new files 0644
    try:
        store = SqliteStore(path)
        await store.open()
        try:
            async with running_server(store) as (_, client):
                await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
                files = {name: mode_of(tmp_path / "data" / name) for name in os.listdir(tmp_path / "data")}
        finally:
            await store.close()
    finally:
        os.umask(previous)
    assert {"chronicle.db", "chronicle.db-wal", "chronicle.db-shm"} <= files.keys()
    assert files == dict.fromkeys(files, 0o600)


async def test_an_existing_database_open_to_others_is_served_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "chronicle.db"
    path.touch(mode=0o644)
    path.chmod(0o644)
    store = SqliteStore(path)
    with caplog.at_level(logging.WARNING, logger="chronicle"):
        await store.open()
    try:
        await store.ping()  # served: the mode is its owner's choice, said, not refused
    finally:
        await store.close()
    warned = [r.getMessage() for r in caplog.records if "open to its group or to others" in r.getMessage()]
    assert warned and str(path) in warned[0] and "0644" in warned[0]
    assert mode_of(path) == 0o644  # not changed behind its owner's back
