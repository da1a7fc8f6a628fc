"""Read models' data keys do not travel (docs/export-format.md, "What an
export holds" and "Importing"): a read model seals its documents under a
key of its own, documents are not exported, and a target rebuilds them
under keys it makes. An export leaves those keys out; an import passes over
the ones an export of an older Chronicle carries, counting them
(``read_model_keys_skipped``), so that a running target whose read model
made its key first is not refused. That refusal (DATA_KEY_CONFLICT on
``\\x1fprojection:NAME``) came by timing once in CI; here the target's key is
made first on purpose. Claims scopes' keys still travel: the claimed values
an export carries are keyed hashes that only those keys test again."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import export_pb2
from chronicle.v1 import projection_service_pb2 as pb
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.users.protos.users.v1 import users_pb2 as users
from service import cli
from service.store.base import StoreAdapter
from service.store.encryption import (
    MasterKeys,
    claims_key_id,
    new_master_key,
    projection_key_id,
    tenant_projection_key_id,
)
from service.store.memory import MemoryStore
from service.store.records import DataKey
from service.store.sqlite import SqliteStore
from service.transfer.records import end_record, exported_data_key
from tests.integration.test_import_encryption import write_export
from tests.support.grpc_client import Client, command, details_of, running_server
from tests.support.stores import STORES, store_site
from tests.support.transfer import exported, imported

KEYS = f"k1:{new_master_key()}"
BALANCES = "bank.balances_by_owner"
Record = export_pb2.ExportRecord


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreAdapter]:
    """A store to import into, of each kind."""
    async with STORES[request.param](store_site(request, tmp_path)) as opened:
        yield opened


async def balance_of(client: Client, owner: str, *, at: int = 0) -> int | None:
    """The owner's balance in the bank's read model once it has applied the
    log up to ``at`` (None: no document). A read makes the read model's key
    if it has none, as a write does."""
    try:
        found = await client.projections.GetDocument(
            pb.GetDocumentRequest(projection=BALANCES, key=f"owner:{owner}", min_position=at), timeout=10
        )
    except grpc.aio.AioRpcError as missing:
        if missing.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return None
    document = bank.OwnerBalance()
    assert found.document.Unpack(document)
    return document.balance


async def key_ids(store: StoreAdapter) -> set[str]:
    return {key.aggregate_id for key in await store.data_keys_page("", 1000)}


def as_an_older_chronicle_exported(records: list[Record], keys: list[DataKey]) -> list[Record]:
    """``records`` with ``keys`` as their data keys (every key of the source
    store, read models' included, as Chronicle did before it left those
    out) and the end counting them."""
    header, *rest = [r for r in records if r.WhichOneof("record") not in ("data_key", "end")]
    body = [exported_data_key(key) for key in sorted(keys, key=lambda k: k.aggregate_id)] + rest
    return [header, *body, end_record(Counter(r.WhichOneof("record") or "" for r in body))]


async def an_older_export() -> list[Record]:
    """A store whose read model has its key (and a tenant's key of it, as a
    ``tenant_keyed`` one has), exported as an older Chronicle did."""
    source = MemoryStore()
    async with running_server(source, anonymous_admin=True, master_keys=KEYS) as (_, client):
        opened = await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        await client.submit(command("acc-1", bank.Deposit(amount=70)))
        assert await balance_of(client, "ann", at=opened.events[-1].position + 1) == 70
        master = MasterKeys.parse(KEYS, source="test")
        tenants = tenant_projection_key_id(BALANCES, "acme")
        await source.create_data_key(DataKey(tenants, *master.wrap(os.urandom(32), tenants)))
        records = await exported(client)
    keys = await source.data_keys_page("", 1000)
    assert {projection_key_id(BALANCES), tenants} <= {key.aggregate_id for key in keys}
    return as_an_older_chronicle_exported(records, keys)


async def test_an_import_leaves_out_an_older_exports_read_model_keys_where_the_target_made_its_own(
    target: StoreAdapter,
) -> None:
    """Before the fix: FAILED_PRECONDITION DATA_KEY_CONFLICT, "the store holds
    another data key for the read model 'bank.balances_by_owner'", and
    nothing of the batch written."""
    records = await an_older_export()
    async with running_server(target, anonymous_admin=True, master_keys=KEYS) as (_, client):
        assert await balance_of(client, "ann") is None  # the target's read model makes its key first
        (ours,) = [k for k in await target.data_keys_page("", 1000) if k.aggregate_id == projection_key_id(BALANCES)]

        done = await imported(client, records)

        assert (done.read_model_keys_skipped, done.data_keys_written, done.events_written) == (2, 1, 2)
        assert await key_ids(target) == {"acc-1", projection_key_id(BALANCES)}  # no tenant's key either
        assert (await target.load_data_key(projection_key_id(BALANCES))) == ours
        # The read model applies the imported events under its own key.
        assert await balance_of(client, "ann", at=await target.log_head()) == 70
        again = await imported(client, records)
        assert (again.read_model_keys_skipped, again.data_keys_written, again.events_written) == (2, 0, 0)


async def test_the_command_line_passes_over_them_into_a_store_whose_read_model_has_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``chronicle import --database-url`` (given the master keys, as it
    must be for an encrypted export) says what it passed over in its summary."""
    path = tmp_path / "older.chronicle"
    write_export(path, await an_older_export())
    database = tmp_path / "target.db"
    store = SqliteStore(database)
    await store.open()
    try:
        master = MasterKeys.parse(KEYS, source="test")
        ours = DataKey(projection_key_id(BALANCES), *master.wrap(os.urandom(32), projection_key_id(BALANCES)))
        await store.create_data_key(ours)
    finally:
        await store.close()

    keys = tmp_path / "master.keys"
    keys.touch(mode=0o600)  # as serve, the command refuses a key file others could read (KEY_FILE_READABLE)
    keys.write_text(KEYS + "\n")
    argv = ["import", str(path), "--database-url", f"sqlite:///{database}", "--master-key-file", str(keys), "--quiet"]
    status = await asyncio.to_thread(cli.main, argv)
    out, err = capsys.readouterr()

    assert (status, err) == (0, ""), err
    summary = json.loads(out)
    assert (summary["read_model_keys_skipped"], summary["data_keys_written"]) == (2, 1)
    store = SqliteStore(database)
    await store.open()
    try:
        assert await store.load_data_key(projection_key_id(BALANCES)) == ours
        assert await key_ids(store) == {"acc-1", projection_key_id(BALANCES)}
    finally:
        await store.close()


