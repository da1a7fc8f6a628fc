"""Encryption at rest and forgetting, over a real socket: what the database
file holds, what clients read, and what a forgotten aggregate becomes."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import command_service_pb2, event_service_pb2
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.users.protos.users.v1 import users_pb2 as users
from service.api.health import Health, StoreMonitor
from service.app import start
from service.errors import ConfigurationError
from service.plugins.registry import Registry
from service.processing.commands import CommandRequest
from service.processing.executor import CommandExecutor
from service.store.base import Store, StoreAdapter
from service.store.encryption import (
    claims_key_id,
    new_master_key,
    projection_key_id,
    refuse_if_sealed,
    tenant_projection_key_id,
)
from service.store.memory import MemoryStore
from service.store.postgres import PostgresStore
from service.store.records import DataKey, DocumentWrite, HeldClaim
from service.store.sqlite import SqliteStore
from tests.support.contents import at_rest, contents
from tests.support.grpc_client import TEST_SETTINGS, Client, command, details_of, running_server, with_jwt_auth
from tests.support.security import write
from tests.support.waiting import eventually

SECRET_OWNER = "Zelda Quartermain-Oyelaran"
REGISTRY = Registry([bank_account.plugin])


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    keys = write(tmp_path / "master.keys", f"k1:{new_master_key()}\n")
    # Forgetting is an administrator's: anonymous callers are one only by opt-in.
    store = SqliteStore(tmp_path / "db" / "events.db")
    async with running_server(store, master_key_file=keys, anonymous_admin=True) as (_, connected):
        yield connected


async def read(client: Client, aggregate_id: str) -> list[object]:
    request = event_service_pb2.ReadAggregateRequest(aggregate_id=aggregate_id)
    return [e async for e in client.events.ReadAggregate(request)]


async def refusal(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    details = details_of(raised.value)
    return details.code, details.reason


async def test_payloads_are_unreadable_in_the_database_but_readable_through_the_api(
    client: Client, tmp_path: Path
) -> None:
    await client.submit(command("acc-1", bank.OpenAccount(owner=SECRET_OWNER)))
    on_disk = b"".join(path.read_bytes() for path in (tmp_path / "db").iterdir())  # the file, its WAL
    assert b"acc-1" in on_disk  # the envelope is in the clear: the file is the right one
    assert SECRET_OWNER.encode() not in on_disk
    (event,) = await read(client, "acc-1")
    opened = bank.AccountOpened()
    assert event.payload.Unpack(opened)  # type: ignore[attr-defined]
    assert opened.owner == SECRET_OWNER
    state = await client.events.GetAggregate(event_service_pb2.GetAggregateRequest(aggregate_id="acc-1"))
    account = bank.Account()
    assert state.state.Unpack(account)
    assert account.owner == SECRET_OWNER


async def test_claimed_email_addresses_are_not_in_the_database(client: Client, tmp_path: Path) -> None:
    await client.submit(command("user-1", users.RegisterUser(email="zelda@quartermain.example", name="Z")))
    await client.submit(command("user-1", users.ChangeEmail(email="z.q@oyelaran.example")))
    on_disk = b"".join(path.read_bytes() for path in (tmp_path / "db").iterdir())
    assert b"user-1" in on_disk
    assert b"quartermain" not in on_disk
    assert b"oyelaran" not in on_disk
    taken = client.submit(command("user-2", users.RegisterUser(email="z.q@oyelaran.example", name="Z")))
    assert await refusal(taken) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_UNIQUE")


async def test_a_forgotten_aggregate_reads_redacted(client: Client) -> None:
    await client.submit(command("acc-1", bank.OpenAccount(owner=SECRET_OWNER)))
    await client.submit(command("acc-1", bank.Deposit(amount=5)))
    forgotten = await client.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id="acc-1"))
    assert not forgotten.already_forgotten
    events = await read(client, "acc-1")
    assert [(e.version, e.redacted, e.HasField("payload"), e.event_type) for e in events] == [  # type: ignore[attr-defined]
        (1, True, False, "bank.v1.AccountOpened"),
        (2, True, False, "bank.v1.MoneyDeposited"),
    ]


async def test_a_forgotten_aggregate_cannot_be_rebuilt_or_changed(client: Client) -> None:
    await client.submit(command("acc-1", bank.OpenAccount(owner=SECRET_OWNER)))
    await client.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id="acc-1"))
    get = client.events.GetAggregate(event_service_pb2.GetAggregateRequest(aggregate_id="acc-1"))
    assert await refusal(get) == (grpc.StatusCode.FAILED_PRECONDITION, "AGGREGATE_FORGOTTEN")
    deposit = client.submit(command("acc-1", bank.Deposit(amount=5)))
    assert await refusal(deposit) == (grpc.StatusCode.FAILED_PRECONDITION, "AGGREGATE_FORGOTTEN")
    assert len(await read(client, "acc-1")) == 1


async def test_forgetting_twice_says_so(client: Client) -> None:
    await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    await client.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id="acc-1"))
    again = await client.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id="acc-1"))
    assert again.already_forgotten


async def test_an_aggregate_without_a_key_cannot_be_forgotten(client: Client) -> None:
    call = client.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id="nobody"))
    assert await refusal(call) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_ENCRYPTED")


async def test_an_aggregate_that_only_ever_refused_commands_can_be_forgotten(client: Client) -> None:
    """Its refusals are sealed under a key made for them, which forgetting erases."""
    withdrawal = client.submit(command("acc-9", bank.Withdraw(amount=5)))
    code, reason = await refusal(withdrawal)
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")  # the handler's refusal
    assert await read(client, "acc-9") == []  # no event, yet a key

    async def refusals_audited() -> list[tuple[str, str]]:
        audit = await client.admin.QueryAudit(admin.QueryAuditRequest(aggregate_id="acc-9"))
        return [(e.reason, e.message) for e in audit.entries if e.command_type == "bank.v1.Withdraw"]

    ((_, message),) = await refusals_audited()
    assert message
    forgotten = await client.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id="acc-9"))
    assert not forgotten.already_forgotten
    assert await refusals_audited() == [(reason, "")]  # its text went with the key


async def test_forgetting_needs_encryption() -> None:
    async with running_server(MemoryStore(), anonymous_admin=True) as (_, plain):
        call = plain.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id="acc-1"))
        assert await refusal(call) == (grpc.StatusCode.FAILED_PRECONDITION, "ENCRYPTION_OFF")


async def test_subscribers_read_plaintext_and_see_a_forgotten_aggregate_redacted(client: Client) -> None:
    await client.submit(command("acc-1", bank.OpenAccount(owner=SECRET_OWNER)))
    await client.submit(command("acc-2", bank.OpenAccount(owner="kept")))
    await client.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id="acc-1"))
    stream = client.events.Subscribe(event_service_pb2.SubscribeRequest())
    events = []
    async for response in stream:
        if response.HasField("caught_up"):
            break
        events.append(response.event)
    stream.cancel()
    assert [(e.aggregate_id, e.redacted) for e in events] == [("acc-1", True), ("acc-2", False)]
    opened = bank.AccountOpened()
    assert events[1].payload.Unpack(opened)
    assert opened.owner == "kept"


async def test_read_models_are_sealed_too_but_read_in_the_clear(client: Client, tmp_path: Path) -> None:
    from chronicle.v1 import projection_service_pb2 as projections
    from tests.support.waiting import eventually

    await client.submit(command("acc-1", bank.OpenAccount(owner=SECRET_OWNER)))
    request = projections.GetDocumentRequest(projection="bank.balances_by_owner", key=f"owner:{SECRET_OWNER}")

    async def projected() -> bool:
        status = await client.projections.GetProjection(projections.GetProjectionRequest(name="bank.balances_by_owner"))
        return bool(status.position == status.log_head)

    await eventually(projected, what="the read model catching up")
    found = await client.projections.GetDocument(request)
    document = bank.OwnerBalance()
    assert found.document.Unpack(document)
    assert document.owner == SECRET_OWNER
    on_disk = b"".join(path.read_bytes() for path in (tmp_path / "db").iterdir())
    assert b"bank.balances_by_owner" in on_disk  # the read model is in this file
    assert SECRET_OWNER.encode() not in on_disk
    # The keys are keyed hashes: there is no order or prefix to list them by.
    assert await refusal(
        client.projections.ListDocuments(projections.ListDocumentsRequest(projection="bank.balances_by_owner"))
    ) == (grpc.StatusCode.FAILED_PRECONDITION, "DOCUMENT_KEYS_HIDDEN")
    # By key, several at once: each key hashed as the store keeps it.
    keys = [f"owner:{SECRET_OWNER}", "account:acc-1", "owner:nobody"]
    several = await client.projections.GetDocuments(
        projections.GetDocumentsRequest(projection="bank.balances_by_owner", keys=keys)
    )
    assert [d.key for d in several.documents] == keys[:2] and list(several.missing_keys) == ["owner:nobody"]
    assert several.documents[0].document == found.document
    # Counted: all of them (every hashed key is the projection's), by no prefix.
    every = projections.CountDocumentsRequest(projection="bank.balances_by_owner")
    assert (await client.projections.CountDocuments(every)).count == 2
    by_prefix = projections.CountDocumentsRequest(projection="bank.balances_by_owner", key_prefix="owner:")
    assert await refusal(client.projections.CountDocuments(by_prefix)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "DOCUMENT_KEYS_HIDDEN",
    )


async def test_forgetting_is_audited_with_who_and_what(tmp_path: Path) -> None:
    from tests.support.grpc_client import connect
    from tests.support.security import JwtIssuer, bearer

    issuer = JwtIssuer()
    async with running_server(
        MemoryStore(),
        master_keys=f"k1:{new_master_key()}",
        settings=with_jwt_auth(tmp_path, issuer),
    ) as (app, _):
        async with connect(app.address, interceptors=bearer(issuer.token("alice"))) as alice:
            await alice.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id=""))
            denied = alice.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id="acc-1"))
            assert await refusal(denied) == (grpc.StatusCode.PERMISSION_DENIED, "ADMIN_DENIED")
        async with connect(app.address, interceptors=bearer(issuer.token("root"))) as root:
            await root.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id="acc-1"))
            audit = await root.admin.QueryAudit(admin.QueryAuditRequest(aggregate_id="acc-1"))
    done, refused, opened = audit.entries
    assert (done.command_type, done.principal, done.outcome) == (
        "chronicle.v1.AdminService/ForgetAggregate",
        "root",
        admin.AUDIT_OUTCOME_ACCEPTED,
    )
    assert (refused.principal, refused.outcome, refused.reason) == (
        "alice",
        admin.AUDIT_OUTCOME_REFUSED,
        "ADMIN_DENIED",
    )
    assert opened.command_type == "bank.v1.OpenAccount"
    # The administrator's address, as every entry of a call carries it.
    assert done.peer.startswith("ipv4:127.0.0.1:") and refused.peer.startswith("ipv4:127.0.0.1:")


# -- rotating the master key: RewrapKeys ----------------------------------------

OLD = f"old:{new_master_key()}"
NEW = f"new:{new_master_key()}"
REWRAP = "chronicle.v1.AdminService/RewrapKeys"


async def stale_keys(path: Path, active: str) -> int:
    """How many live data keys in the SQLite file ``active`` did not wrap."""
    store = SqliteStore(path)
    await store.open()
    try:
        return len(await store.data_keys_to_rewrap(active, 10_000))
    finally:
        await store.close()


async def test_rewrapping_moves_every_key_to_the_new_master_key_and_the_old_one_can_go(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    async with running_server(SqliteStore(path), master_keys=OLD, anonymous_admin=True) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner=SECRET_OWNER)))
        await client.submit(command("user-1", users.RegisterUser(email="zelda@quartermain.example", name="Z")))
    wrapped_by_old = await stale_keys(path, "new")
    assert wrapped_by_old >= 2  # the account's key and the e-mail scope's
    store = SqliteStore(path)
    async with running_server(store, master_keys=f"{NEW},{OLD}", anonymous_admin=True) as (_, client):
        before = await at_rest(store)
        rewrapped = await client.admin.RewrapKeys(admin.RewrapKeysRequest())
        again = await client.admin.RewrapKeys(admin.RewrapKeysRequest())
        changes = (await at_rest(store)).changes_since(before)
    assert (rewrapped.rewrapped, again.rewrapped) == (wrapped_by_old, 0)
    assert await stale_keys(path, "new") == 0
    assert "events" not in changes  # keys are rewrapped, events left as they are
    assert len(changes["data_keys"].added) == wrapped_by_old
    async with running_server(SqliteStore(path), master_keys=NEW, anonymous_admin=True) as (
        _,
        client,
    ):  # the old key removed
        (event,) = await read(client, "acc-1")
        opened = bank.AccountOpened()
        assert event.payload.Unpack(opened)  # type: ignore[attr-defined]
        assert opened.owner == SECRET_OWNER
        taken = client.submit(command("user-2", users.RegisterUser(email="zelda@quartermain.example", name="Z")))
        assert await refusal(taken) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_UNIQUE")
    with pytest.raises(ConfigurationError) as refused:  # only the retired key: it opens none of the keys
        async with running_server(SqliteStore(path), master_keys=OLD, anonymous_admin=True):
            pass
    assert refused.value.reason == "MASTER_KEY_MISSING"
    assert "'new'" in refused.value.message  # what the keys are wrapped by


def write_keys(path: Path, text: str) -> None:
    """The master-key file replaced as an operator's editor or a secret
    store does: a new file, private, moved into place."""
    written = path.with_suffix(".new")
    written.write_text(text)
    written.chmod(0o600)
    os.replace(written, path)


async def test_the_master_key_file_is_read_again_so_a_rotation_needs_no_restart(tmp_path: Path) -> None:
    path, keys = tmp_path / "events.db", tmp_path / "master.keys"
    write_keys(keys, f"{OLD}\n")
    served = running_server(
        SqliteStore(path), master_key_file=str(keys), auth_reload_seconds=0.05, anonymous_admin=True
    )
    async with served as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner=SECRET_OWNER)))
        write_keys(keys, f"{NEW}\n{OLD}\n")  # the new key first, the old one after it
        rewrapped = 0

        async def all_rewrapped() -> bool:
            nonlocal rewrapped
            done = int((await client.admin.RewrapKeys(admin.RewrapKeysRequest())).rewrapped)
            rewrapped += done
            return rewrapped > 0 and done == 0

        await eventually(all_rewrapped, what="the new master key read and every data key rewrapped with it")
        write_keys(keys, f"{NEW}\n")  # then the old one dropped, still without a restart
        await asyncio.sleep(0.3)  # a few looks at the file: nothing may need the old key now
        await client.submit(command("acc-2", bank.OpenAccount(owner="bob")))
        (opened,) = await read(client, "acc-1")
    assert rewrapped >= 1
    assert await stale_keys(path, "new") == 0
    event = bank.AccountOpened()
    assert opened.payload.Unpack(event) and event.owner == SECRET_OWNER  # type: ignore[attr-defined]
    # The old key is gone for good: a server with the new one alone reads all.
    async with running_server(SqliteStore(path), master_keys=NEW, anonymous_admin=True) as (_, client):
        owners = []
        for aggregate_id in ("acc-1", "acc-2"):
            (stored,) = await read(client, aggregate_id)
            assert stored.payload.Unpack(event)  # type: ignore[attr-defined]
            owners.append(event.owner)
    assert owners == [SECRET_OWNER, "bob"]


def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return text in caplog.text


async def test_a_master_key_file_read_again_that_does_not_open_the_stores_keys_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong key under the right id (or a file of other keys) read again:
    the keys before it stay in use, an error says why, and new data keys are
    still wrapped by the right key (a restart with it reads everything)."""
    path, keys = tmp_path / "events.db", tmp_path / "master.keys"
    write_keys(keys, f"{OLD}\n")
    served = running_server(
        SqliteStore(path), master_key_file=str(keys), auth_reload_seconds=0.05, anonymous_admin=True
    )
    with caplog.at_level(logging.ERROR):
        async with served as (_, client):
            await client.submit(command("acc-1", bank.OpenAccount(owner=SECRET_OWNER)))
            wrong_files = {
                "acc-a": (f"old:{new_master_key()}", "MASTER_KEY_MISMATCH"),
                "acc-b": (NEW, "MASTER_KEY_MISSING"),
            }
            for aggregate_id, (wrong, reason) in wrong_files.items():
                write_keys(keys, f"{wrong}\n")
                await eventually(
                    functools.partial(_logged, caplog, reason), what=f"the file read again and refused ({reason})"
                )
                await client.submit(command(aggregate_id, bank.OpenAccount(owner="bob")))  # a new data key
                (event,) = await read(client, "acc-1")
                opened = bank.AccountOpened()
                assert event.payload.Unpack(opened) and opened.owner == SECRET_OWNER  # type: ignore[attr-defined]
    assert "the previous one stays in use" in caplog.text
    async with running_server(SqliteStore(path), master_keys=OLD) as (_, client):
        owners = []
        for aggregate_id in ("acc-1", "acc-a", "acc-b"):
            (stored,) = await read(client, aggregate_id)
            opened = bank.AccountOpened()
            assert stored.payload.Unpack(opened)  # type: ignore[attr-defined]
            owners.append(opened.owner)
    assert owners == [SECRET_OWNER, "bob", "bob"]


