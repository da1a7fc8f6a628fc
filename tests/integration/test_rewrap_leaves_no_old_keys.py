"""A rewrap leaves no copy of the keys it replaced (docs/security.md,
"Per-tenant keys"): over a real server and a real gRPC client. Globex's
account is written under the shared key, globex is given a key of its own
and ``RewrapKeys`` moves the account's data key onto it; a copy of the
store taken then must not hold the data key wrapped by the shared key,
which with the shared key alone would open globex's payloads after globex
is shredded. On SQLite the whole data directory (file, WAL, shared memory)
is read while the server runs, as a copy of it would be."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from chronicle.v1 import admin_service_pb2 as admin
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.store.encryption import new_master_key
from service.store.sqlite import SqliteStore
from tests.support.grpc_client import command, running_server
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
