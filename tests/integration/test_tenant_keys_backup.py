"""Shredding a tenant reaches its backups (docs/security.md, "Per-tenant
keys"): over a real server and a real gRPC client, on SQLite and
PostgreSQL. Acme is given a key of its own after its first account was
written (RewrapKeys moves it onto that key), a backup is taken (the SQLite
files copied, a ``pg_dump``), acme's key is marked destroyed, and the
backup, restored under a server with the new key file, reads acme's
accounts as forgotten while globex's and the untenanted one still read.
A key file that merely lacks acme's key still says MASTER_KEY_MISSING."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import event_service_pb2 as ev
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.store.base import StoreAdapter
from service.store.encryption import new_master_key
from service.store.memory import MemoryStore
from service.store.sqlite import SqliteStore
from tests.support.backups import Site, backup_site
from tests.support.grpc_client import Client, command, details_of, running_server
from tests.support.security import write
from tests.support.transfer import exported, imported
from tests.support.waiting import eventually

SHARED = f"k1:{new_master_key()}"
ACME = f"acme:2026-01:{new_master_key()}"
GLOBEX = f"globex:2026-01:{new_master_key()}"
ACME_OWNER = "Ottoline Acme-Varga"
GLOBEX_OWNER = "Hieronymus Globex-Park"
UNTENANTED_OWNER = "Philippa No-Tenant"


@pytest.fixture(params=["sqlite", "postgres"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    return backup_site(request, tmp_path)


@asynccontextmanager
async def server(store: StoreAdapter, keys_file: str) -> AsyncIterator[Client]:
    async with running_server(store, master_key_file=keys_file, anonymous_admin=True) as (_, client):
        yield client


async def master_key_of(store: StoreAdapter, aggregate_id: str) -> str | None:
    await store.open()
    try:
        key = await store.load_data_key(aggregate_id)
    finally:
        await store.close()
    return None if key is None else key.master_key_id


async def owner(client: Client, aggregate_id: str) -> str:
    response = await client.events.GetAggregate(ev.GetAggregateRequest(aggregate_id=aggregate_id))
    account = bank.Account()
    assert response.state.Unpack(account)
    return account.owner


async def refused(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    details = details_of(raised.value)
    return details.code, details.reason


async def redactions(client: Client, aggregate_id: str) -> list[bool]:
    request = ev.ReadAggregateRequest(aggregate_id=aggregate_id)
    return [e.redacted async for e in client.events.ReadAggregate(request)]


FORGOTTEN = (grpc.StatusCode.FAILED_PRECONDITION, "AGGREGATE_FORGOTTEN")


async def test_a_destroyed_tenant_key_shreds_the_tenant_in_a_restored_backup(site: Site, tmp_path: Path) -> None:
    keys = tmp_path / "master.keys"
    async with server(site.store(), write(keys, f"{SHARED}\n{GLOBEX}\n")) as client:  # acme has no key yet
        await client.submit(command("acme:acc-1", bank.OpenAccount(owner=ACME_OWNER)))
        await client.submit(command("globex:acc-1", bank.OpenAccount(owner=GLOBEX_OWNER)))
        await client.submit(command("acc-1", bank.OpenAccount(owner=UNTENANTED_OWNER)))
    async with server(site.store(), write(keys, f"{SHARED}\n{ACME}\n{GLOBEX}\n")) as client:
        assert (await client.admin.RewrapKeys(admin.RewrapKeysRequest())).rewrapped == 1  # acme:acc-1 moved
        assert (await client.admin.RewrapKeys(admin.RewrapKeysRequest())).rewrapped == 0
        await client.submit(command("acme:acc-2", bank.OpenAccount(owner=ACME_OWNER)))
        await client.submit(command("acme:acc-1", bank.Deposit(amount=5)))
        assert await owner(client, "acme:acc-1") == ACME_OWNER
    for aggregate_id, master_key_id in [
        ("acme:acc-1", "acme:2026-01"),
        ("acme:acc-2", "acme:2026-01"),
        ("globex:acc-1", "globex:2026-01"),
        ("acc-1", "k1"),
    ]:
        assert await master_key_of(site.store(), aggregate_id) == master_key_id, aggregate_id

    backup = site.back_up()  # last month's backup, say
    for plaintext in (ACME_OWNER, GLOBEX_OWNER, UNTENANTED_OWNER, "Acme-Varga"):
        assert plaintext.encode() not in backup.raw, plaintext  # sealed at rest
    assert b"acme:acc-1" in backup.raw  # the right data: ids are in the clear

    # Acme leaves: its key is destroyed (and every copy of its bytes with it).
    shredded = write(keys, f"{SHARED}\nacme:2026-01:destroyed\n{GLOBEX}\n")
    restored = backup.restore()
    async with server(restored(), shredded) as client:  # the start-up check passes: a shred, not a mistake
        for aggregate_id, events in (("acme:acc-1", 2), ("acme:acc-2", 1)):
            read = client.events.GetAggregate(ev.GetAggregateRequest(aggregate_id=aggregate_id))
            assert await refused(read) == FORGOTTEN
            assert await redactions(client, aggregate_id) == [True] * events
        assert await redactions(client, "globex:acc-1") == [False]
        assert await refused(client.submit(command("acme:acc-1", bank.Deposit(amount=1)))) == FORGOTTEN
        # A new id of the shredded tenant: never forgotten, it cannot be written (before: AGGREGATE_FORGOTTEN).
        with pytest.raises(grpc.aio.AioRpcError) as new_one:
            await client.submit(command("acme:acc-3", bank.OpenAccount(owner="x")))
        details = details_of(new_one.value)
        assert (details.code, details.reason, details.metadata["tenant"]) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "TENANT_SHREDDED",
            "acme",
        )
        assert "master keys of its tenant 'acme' are destroyed" in (new_one.value.details() or "")
        assert await owner(client, "globex:acc-1") == GLOBEX_OWNER
        assert await owner(client, "acc-1") == UNTENANTED_OWNER
        assert (await client.admin.RewrapKeys(admin.RewrapKeysRequest())).rewrapped == 0

    # A key file that merely lacks acme's key is an operator's mistake, said as such.
    async with server(restored(), write(keys, f"{SHARED}\n{GLOBEX}\n")) as client:
        code, reason = await refused(client.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="acme:acc-2")))
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "MASTER_KEY_MISSING")
        assert await owner(client, "globex:acc-1") == GLOBEX_OWNER


def replace_keys(path: Path, text: str) -> None:
    """The key file replaced in one step, as an operator's editor does."""
    written = path.with_suffix(".new")
    write(written, text)
    os.replace(written, path)


