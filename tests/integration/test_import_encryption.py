"""Imports and encryption at rest (docs/export-format.md, "Encryption at
rest"): an export in the clear imported where the server encrypts is
written as that server would have written it (payloads, snapshot states,
command records sealed under per-aggregate data keys; claimed values as
keyed hashes), on each store, through the server and with
``--database-url`` given the master keys; an encrypted export is refused
where no master key could open it, with nothing written."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import export_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.users.protos.users.v1 import users_pb2 as users
from service import cli
from service.store.base import StoreAdapter
from service.store.encryption import CLAIMS_KEY_PREFIX, is_sealed, is_sealed_fingerprint, is_sealed_text, new_master_key
from service.store.memory import MemoryStore
from service.store.records import HIDDEN_CLAIM_MARK, LogFilter
from service.store.sqlite import SqliteStore
from service.transfer.stream import BINARY, Writer
from tests.support.grpc_client import Client, asking_again_if_lost, command, details_of, running_server
from tests.support.stores import STORES, store_site
from tests.support.transfer import exported, imported
from tests.support.waiting import eventually

KEYS = f"k1:{new_master_key()}"
EMAIL = "alice@example.com"
NAME = "Alice Liddell-Hargreaves"
Record = export_pb2.ExportRecord


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreAdapter]:
    """A store to import into, of each kind."""
    async with STORES[request.param](store_site(request, tmp_path)) as opened:
        yield opened


class Alice:
    """What was sent to the store without encryption: a user holding her
    e-mail address (a snapshot kept of her), her account, a deposit, and a
    withdrawal the account refused."""

    def __init__(self) -> None:
        self.registered = command("usr-alice", users.RegisterUser(email=EMAIL, name=NAME))
        self.opened = command("acc-alice", bank.OpenAccount(owner=NAME))
        self.deposit = command("acc-alice", bank.Deposit(amount=70))
        self.refused = command("acc-alice", bank.Withdraw(amount=1_000))


async def in_the_clear() -> tuple[Alice, list[Record]]:
    """Alice's store, without encryption at rest, and its export."""
    alice = Alice()
    source = MemoryStore()
    async with running_server(source, anonymous_admin=True, snapshot_every=1) as (_, client):
        for built in (alice.registered, alice.opened, alice.deposit):
            await client.submit(built)
        with pytest.raises(grpc.aio.AioRpcError):
            await client.submit(alice.refused)
        await eventually(lambda: has_snapshot(source, "usr-alice"), what="the snapshot of Alice's user")
        records = await exported(client, include_snapshots=True, include_commands=True)
    return alice, records


async def has_snapshot(store: StoreAdapter, aggregate_id: str) -> bool:
    return await store.load_snapshot(aggregate_id) is not None


async def stored_bytes(store: StoreAdapter) -> bytes:
    """Every payload, state, claimed value and command record the store holds."""
    events = (await store.read_log(0, LogFilter(), 1000)).events
    snapshots = await store.snapshots_page(("", 0), 1000)
    claims = await store.claims_page(("", ""), 1000)
    commands = await store.commands_page("", 1000)
    parts = [e.payload for e in events] + [s.state for s in snapshots] + [c.value.encode() for c in claims]
    parts += [c.fingerprint + (c.rejection.message.encode() if c.rejection else b"") for c in commands]
    return b"\n".join(parts)


async def assert_as_the_server_writes_it(store: StoreAdapter) -> None:
    """What the store holds of Alice is sealed, hidden, keyed, as a server
    with master keys writes it."""
    events = (await store.read_log(0, LogFilter(), 1000)).events
    assert events and all(is_sealed(e.payload) for e in events)
    snapshots = await store.snapshots_page(("", 0), 1000)
    assert snapshots and all(is_sealed(s.state) for s in snapshots)
    claims = await store.claims_page(("", ""), 1000)
    assert [(c.scope, c.aggregate_id) for c in claims] == [("users.email", "usr-alice")]
    assert claims[0].value.startswith(HIDDEN_CLAIM_MARK)
    commands = await store.commands_page("", 1000)
    assert len(commands) == 4 and all(is_sealed_fingerprint(c.fingerprint) for c in commands)
    (refusal,) = [c.rejection for c in commands if c.rejection is not None]
    assert refusal.reason == "INSUFFICIENT_FUNDS" and is_sealed_text(refusal.message)
    keys = {k.aggregate_id for k in await store.data_keys_page("", 100) if not k.forgotten}
    assert {"usr-alice", "acc-alice", CLAIMS_KEY_PREFIX + "users.email"} <= keys
    held = await stored_bytes(store)
    assert EMAIL.encode() not in held and NAME.encode() not in held


async def assert_served_as_before(client: Client, alice: Alice) -> None:
    """The server reads what was sealed, keeps the address unique, answers
    retries, and can forget."""
    state = await client.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="usr-alice"))
    user = users.User()
    assert state.state.Unpack(user) and (user.email, user.name) == (EMAIL, NAME)
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await client.submit(command("usr-dup", users.RegisterUser(email=EMAIL, name="Someone Else")))
    assert details_of(taken.value).reason == "NOT_UNIQUE"
    assert (await client.submit(alice.deposit)).replayed
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.submit(alice.refused)
    assert details_of(refused.value).reason == "INSUFFICIENT_FUNDS"
    forgot = await client.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id="usr-alice"))
    assert not forgot.already_forgotten
    await client.submit(command("usr-new", users.RegisterUser(email=EMAIL, name="Another Alice")))


