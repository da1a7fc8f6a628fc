"""An import leaves no copy of a data key it replaced in a SQLite file or its
WAL (docs/security.md, "Per-tenant keys"), as a rewrap does
(test_rewrap_leaves_no_old_keys.py): over real servers and a real gRPC
client. An import never puts another wrapped key in place of a live one,
overwriting or not (DATA_KEY_CONFLICT: what the target sealed is sealed
under its key); the one way it replaces a key is a stream that carries the
aggregate forgotten, which erases the target's key, and then the target's
whole data directory (file, WAL, shared memory, read while the server runs,
as a copy would be) must hold the erased wrapped key nowhere."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.store.encryption import new_master_key
from service.store.sqlite import SqliteStore
from tests.integration.test_rewrap_leaves_no_old_keys import every_file, wrapped_key
from tests.support.grpc_client import command, details_of, running_server
from tests.support.security import write
from tests.support.transfer import exported, imported

SHARED = f"k1:{new_master_key()}"


async def test_an_import_erasing_a_key_leaves_it_in_neither_the_file_nor_its_wal(tmp_path: Path) -> None:
    keys = write(tmp_path / "master.keys", f"{SHARED}\n")
    target = tmp_path / "target"
    source = running_server(SqliteStore(tmp_path / "source.db"), master_key_file=keys, anonymous_admin=True)
    async with source as (_, at_source):
        await at_source.submit(command("acc-1", bank.OpenAccount(owner="Ottoline Varga")))
        live = await exported(at_source)
        await at_source.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id="acc-1"), timeout=10)
        forgotten = await exported(at_source)

    served = running_server(SqliteStore(target / "events.db"), master_key_file=keys, anonymous_admin=True)
    async with served as (_, at_target):
        await imported(at_target, live)
        for number in range(2, 6):  # more writes, so that the key's page is in the WAL several times
            await at_target.submit(command(f"acc-{number}", bank.OpenAccount(owner="someone")))
        old = wrapped_key(target / "events.db", "acc-1")
        assert [name for name, raw in every_file(target).items() if old in raw]  # there, before

        await imported(at_target, forgotten, overwrite=True)
        copied = every_file(target)  # taken while the server runs, as a copy would be
        holding = [name for name, raw in copied.items() if old in raw]
        assert holding == [], f"the erased data key is still in {holding}"


async def test_an_overwriting_import_never_replaces_a_live_key(tmp_path: Path) -> None:
    keys = write(tmp_path / "master.keys", f"{SHARED}\n")
    other = running_server(SqliteStore(tmp_path / "other.db"), master_key_file=keys, anonymous_admin=True)
    async with other as (_, at_other):
        await at_other.submit(command("acc-1", bank.OpenAccount(owner="someone else")))
        theirs = await exported(at_other)  # acc-1 under another data key

    served = running_server(SqliteStore(tmp_path / "target.db"), master_key_file=keys, anonymous_admin=True)
    async with served as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="Ottoline Varga")))
        ours = wrapped_key(tmp_path / "target.db", "acc-1")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await imported(client, theirs, overwrite=True)
        assert details_of(refused.value).reason == "DATA_KEY_CONFLICT"
        assert wrapped_key(tmp_path / "target.db", "acc-1") == ours
