"""Claims scopes unique per tenant over a real server and a real gRPC
client, on SQLite and PostgreSQL (docs/plugins.md, "Unique per tenant";
docs/security.md, "Per-tenant keys"). Two tenants may hold one address; a
tenant holds it once; an aggregate of no tenant is refused; a backup is
taken (the SQLite files copied, a ``pg_dump``), acme's master key is
marked destroyed, and in the backup no key the shared master key wraps
hashes a guess of acme's address to its stored row, the server refuses
acme's claims as its aggregates (TENANT_SHREDDED) and globex's claims work
on. A scope declared per tenant over claims taken while it was global is
refused at start (CLAIM_SCOPE_SWITCHED); one whose per-tenant declaration
is dropped is checked per tenant still, and warned of."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from domain_plugins.users.protos.users.v1 import users_pb2 as pb
from service.claim_scopes import tenant_scope
from service.errors import ConfigurationError
from service.plugins import CommandContext, Plugin
from service.plugins.registry import Registry
from service.store.base import Store, StoreAdapter
from service.store.encryption import MasterKeys, hidden_claim_value, new_master_key
from service.store.memory import MemoryStore
from service.store.sqlite import SqliteStore
from tests.support.backups import Site, backup_site
from tests.support.grpc_client import Client, command, details_of, running_server
from tests.support.security import write
from tests.support.transfer import exported, imported

SHARED = f"k1:{new_master_key()}"
ACME = f"acme:2026-01:{new_master_key()}"
GLOBEX = f"globex:2026-01:{new_master_key()}"
ACME_DESTROYED = "acme:2026-01:destroyed"
EMAIL = "members.email"
ANN = "ann@x.example"


def members(*, per_tenant: bool | None) -> Plugin:
    """Members registered with an address unique in ``members.email``:
    per tenant, or (as before the declaration) across all; None: the scope
    not declared (global, as any scope nobody declares)."""
    plugin = Plugin("members")
    scope = EMAIL if per_tenant is None else plugin.claims_scope(EMAIL, per_tenant=per_tenant)
    member = plugin.aggregate("Member", state=pb.User)

    @member.command(pb.RegisterUser, creates=True)
    def register(command: pb.RegisterUser, state: pb.User, context: CommandContext) -> pb.UserRegistered:
        context.claim(scope, command.email)
        return pb.UserRegistered(email=command.email, name=command.name)

    @member.apply(pb.UserRegistered)
    def _registered(state: pb.User, event: pb.UserRegistered) -> None:
        state.email = event.email

    return plugin


@pytest.fixture(params=["sqlite", "postgres"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    return backup_site(request, tmp_path)


@asynccontextmanager
async def server(
    store: StoreAdapter, keys_file: str | None, *, per_tenant: bool | None = True
) -> AsyncIterator[Client]:
    registry = Registry([members(per_tenant=per_tenant)])
    served = running_server(store, registry=registry, anonymous_admin=True, master_key_file=keys_file or "")
    async with served as (_, client):
        yield client


async def register(client: Client, aggregate_id: str, email: str = ANN) -> None:
    await client.submit(command(aggregate_id, pb.RegisterUser(email=email, name="Ann")))


async def refused(client: Client, aggregate_id: str, email: str = ANN) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await register(client, aggregate_id, email)
    details = details_of(raised.value)
    return details.code, details.reason, details.metadata


async def test_two_tenants_hold_one_address_and_a_shred_makes_acmes_untestable_in_a_backup(
    site: Site, tmp_path: Path
) -> None:
    keys = tmp_path / "master.keys"
    async with server(site.store(), write(keys, f"{SHARED}\n{ACME}\n{GLOBEX}\n")) as client:
        await register(client, "acme:m-1")
        await register(client, "globex:m-1")  # another tenant: its own
        assert await refused(client, "acme:m-2") == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "NOT_UNIQUE",
            {"scope": EMAIL, "tenant": "acme"},
        )
        assert await refused(client, "m-3") == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "CLAIM_WITHOUT_TENANT",
            {"scope": EMAIL, "aggregate_id": "m-3"},
        )

    backup = site.back_up()
    assert ANN.encode() not in backup.raw  # hashed; the events sealed
    store = backup.restore()()
    await store.open()
    try:
        rows = await Store.of(store).transfer.claims_page(("", ""), 100)
        acme_row = next(row for row in rows if row.scope == tenant_scope(EMAIL, "acme"))
        # The attacker of the backup holds the shared key: every data key it wraps opens, and none of them
        # hashes the guess to acme's row, under the scope or under acme's scope (the same guess under
        # acme's own key, while it lives, does: the row is that hash).
        shared = MasterKeys.parse(SHARED, source="attacker")
        opened = [AESGCM(shared.unwrap(k)) for k in await store.data_keys_to_rewrap("", 100) if k.master_key_id == "k1"]
        guesses = {hidden_claim_value(c, s, ANN) for c in opened for s in (EMAIL, acme_row.scope)}
        assert acme_row.value not in guesses
        acme_key = await store.load_data_key("\x1fclaims:" + acme_row.scope)
        assert acme_key is not None and acme_key.master_key_id == "acme:2026-01"
        acme = MasterKeys.parse(f"{SHARED},{ACME}", source="test")
        assert hidden_claim_value(AESGCM(acme.unwrap(acme_key)), acme_row.scope, ANN) == acme_row.value
    finally:
        await store.close()

    shredded = write(keys, f"{SHARED}\n{ACME_DESTROYED}\n{GLOBEX}\n")
    async with server(backup.restore()(), shredded) as client:
        code, reason, _ = await refused(client, "acme:m-4")
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "TENANT_SHREDDED")
        # globex's claims work on: its address held, another free.
        assert (await refused(client, "globex:m-2"))[1] == "NOT_UNIQUE"
        await register(client, "globex:m-2", "bob@x.example")
        assert (await refused(client, "globex:m-3", "bob@x.example"))[1] == "NOT_UNIQUE"


async def test_a_scope_declared_per_tenant_over_its_global_claims_does_not_start(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    async with server(SqliteStore(path), None, per_tenant=False) as client:
        await register(client, "acme:m-1")
        assert (await refused(client, "globex:m-1"))[1] == "NOT_UNIQUE"  # global: across tenants
    with pytest.raises(ConfigurationError) as switched:
        async with server(SqliteStore(path), None):
            pass
    assert (switched.value.reason, switched.value.metadata) == (
        "CLAIM_SCOPE_SWITCHED",
        {"scope": EMAIL, "declared": "per_tenant"},
    )
    assert "import --derive-per-tenant-claims" in switched.value.message  # the way over (test_claim_scope_switch.py)
    async with server(SqliteStore(path), None, per_tenant=False) as client:  # declared as it was: starts
        assert (await refused(client, "acme:m-2"))[1] == "NOT_UNIQUE"


async def test_a_scope_declared_global_over_its_tenants_claims_does_not_start(site: Site) -> None:
    async with server(site.store(), None) as client:
        await register(client, "acme:m-1")
        await register(client, "globex:m-1")  # per tenant: each its own
    with pytest.raises(ConfigurationError) as switched:
        async with server(site.store(), None, per_tenant=False):
            pass
    assert (switched.value.reason, switched.value.metadata) == (
        "CLAIM_SCOPE_SWITCHED",
        {"scope": EMAIL, "declared": "global"},
    )
    assert "no import moves its claims" in switched.value.message
    async with server(site.store(), None) as client:  # declared as it was: starts, and checks per tenant
        assert (await refused(client, "acme:m-2"))[1] == "NOT_UNIQUE"


async def test_a_per_tenant_scope_no_plugin_declares_any_more_is_still_checked_per_tenant(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    warning = f"claims scope {EMAIL!r} holds claims stored per tenant, but no plugin declares it any more"
    async with server(site.store(), None) as client:
        await register(client, "acme:m-1")
    assert warning not in caplog.text
    async with server(site.store(), None, per_tenant=None) as client:  # the declaration dropped: starts
        assert warning in caplog.text
        assert "plugin.claims_scope('members.email', per_tenant=True)" in caplog.text
        # Checked globally, acme's claim would be seen by no one, and a global claim taken.
        assert await refused(client, "acme:m-2") == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "NOT_UNIQUE",
            {"scope": EMAIL, "tenant": "acme"},
        )
        await register(client, "globex:m-1")  # another tenant: its own
        assert (await refused(client, "m-9"))[1] == "CLAIM_WITHOUT_TENANT"
    caplog.clear()
    async with server(site.store(), None) as client:  # declared per tenant again: no global claim was taken
        assert (await refused(client, "globex:m-2"))[1] == "NOT_UNIQUE"
    assert warning not in caplog.text


async def test_an_export_of_tenants_claims_imports_and_they_hold(tmp_path: Path) -> None:
    """The stored scope and the tenant's key of it hold the mark before the
    tenant (a control character): an import takes both as they are."""
    keys = write(tmp_path / "master.keys", f"{SHARED}\n{ACME}\n{GLOBEX}\n")
    async with server(MemoryStore(), keys) as client:
        await register(client, "acme:m-1")
        await register(client, "globex:m-1")
        records = await exported(client)
    assert {r.claim.scope for r in records if r.HasField("claim")} == {
        tenant_scope(EMAIL, "acme"),
        tenant_scope(EMAIL, "globex"),
    }
    async with server(MemoryStore(), keys) as client:
        await imported(client, records)
        assert (await refused(client, "acme:m-2"))[1] == "NOT_UNIQUE"
        assert (await refused(client, "globex:m-2"))[1] == "NOT_UNIQUE"
        await register(client, "initech:m-1")  # another tenant: free


async def test_global_claims_imported_into_a_per_tenant_scope_are_refused(tmp_path: Path) -> None:
    """An export of before the declaration (or a conversion's mapping)
    gives them global: no one would check them, so the import refuses the
    record."""
    async with server(MemoryStore(), None, per_tenant=False) as client:
        await register(client, "acme:m-1")
        records = await exported(client)
    async with server(MemoryStore(), None) as client:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await imported(client, records)
        details = details_of(raised.value)
        assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_RECORD")
        assert "'members.email' is declared per tenant" in (raised.value.details() or "")