async def test_an_export_in_the_clear_is_sealed_as_it_goes_into_a_server_that_encrypts(target: StoreAdapter) -> None:
    """Before the fix everything was written in the clear: payloads and
    snapshot states readable in the database, the address in the claims
    table beside its keyed hash (usr-dup registered it again), and forget
    NOT_ENCRYPTED for want of a data key."""
    alice, records = await in_the_clear()
    async with running_server(target, anonymous_admin=True, master_keys=KEYS) as (_, client):
        done = await imported(client, records)
        assert (done.events_written, done.snapshots_written, done.claims_written, done.commands_written) == (3, 1, 1, 4)
        await assert_as_the_server_writes_it(target)
        # Importing it again changes nothing: every record is there already.
        again = await imported(client, records)
        assert (again.events_written, again.snapshots_written, again.claims_written) == (0, 0, 0)
        assert (again.commands_written, again.data_keys_written) == (0, 0)
        await assert_served_as_before(client, alice)


async def test_the_command_line_seals_with_the_master_keys_it_is_given_and_refuses_without(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`chronicle import FILE --database-url` writes into the store itself:
    given the store's master keys in its environment, as the server takes
    them, it seals as the server would; without, into a store encrypted at
    rest, it refuses a record in the clear (before the fix it wrote it in
    the clear)."""
    alice, records = await in_the_clear()
    path = tmp_path / "alice.chronicle"
    await asyncio.to_thread(write_export, path, records)
    database = tmp_path / "target.db"
    async with running_server(SqliteStore(database), anonymous_admin=True, master_keys=KEYS) as (_, client):
        await client.submit(command("acc-bob", bank.OpenAccount(owner="Bob")))  # the store is encrypted at rest
    argv = ["import", str(path), "--database-url", f"sqlite:///{database}", "--quiet"]

    monkeypatch.delenv("CHRONICLE_MASTER_KEYS", raising=False)
    monkeypatch.delenv("CHRONICLE_MASTER_KEY_FILE", raising=False)
    assert await asyncio.to_thread(cli.main, argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ENCRYPTION_KEYS_NEEDED: record[1]: the payload of event "), err
    assert "Give the command the store's master keys" in err
    store = SqliteStore(database)
    await store.open()
    try:
        assert [e.aggregate_id for e in (await store.read_log(0, LogFilter(), 100)).events] == ["acc-bob"]
    finally:
        await store.close()

    monkeypatch.setenv("CHRONICLE_MASTER_KEYS", KEYS)
    assert await asyncio.to_thread(cli.main, argv) == 0
    capsys.readouterr()
    async with running_server(SqliteStore(database), anonymous_admin=True, master_keys=KEYS) as (_, client):
        store = SqliteStore(database)
        await store.open()
        try:
            events = (await store.read_log(0, LogFilter(), 1000)).events
            assert len(events) == 4 and all(is_sealed(e.payload) for e in events)
            assert EMAIL.encode() not in await stored_bytes(store)
        finally:
            await store.close()
        await assert_served_as_before(client, alice)


async def encrypted_export() -> list[Record]:
    source = MemoryStore()
    async with running_server(source, anonymous_admin=True, master_keys=KEYS, snapshot_every=1) as (_, client):
        await client.submit(command("usr-alice", users.RegisterUser(email=EMAIL, name=NAME)))
        await client.submit(command("acc-alice", bank.OpenAccount(owner=NAME)))
        await eventually(lambda: has_snapshot(source, "usr-alice"), what="the snapshot of Alice's user")
        return await exported(client, include_snapshots=True, include_commands=True)


async def test_an_encrypted_export_is_refused_where_the_server_has_no_master_keys(tmp_path: Path) -> None:
    """Before the fix it was accepted (data_keys_written 12 in the
    walkthrough): `get` then failed INTERNAL CORRUPT_EVENT, the address
    could be registered twice, and the server refused to start again
    (ENCRYPTED_STORE_WITHOUT_KEYS)."""
    records = await encrypted_export()
    database = tmp_path / "target.db"
    async with running_server(SqliteStore(database), anonymous_admin=True) as (_, client):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asking_again_if_lost(lambda: imported(client, records))
        details = details_of(refused.value)
        assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ENCRYPTED_EXPORT_WITHOUT_KEYS")
        # The first data key is the claims scope's: named as whose it is, not by its internal id.
        assert details.metadata == {"record": "1", "key": "the uniqueness claims of scope 'users.email'"}
        said = refused.value.details() or ""
        assert "this server has no master keys" in said and "\x1f" not in said
        await client.submit(command("usr-bob", users.RegisterUser(email=EMAIL, name="Bob")))
    # Nothing was written: the store is as a server without keys writes it, and one starts on it again.
    async with running_server(SqliteStore(database), anonymous_admin=True) as (app, _):
        store = SqliteStore(database)
        await store.open()
        try:
            assert await store.data_keys_page("", 100) == []
            assert [e.aggregate_id for e in (await store.read_log(0, LogFilter(), 100)).events] == ["usr-bob"]
        finally:
            await store.close()
        assert app.address


async def test_an_encrypted_export_moves_as_it_is_with_the_same_master_keys(target: StoreAdapter) -> None:
    records = await encrypted_export()
    async with running_server(target, anonymous_admin=True, master_keys=KEYS) as (_, client):
        done = await imported(client, records)
        assert done.events_written == 2
        events = (await target.read_log(0, LogFilter(), 100)).events
        assert [e.payload for e in events] == [r.event.sealed_payload for r in records if r.HasField("event")]
        state = await client.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="usr-alice"))
        user = users.User()
        assert state.state.Unpack(user) and user.email == EMAIL


def write_export(path: Path, records: list[Record]) -> None:
    with path.open("wb") as out:
        writer = Writer(out, BINARY)
        for record in records:
            writer.write(record)
    os.chmod(path, 0o600)