async def test_rewrapping_needs_the_admin_grant_and_both_outcomes_are_audited(tmp_path: Path) -> None:
    from tests.support.grpc_client import connect
    from tests.support.security import JwtIssuer, bearer

    store = MemoryStore()
    async with running_server(store, master_keys=OLD, anonymous_admin=True) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    issuer = JwtIssuer()
    async with running_server(
        store,
        master_keys=f"{NEW},{OLD}",
        settings=with_jwt_auth(tmp_path, issuer),
    ) as (app, _):
        async with connect(app.address, interceptors=bearer(issuer.token("alice"))) as alice:
            before = await at_rest(store)
            denied = alice.admin.RewrapKeys(admin.RewrapKeysRequest())
            assert await refusal(denied) == (grpc.StatusCode.PERMISSION_DENIED, "ADMIN_DENIED")
            changes = (await at_rest(store)).changes_since(before)
            assert list(changes) == ["refusals"]  # its audit entry; no key rewrapped
        async with connect(app.address, interceptors=bearer(issuer.token("root"))) as root:
            assert (await root.admin.RewrapKeys(admin.RewrapKeysRequest())).rewrapped >= 1
            audit = await root.admin.QueryAudit(admin.QueryAuditRequest())
    done, refused = [e for e in audit.entries if e.command_type == REWRAP]
    assert (done.principal, done.outcome, done.reason, done.command_id) == (
        "root",
        admin.AUDIT_OUTCOME_ACCEPTED,
        "",
        "",
    )
    assert (refused.principal, refused.outcome, refused.reason) == (
        "alice",
        admin.AUDIT_OUTCOME_REFUSED,
        "ADMIN_DENIED",
    )


