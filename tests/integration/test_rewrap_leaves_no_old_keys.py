"""A rewrap leaves no copy of the keys it replaced (docs/security.md,
"Per-tenant keys"): over a real server and a real gRPC client. Globex's
account is written under the shared key, globex is given a key of its own
and ``RewrapKeys`` moves the account's data key onto it; a copy of the
store taken then must not hold the data key wrapped by the shared key,
which with the shared key alone would open globex's payloads after globex
is shredded. On SQLite the whole data directory (file, WAL, shared memory)
is read while the server runs, as a copy of it would be. On PostgreSQL a
``pg_dump`` holds none of them, the table's own files hold them until
``VACUUM FULL`` rewrites it (what the page promises and asks of the
operator), and the WAL until its segments are reused: old backups."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest

from chronicle.v1 import admin_service_pb2 as admin
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.store.encryption import new_master_key
from service.store.postgres import PostgresStore
from service.store.sqlite import SqliteStore
from tests.support.at_rest import postgres_at_rest
from tests.support.grpc_client import command, running_server
from tests.support.postgres import Cluster
from tests.support.security import write

SHARED = f"k1:{new_master_key()}"
GLOBEX = f"globex:2026-01:{new_master_key()}"


def wrapped_key(database: Path, aggregate_id: str) -> bytes:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        (wrapped,) = db.execute("SELECT wrapped_key FROM data_keys WHERE aggregate_id = ?", (aggregate_id,)).fetchone()
    return bytes(wrapped)


def every_file(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


async def test_a_rewrap_on_sqlite_leaves_the_old_wrapped_key_in_neither_the_file_nor_its_wal(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    keys = tmp_path / "master.keys"
    async with running_server(SqliteStore(folder / "events.db"), master_key_file=write(keys, f"{SHARED}\n")) as (
        _,
        client,
    ):
        await client.submit(command("globex:acc-1", bank.OpenAccount(owner="Hieronymus Globex-Park")))
        for number in range(2, 6):  # more writes, so that the key's page is in the WAL several times
            await client.submit(command(f"acc-{number}", bank.OpenAccount(owner="someone")))
    old = wrapped_key(folder / "events.db", "globex:acc-1")

    served = running_server(
        SqliteStore(folder / "events.db"), master_key_file=write(keys, f"{SHARED}\n{GLOBEX}\n"), anonymous_admin=True
    )
    async with served as (_, client):
        await client.submit(command("acc-6", bank.OpenAccount(owner="someone")))  # the server's WAL is not empty
        assert (await client.admin.RewrapKeys(admin.RewrapKeysRequest())).rewrapped == 1
        assert wrapped_key(folder / "events.db", "globex:acc-1") != old
        copied = every_file(folder)  # taken while the server runs, as a copy would be
        holding = [name for name, raw in copied.items() if old in raw]
        assert holding == [], f"the data key wrapped by the shared key is still in {holding}"


async def test_a_rewrap_on_postgresql_leaves_the_old_wrapped_keys_out_of_a_dump_and_vacuum_full_clears_the_table(
    postgres_url: str, pg_cluster: Cluster, tmp_path: Path
) -> None:
    if pg_cluster.datadir is None:
        pytest.skip("the test PostgreSQL is not the suite's own: its data directory cannot be read")
    keys = tmp_path / "master.keys"
    async with running_server(PostgresStore(postgres_url, pool_size=2), master_key_file=write(keys, f"{SHARED}\n")) as (
        _,
        client,
    ):
        for number in range(1, 150):  # more than a page of keys: the new rows do not fit beside the old ones
            await client.submit(command(f"globex:acc-{number}", bank.OpenAccount(owner="Hieronymus Globex-Park")))
    with psycopg.connect(postgres_url, autocommit=True) as db:
        query = "SELECT wrapped_key FROM chronicle.data_keys WHERE aggregate_id LIKE 'globex:%'"
        olds = [bytes(row[0]) for row in db.execute(query).fetchall()]
    assert len(olds) == 149

    served = running_server(
        PostgresStore(postgres_url, pool_size=2),
        master_key_file=write(keys, f"{SHARED}\n{GLOBEX}\n"),
        anonymous_admin=True,
    )
    async with served as (_, client):
        assert (await client.admin.RewrapKeys(admin.RewrapKeysRequest())).rewrapped == 149
    dump = postgres_at_rest(postgres_url).read_bytes()  # a pg_dump
    assert [old for old in olds if old in dump] == []

    with psycopg.connect(postgres_url, autocommit=True) as db:

        def in_the_table_files() -> int:
            db.execute("CHECKPOINT")  # the table's pages written out to its files
            (path,) = db.execute("SELECT pg_relation_filepath('chronicle.data_keys')").fetchone()  # type: ignore[misc]
            table = (pg_cluster.datadir / path).read_bytes()
            return sum(old in table for old in olds)

        assert in_the_table_files() > 0  # the dead rows: the page says so
        db.execute("VACUUM chronicle.data_keys")
        assert in_the_table_files() > 0  # a plain VACUUM frees their space, it does not overwrite it
        db.execute("VACUUM FULL chronicle.data_keys")
        assert in_the_table_files() == 0
