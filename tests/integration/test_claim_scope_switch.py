"""Switching a claims scope from global to per tenant (docs/plugins.md,
"Unique per tenant"; docs/export-format.md, "Claims"), over a real server
and a real gRPC client: the old store, whose plugin declared the scope
global, is exported; a new store, whose plugin declares it per tenant,
imports the export with ``derive_per_tenant_claims``. The global claim
records are left out (the end record's counts still hold), each
aggregate's claim is derived in its tenant, the new server starts again
(no CLAIM_SCOPE_SWITCHED), another tenant may take a value and the same
tenant may not. On SQLite and PostgreSQL; the refusals on memory; the
command line's ``--derive-per-tenant-claims`` on a file, as an operator runs it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import admin_service_pb2, export_pb2
from domain_plugins.users.protos.users.v1 import users_pb2 as pb
from service.claim_scopes import tenant_scope
from service.plugins.registry import Registry
from service.store.base import StoreAdapter
from service.store.encryption import new_master_key
from service.store.memory import MemoryStore
from service.store.postgres import PostgresStore
from service.store.sqlite import SqliteStore
from service.transfer.files import write_all
from service.transfer.stream import BINARY, Writer
from tests.support.grpc_client import Client, command, details_of, running_server
from tests.support.import_claims import chronicle
from tests.support.postgres import Cluster
from tests.support.security import write
from tests.support.tenant_members import EMAIL, members
from tests.support.transfer import exported, kinds

ANN = "ann@x.example"
BOB = "bob@x.example"


StoreOf = Callable[[str], StoreAdapter]


@pytest.fixture(params=["sqlite", "postgres"])
def store_of(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreOf]:
    """A store by name: each name its own database, the same one when asked again."""
    if request.param == "sqlite":
        yield lambda name: SqliteStore(tmp_path / f"{name}.db")
        return
    cluster: Cluster = request.getfixturevalue("pg_cluster")
    urls: dict[str, str] = {}

    def postgres(name: str) -> StoreAdapter:
        if name not in urls:
            urls[name] = cluster.create_database()
        return PostgresStore(urls[name], pool_size=2)

    yield postgres
    for url in urls.values():
        cluster.drop_database(url)


@asynccontextmanager
async def server(
    store: StoreAdapter, *, per_tenant: bool, declares_claims: bool = True, keys_file: str = ""
) -> AsyncIterator[Client]:
    registry = Registry([members(per_tenant=per_tenant, declares_claims=declares_claims)])
    served = running_server(store, registry=registry, anonymous_admin=True, master_key_file=keys_file)
    async with served as (_, client):
        yield client


async def register(client: Client, aggregate_id: str, email: str = ANN) -> None:
    await client.submit(command(aggregate_id, pb.RegisterUser(email=email, name="Ann")))


async def refused_reason(client: Client, aggregate_id: str, email: str = ANN) -> tuple[str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await register(client, aggregate_id, email)
    details = details_of(raised.value)
    return details.reason, details.metadata


async def switched(
    client: Client, records: list[export_pb2.ExportRecord], *, derive: bool = True
) -> admin_service_pb2.ImportLogResponse:
    """``ImportLog`` of ``records`` with ``derive_per_tenant_claims``."""

    async def requests() -> AsyncIterator[admin_service_pb2.ImportLogRequest]:
        for index, record in enumerate(records):
            request = admin_service_pb2.ImportLogRequest(record=record)
            if index == 0:
                request.options.derive_per_tenant_claims = derive
            yield request

    response: admin_service_pb2.ImportLogResponse = await client.admin.ImportLog(requests(), timeout=60)
    return response


async def import_refused(client: Client, records: list[export_pb2.ExportRecord], *, derive: bool = True) -> str:
    """The reason ``switched`` is refused, its message after it."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await switched(client, records, derive=derive)
    details = details_of(raised.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    return f"{details.reason}: {raised.value.details()}"


async def global_export(*aggregates: tuple[str, str]) -> list[export_pb2.ExportRecord]:
    """The export of a store whose plugin declared the scope global, where
    each (aggregate, address) of ``aggregates`` registered."""
    async with server(MemoryStore(), per_tenant=False) as client:
        for aggregate_id, email in aggregates:
            await register(client, aggregate_id, email)
        return await exported(client)


async def test_an_export_of_global_claims_imports_per_tenant_with_derive_per_tenant_claims(store_of: StoreOf) -> None:
    async with server(store_of("old"), per_tenant=False) as client:
        await register(client, "acme:m-1", ANN)
        await register(client, "globex:m-2", BOB)
        assert (await refused_reason(client, "globex:m-3", ANN))[0] == "NOT_UNIQUE"  # global: across tenants
        records = await exported(client)
    assert {(r.claim.scope, r.claim.value) for r in records if r.HasField("claim")} == {(EMAIL, ANN), (EMAIL, BOB)}

    async with server(store_of("new"), per_tenant=True) as client:
        summary = await switched(client, records)
        assert (
            summary.global_claims_left_out,
            summary.claims_derived,
            summary.claims_written,
            summary.aggregates_without_claims,
        ) == (2, 2, 2, 0)
        stored = {
            (r.claim.scope, r.claim.value, r.claim.aggregate_id) for r in await exported(client) if r.HasField("claim")
        }
        assert stored == {
            (tenant_scope(EMAIL, "acme"), ANN, "acme:m-1"),
            (tenant_scope(EMAIL, "globex"), BOB, "globex:m-2"),
        }

    async with server(store_of("new"), per_tenant=True) as client:  # starts: no global claim in the scope
        await register(client, "globex:m-3", ANN)  # another tenant: its own now
        assert await refused_reason(client, "acme:m-4", ANN) == ("NOT_UNIQUE", {"scope": EMAIL, "tenant": "acme"})
        assert (await refused_reason(client, "globex:m-5", BOB))[0] == "NOT_UNIQUE"
        await register(client, "acme:m-6", BOB)


async def test_encrypted_claims_are_derived_under_each_tenants_key(tmp_path: Path) -> None:
    """Under encryption at rest a global claim's value is a hash under the
    scope's key, which no tenant's scope shares: the claim is derived from
    the state (which the server opens), and hidden under the tenant's key."""
    keys = write(tmp_path / "master.keys", "\n".join(f"{k}:{new_master_key()}" for k in ("k1", "acme:1", "globex:1")))
    async with server(MemoryStore(), per_tenant=False, keys_file=keys) as client:
        await register(client, "acme:m-1", ANN)
        records = await exported(client)
    [hidden] = [r.claim.value for r in records if r.HasField("claim")]
    assert hidden != ANN  # a keyed hash under the scope's key

    async with server(MemoryStore(), per_tenant=True, keys_file=keys) as client:
        summary = await switched(client, records)
        assert (summary.global_claims_left_out, summary.claims_derived, summary.claims_written) == (1, 1, 1)
        [claim] = [r.claim for r in await exported(client) if r.HasField("claim")]
        assert (claim.scope, claim.aggregate_id) == (tenant_scope(EMAIL, "acme"), "acme:m-1")
        assert claim.value != ANN
        await register(client, "globex:m-2", ANN)
        assert (await refused_reason(client, "acme:m-3", ANN))[0] == "NOT_UNIQUE"


async def test_without_the_option_a_global_claim_in_a_per_tenant_scope_is_refused_and_names_the_option() -> None:
    records = await global_export(("acme:m-1", ANN))
    async with server(MemoryStore(), per_tenant=True) as client:
        refusal = await import_refused(client, records, derive=False)
    assert refusal.startswith("BAD_RECORD: ")
    assert "'members.email' is declared per tenant" in refusal and "--derive-per-tenant-claims" in refusal


async def test_a_claim_of_a_type_that_declares_no_claims_is_refused_not_dropped() -> None:
    """Left out, nothing would take its value again."""
    records = await global_export(("acme:m-1", ANN))
    async with server(MemoryStore(), per_tenant=True, declares_claims=False) as client:
        refusal = await import_refused(client, records)
        assert refusal.startswith("BAD_RECORD: ") and "cannot be derived per tenant" in refusal
        assert "@aggregate.claims" in refusal
        assert not [r for r in await exported(client) if r.HasField("claim")]


async def test_a_claim_of_an_aggregate_of_no_tenant_is_refused() -> None:
    records = await global_export(("m-1", ANN))
    async with server(MemoryStore(), per_tenant=True) as client:
        refusal = await import_refused(client, records)
    assert refusal.startswith("BAD_RECORD: ") and "names no tenant" in refusal


async def test_the_option_with_no_scope_declared_per_tenant_is_refused_before_anything_is_written() -> None:
    """A server still on the old plugin: the switch would leave the claims global."""
    records = await global_export(("acme:m-1", ANN))
    async with server(MemoryStore(), per_tenant=False) as client:
        refusal = await import_refused(client, records)
        assert refusal.startswith("NO_PER_TENANT_SCOPES: ")
        assert kinds(await exported(client)) == ["header", "end"]


def test_the_command_line_switches_an_export_file_into_a_new_store(tmp_path: Path) -> None:
    """``chronicle import FILE --derive-per-tenant-claims --database-url``,
    the plugin declaring the scope per tenant: refused without the flag
    (BAD_RECORD naming it), imported with it."""
    records = asyncio.run(global_export(("acme:m-1", ANN), ("globex:m-2", BOB)))
    export = tmp_path / "old.chronicle"
    with export.open("wb") as out:
        write_all(records, Writer(out, BINARY), None)
    url = f"sqlite:///{tmp_path}/new.db"
    plugins = {"CHRONICLE_DISCOVER_PLUGINS": "false", "CHRONICLE_PLUGINS": "tests.support.tenant_members:per_tenant"}

    without = chronicle("import", str(export), "--database-url", url, "--quiet", env=plugins, check=False)
    assert without.returncode != 0
    assert "BAD_RECORD" in without.stderr and "--derive-per-tenant-claims" in without.stderr

    done = chronicle("import", str(export), "--derive-per-tenant-claims", "--database-url", url, env=plugins)
    summary = json.loads(done.stdout)
    assert (summary["global_claims_left_out"], summary["claims_derived"], summary["claims_written"]) == (2, 2, 2)
    assert "2 global claims of per-tenant scopes left out" in done.stderr