async def test_an_export_carries_aggregates_and_claims_scopes_keys_and_no_read_models() -> None:
    source = MemoryStore()
    async with running_server(source, anonymous_admin=True, master_keys=KEYS) as (_, client):
        await client.submit(command("usr-1", users.RegisterUser(email="ann@example.com", name="Ann")))
        opened = await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        assert await balance_of(client, "ann", at=opened.events[-1].position) == 0
        assert projection_key_id(BALANCES) in await key_ids(source)
        records = await exported(client)
    carried = [r.data_key.aggregate_id for r in records if r.HasField("data_key")]
    assert carried == [claims_key_id("users.email"), "acc-1", "usr-1"]
    assert records[-1].end.data_keys == 3


async def test_a_claims_scopes_key_still_conflicts_where_the_target_hashed_claims_under_its_own(
    target: StoreAdapter,
) -> None:
    """The other key that is no aggregate's, and is exported: the values an
    export's claim records hold are keyed hashes under it, which the
    target's own key would never match. A target makes it only to take or
    look up a claim (a command), never by itself; one that did refuses the
    import, the scope named and nothing of the batch written."""
    source = MemoryStore()
    async with running_server(source, anonymous_admin=True, master_keys=KEYS) as (_, client):
        await client.submit(command("usr-1", users.RegisterUser(email="ann@example.com", name="Ann")))
        records = await exported(client)
    async with running_server(target, anonymous_admin=True, master_keys=KEYS) as (_, client):
        await client.submit(command("usr-2", users.RegisterUser(email="bob@example.com", name="Bob")))
        before = await key_ids(target)
        assert claims_key_id("users.email") in before
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await imported(client, records)
        details = details_of(refused.value)
        assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DATA_KEY_CONFLICT")
        assert details.metadata["record"] == "1"
        said = refused.value.details() or ""
        assert "another data key for the uniqueness claims of scope 'users.email'" in said, said
        assert "import into a store that has taken no claims in it" in said, said
        assert await key_ids(target) == before


async def test_a_server_without_master_keys_passes_over_a_read_models_key_as_well() -> None:
    """It opens nothing the import writes, so it is no sealed record to
    refuse (ENCRYPTED_EXPORT_WITHOUT_KEYS before the fix)."""
    master = MasterKeys.parse(KEYS, source="test")
    key = DataKey(projection_key_id(BALANCES), *master.wrap(os.urandom(32), projection_key_id(BALANCES)))
    header = Record(header=export_pb2.ExportHeader(format="chronicle.export", format_version=1))
    store = MemoryStore()
    async with running_server(store, anonymous_admin=True) as (_, client):
        done = await imported(client, [header, exported_data_key(key), end_record({"data_key": 1})])
    assert (done.read_model_keys_skipped, done.data_keys_written) == (1, 0)
    assert await key_ids(store) == set()