async def test_rewrapping_needs_encryption_and_the_refusal_is_audited() -> None:
    async with running_server(MemoryStore(), anonymous_admin=True) as (_, plain):
        call = plain.admin.RewrapKeys(admin.RewrapKeysRequest())
        assert await refusal(call) == (grpc.StatusCode.FAILED_PRECONDITION, "ENCRYPTION_OFF")
        audit = await plain.admin.QueryAudit(admin.QueryAuditRequest())
    (entry,) = audit.entries
    assert (entry.command_type, entry.outcome, entry.reason) == (REWRAP, admin.AUDIT_OUTCOME_REFUSED, "ENCRYPTION_OFF")


async def test_a_server_whose_master_key_has_other_bytes_under_its_id_does_not_start(tmp_path: Path) -> None:
    """Every read of a sealed payload would fail, and new data keys would be
    wrapped by a key that opens none of the others: it said nothing before."""
    path = tmp_path / "events.db"
    async with running_server(SqliteStore(path), master_keys=f"k1:{new_master_key()}") as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner=SECRET_OWNER)))
    before = await contents(SqliteStore(path))
    with pytest.raises(ConfigurationError) as refused:
        async with running_server(SqliteStore(path), master_keys=f"k1:{new_master_key()}"):
            pass
    assert refused.value.reason == "MASTER_KEY_MISMATCH"
    assert refused.value.metadata == {"master_key_ids": "k1"}
    assert "'k1'" in refused.value.message
    assert not (await contents(SqliteStore(path))).changes_since(before)