async def test_a_shred_holds_on_a_running_server_once_it_reads_the_file(tmp_path: Path) -> None:
    """Its cached data keys and its worker's cached state do not outlive the
    key file read again: the account read just before reads as forgotten."""
    keys = tmp_path / "master.keys"
    write(keys, f"{SHARED}\n{ACME}\n")
    served = running_server(
        SqliteStore(tmp_path / "events.db"), master_key_file=str(keys), auth_reload_seconds=0.05, anonymous_admin=True
    )
    async with served as (_, client):
        await client.submit(command("acme:acc-1", bank.OpenAccount(owner=ACME_OWNER)))
        await client.submit(command("acc-1", bank.OpenAccount(owner=UNTENANTED_OWNER)))
        assert await owner(client, "acme:acc-1") == ACME_OWNER  # its key and state cached now
        replace_keys(keys, f"{SHARED}\nacme:2026-01:destroyed\n")

        async def shredded() -> bool:
            request = ev.GetAggregateRequest(aggregate_id="acme:acc-1")
            try:
                await client.events.GetAggregate(request)
            except grpc.aio.AioRpcError as error:
                return (details_of(error).code, details_of(error).reason) == FORGOTTEN
            return False

        await eventually(shredded, what="the destroyed key read and acme's account forgotten")
        assert await refused(client.submit(command("acme:acc-1", bank.Deposit(amount=1)))) == FORGOTTEN
        assert await owner(client, "acc-1") == UNTENANTED_OWNER


async def test_an_export_imported_under_a_destroyed_tenant_key_reads_as_forgotten(tmp_path: Path) -> None:
    """An export carries data keys wrapped by the tenant's key: imported
    where that key is marked destroyed, they are taken as they are (nothing
    opens them, which is no reason to refuse the rest) and read as forgotten."""
    source = MemoryStore()
    async with server(source, write(tmp_path / "master.keys", f"{SHARED}\n{ACME}\n{GLOBEX}\n")) as client:
        await client.submit(command("acme:acc-1", bank.OpenAccount(owner=ACME_OWNER)))
        await client.submit(command("globex:acc-1", bank.OpenAccount(owner=GLOBEX_OWNER)))
        records = await exported(client)
    shredding = write(tmp_path / "shredding.keys", f"{SHARED}\nacme:2026-01:destroyed\n{GLOBEX}\n")
    async with server(MemoryStore(), shredding) as client:
        await imported(client, records)
        read = client.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="acme:acc-1"))
        assert await refused(read) == FORGOTTEN
        assert await owner(client, "globex:acc-1") == GLOBEX_OWNER