async def test_an_aggregate_whose_key_no_master_key_given_wrapped_is_failed_precondition(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An old master key removed before rewrap-keys answered 0: the server
    starts (the other keys open) and says which keys it lacks; the calls that
    need one are FAILED_PRECONDITION, a setting for the operator to fix, not
    INTERNAL, and not UNAVAILABLE (no retry heals it)."""
    path = tmp_path / "events.db"
    async with running_server(SqliteStore(path), master_keys=OLD) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner=SECRET_OWNER)))
    async with running_server(SqliteStore(path), master_keys=f"{NEW},{OLD}") as (_, client):
        await client.submit(command("acc-2", bank.OpenAccount(owner="bob")))
    with caplog.at_level(logging.ERROR):
        served = running_server(SqliteStore(path), master_keys=NEW)
        async with served as (_, client):
            get = client.events.GetAggregate(event_service_pb2.GetAggregateRequest(aggregate_id="acc-1"))
            assert await refusal(get) == (grpc.StatusCode.FAILED_PRECONDITION, "MASTER_KEY_MISSING")
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await read(client, "acc-1")
            details = details_of(raised.value)
            assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "MASTER_KEY_MISSING")
            (opened,) = await read(client, "acc-2")
    assert "not given (old)" in caplog.text
    assert opened.event_type == "bank.v1.AccountOpened"  # type: ignore[attr-defined]


async def test_a_server_without_the_master_keys_does_not_start_over_a_store_written_with_them(tmp_path: Path) -> None:
    """Without the keys it could read none of what they sealed, and would
    write new payloads, and claimed values, in the clear (an address claimed
    under encryption, kept as a keyed hash, could be claimed again)."""
    path = tmp_path / "events.db"
    keys = f"k1:{new_master_key()}"
    async with running_server(SqliteStore(path), master_keys=keys) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner=SECRET_OWNER)))
        await client.submit(command("user-1", users.RegisterUser(email="zelda@quartermain.example", name="Z")))
    before = await contents(SqliteStore(path))
    with pytest.raises(ConfigurationError) as refused:
        async with running_server(SqliteStore(path)):
            pass
    assert refused.value.reason == "ENCRYPTED_STORE_WITHOUT_KEYS"
    assert "master keys" in refused.value.message
    assert not (await contents(SqliteStore(path))).changes_since(before)
    # with the keys, as before
    async with running_server(SqliteStore(path), master_keys=keys) as (_, client):
        again = client.commands.Submit(
            command_service_pb2.SubmitRequest(
                command=command("user-2", users.RegisterUser(email="zelda@quartermain.example", name="Z"))
            )
        )
        assert (await refusal(again))[1] == "NOT_UNIQUE"


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_store_whose_sealed_aggregates_were_all_forgotten_starts_without_keys(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    def opened() -> StoreAdapter:
        if kind == "sqlite":
            return SqliteStore(tmp_path / "events.db")
        return PostgresStore(request.getfixturevalue("postgres_url"), pool_size=2)

    store = opened()
    async with running_server(store, master_keys=f"k1:{new_master_key()}", anonymous_admin=True) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner=SECRET_OWNER)))
        await client.submit(command("user-1", users.RegisterUser(email="ann@example.com", name="Ann")))
        # The read model has written (its key is live) and the address is
        # claimed (its scope's key is live): both go with the aggregates.
        held = await at_rest(store)
        assert held.tables["projection_documents"] and held.tables["claims"]
        for forgotten in ("acc-1", "user-1"):
            await client.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id=forgotten))
    async with running_server(opened()) as (_, client):
        opened_again = await client.submit(command("acc-2", bank.OpenAccount(owner="ann")))
        assert opened_again.version == 1


async def test_a_read_models_or_a_scopes_key_seals_while_it_holds_documents_or_claims(store: StoreAdapter) -> None:
    """What a server without master keys calls sealed, from the keys a store
    holds (on PostgreSQL also the statement that a server which started
    before the database answered asks at its first operation)."""

    async def sealed() -> bool:
        try:
            await refuse_if_sealed(store, store, store)
        except ConfigurationError:
            return True
        return False

    async def sealed_on_first_operation() -> bool | None:
        if not isinstance(store, PostgresStore):
            return None
        late = PostgresStore(store.url, pool_size=1, refuse_sealed=True)
        try:
            await late.log_head()
        except ConfigurationError:
            return True
        finally:
            await late.close()
        return False

    assert (await sealed(), await sealed_on_first_operation()) in {(False, False), (False, None)}
    # The keys of a read model and of a claims scope, nothing under them yet.
    await store.create_data_key(DataKey(projection_key_id("tally"), "k1", b"w" * 40))
    await store.create_data_key(DataKey(claims_key_id("email"), "k1", b"w" * 40))
    assert not await sealed()
    assert await sealed_on_first_operation() in {False, None}
    # A document: sealed under the read model's key.
    await store.commit_projection(
        "tally", expected_position=0, new_position=0, writes=[DocumentWrite("total", "T", b"sealed")]
    )
    assert await sealed()
    assert await sealed_on_first_operation() in {True, None}
    await store.commit_projection("tally", expected_position=0, new_position=0, writes=[DocumentWrite("total")])
    assert not await sealed()
    # A tenant's key of a tenant_keyed read model: the same, by the read model's documents.
    await store.create_data_key(DataKey(tenant_projection_key_id("owners", "acme"), "acme:1", b"w" * 40))
    assert not await sealed()
    assert await sealed_on_first_operation() in {False, None}
    sealed_document = DocumentWrite("t:hidden", "T", b"sealed")
    await store.commit_projection("owners", expected_position=0, new_position=0, writes=[sealed_document])
    assert await sealed()
    assert await sealed_on_first_operation() in {True, None}
    await store.commit_projection("owners", expected_position=0, new_position=0, writes=[DocumentWrite("t:hidden")])
    assert not await sealed()
    # A claim: a hashed value under the scope's key.
    await store.import_claims([HeldClaim("email", "hashed-value", "user-1")])
    assert await sealed()
    assert await sealed_on_first_operation() in {True, None}
    # A claim of another scope is not this key's.
    await store.forget_data_key(claims_key_id("email"))
    assert not await sealed()
    # An aggregate's live key seals, whatever else there is.
    await store.create_data_key(DataKey("acc-1", "k1", b"w" * 40))
    assert await sealed()
    assert await sealed_on_first_operation() in {True, None}


async def test_on_postgresql_the_store_refuses_a_server_without_the_keys_at_start_and_when_first_reached(
    postgres_url: str,
) -> None:
    keys = f"k1:{new_master_key()}"
    async with running_server(PostgresStore(postgres_url, pool_size=2), master_keys=keys) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner=SECRET_OWNER)))
    before = await contents(PostgresStore(postgres_url))
    # `chronicle serve --database-url …` without the keys does not start
    with pytest.raises(ConfigurationError) as refused:
        await start(replace(TEST_SETTINGS, database_url=postgres_url))
    assert refused.value.reason == "ENCRYPTED_STORE_WITHOUT_KEYS"
    # A server that started while the database did not answer yet meets the
    # refusal at its first operation, and at every one after it: nothing is
    # read or written.
    late = PostgresStore(postgres_url, pool_size=2, refuse_sealed=True)
    spec = REGISTRY.command("bank.v1.Deposit")
    assert spec is not None
    for _ in range(2):
        with pytest.raises(ConfigurationError) as refused:
            await late.log_head()
        assert refused.value.reason == "ENCRYPTED_STORE_WITHOUT_KEYS"
    deposit = CommandRequest(
        command_id=str(uuid.uuid4()), aggregate_id="acc-1", spec=spec, message=bank.Deposit(amount=1)
    )
    with pytest.raises(ConfigurationError):
        await CommandExecutor(Store.of(late), REGISTRY).execute(deposit, None)
    # Its health check meets the refusal too: NOT_SERVING, so a load
    # balancer sends it nothing.
    health = Health()
    await health.set(True)
    assert not await StoreMonitor(late, health, interval=1.0).check()
    assert not health.serving
    await late.close()
    assert not (await contents(PostgresStore(postgres_url))).changes_since(before)
