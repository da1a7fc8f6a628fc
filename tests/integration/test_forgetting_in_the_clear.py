"""Forgetting an aggregate part of which is stored in the clear: its events
written before encryption at rest was turned on (the documented "turn it on
later" path), or imported in the clear into a store that made the aggregate
a key. Erasing the key cannot make those unreadable, so a forget that
answered success left the person's data readable through every read and in
the database. It is refused instead (NOT_ENCRYPTED, saying how many events
are in the clear and what to do), and changes nothing; once the aggregate
is deleted (its events go), forgetting it erases what remains: its key, and
the fingerprints and refusal texts of its commands and audit entries."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import event_service_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.processing.commands import fingerprint
from service.store.base import StoreAdapter
from service.store.encryption import Keyring, MasterKeys, new_master_key
from service.store.memory import MemoryStore
from service.store.postgres import PostgresStore
from service.store.records import DataKey
from service.store.sqlite import SqliteStore
from tests.support.at_rest import DataAtRest, postgres_at_rest, sqlite_at_rest
from tests.support.grpc_client import Client, command, details_of, running_server

OWNER = "Mallory Quintessa-Vardanyan"
KEYS = f"k1:{new_master_key()}"
AMOUNT = 777_123


class Site:
    """One store's database, opened anew for each server (a restart), and
    what is at rest in it (none for the memory store)."""

    def __init__(self, opened: Callable[[], StoreAdapter], at_rest: DataAtRest | None) -> None:
        self.opened = opened
        self.at_rest = at_rest


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    if request.param == "memory":
        memory = MemoryStore()
        return Site(lambda: memory, None)
    if request.param == "sqlite":
        folder = tmp_path / "data"
        return Site(lambda: SqliteStore(folder / "events.db"), sqlite_at_rest(folder))
    url = request.getfixturevalue("postgres_url")
    return Site(lambda: PostgresStore(url, pool_size=2), postgres_at_rest(url))


async def refusal_of(call: object) -> tuple[grpc.StatusCode, str, str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    details = details_of(raised.value)
    return details.code, details.reason, details.message, details.metadata


async def owners_read(client: Client, aggregate_id: str) -> list[str]:
    """The owners the aggregate's events show, through ReadAggregate."""
    found = []
    async for event in client.events.ReadAggregate(event_service_pb2.ReadAggregateRequest(aggregate_id=aggregate_id)):
        opened = bank.AccountOpened()
        if event.payload.Unpack(opened):
            found.append(opened.owner)
    return found


async def audited_messages(client: Client, aggregate_id: str) -> list[str]:
    audit = await client.admin.QueryAudit(admin.QueryAuditRequest(aggregate_id=aggregate_id))
    return [e.message for e in audit.entries if e.message]


async def forget(client: Client, aggregate_id: str) -> admin.ForgetAggregateResponse:
    response: admin.ForgetAggregateResponse = await client.admin.ForgetAggregate(
        admin.ForgetAggregateRequest(aggregate_id=aggregate_id)
    )
    return response


def holds(at_rest: DataAtRest | None, secret: bytes) -> bool:
    """Whether the data at rest holds ``secret``, as it is or in hex (how a
    ``pg_dump`` writes a payload)."""
    if at_rest is None:
        return False
    stolen = at_rest.read_bytes()
    return secret in stolen or secret.hex().encode() in stolen


async def test_an_aggregate_begun_before_encryption_is_refused_until_deleted_then_forgotten_for_good(
    site: Site,
) -> None:
    """The walkthrough: served without keys, the account is opened (and a
    withdrawal refused, quoting the balance); restarted with a master key, a
    deposit makes the aggregate a key. Forgetting it answered success while
    ReadAggregate still showed the owner, and the file held it."""
    async with running_server(site.opened(), anonymous_admin=True) as (_, client):
        await client.submit(command("acc-m", bank.OpenAccount(owner=OWNER)))
        await client.submit(command("acc-m", bank.Deposit(amount=AMOUNT)))
        await refusal_of(client.submit(command("acc-m", bank.Withdraw(amount=AMOUNT + 1))))
        await client.submit(command("acc-k", bank.OpenAccount(owner="Kept Person")))
    async with running_server(site.opened(), master_keys=KEYS, anonymous_admin=True) as (_, client):
        await client.submit(command("acc-m", bank.Deposit(amount=5)))  # makes its key
        refused = await refusal_of(forget(client, "acc-m"))
        code, reason, message, metadata = refused
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_ENCRYPTED")
        assert metadata == {"aggregate_id": "acc-m", "events_in_clear": "2", "snapshots_in_clear": "0"}
        assert "2 of its events" in message and "chronicle delete" in message
        # Refused, so nothing changed: the deposit under encryption still reads, and so does the owner.
        assert await owners_read(client, "acc-m") == [OWNER]
        state = await client.events.GetAggregate(event_service_pb2.GetAggregateRequest(aggregate_id="acc-m"))
        account = bank.Account()
        assert state.state.Unpack(account) and account.balance == AMOUNT + 5
        assert any(str(AMOUNT) in m for m in await audited_messages(client, "acc-m"))  # the refusal's text

        await client.admin.DeleteAggregate(admin.DeleteAggregateRequest(aggregate_id="acc-m", reason="erasure"))
        forgotten = await forget(client, "acc-m")
        assert not forgotten.already_forgotten
        assert await owners_read(client, "acc-m") == []
        assert await audited_messages(client, "acc-m") == []  # the refusal's text erased, the reason kept
        assert (await forget(client, "acc-m")).already_forgotten
        assert await owners_read(client, "acc-k") == ["Kept Person"]
    assert not holds(site.at_rest, OWNER.encode())
    assert not holds(site.at_rest, f"the balance is {AMOUNT}".encode())
    if site.at_rest is not None:
        # The open's fingerprint was a plain hash of its payload: a guess confirmed it.
        guessed = fingerprint("acc-m", bank.OpenAccount(owner=OWNER))
        assert guessed not in site.at_rest.read_fingerprints()
        assert holds(site.at_rest, b"Kept Person")  # written in the clear, not forgotten: the right files


async def test_an_aggregate_keyed_over_events_in_the_clear_is_refused_and_nothing_changes(site: Site) -> None:
    """Events in the clear under a key (a plaintext export imported through
    a server that made keys for the aggregates a reaction touched): forgetting
    answered success, and reads, the log and the audit still gave the owner."""
    async with running_server(site.opened(), anonymous_admin=True) as (_, client):
        await client.submit(command("acc-m", bank.OpenAccount(owner=OWNER)))
        await refusal_of(client.submit(command("acc-m", bank.Withdraw(amount=AMOUNT))))
    store = site.opened()
    async with running_server(store, master_keys=KEYS, anonymous_admin=True) as (_, client):
        await Keyring(store, MasterKeys.parse(KEYS, source="test")).for_writing("acc-m")  # a key, events in the clear
        code, reason, _, metadata = await refusal_of(forget(client, "acc-m"))
        assert (code, reason, metadata["events_in_clear"]) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "NOT_ENCRYPTED",
            "1",
        )
        assert await owners_read(client, "acc-m") == [OWNER]  # not forgotten, and not said to be
        deposit = await client.submit(command("acc-m", bank.Deposit(amount=1)))
        assert deposit.version == 2
        await client.admin.DeleteAggregate(admin.DeleteAggregateRequest(aggregate_id="acc-m"))
        assert not (await forget(client, "acc-m")).already_forgotten
        assert await owners_read(client, "acc-m") == []
        assert await audited_messages(client, "acc-m") == []
    assert not holds(site.at_rest, OWNER.encode())


async def test_an_aggregate_forgotten_by_an_older_version_over_events_in_the_clear_is_refused_now(
    site: Site,
) -> None:
    """Forgetting again is how an operator finds the aggregates an older
    version said it forgot while their events stayed in the clear."""
    async with running_server(site.opened(), anonymous_admin=True) as (_, client):
        await client.submit(command("acc-m", bank.OpenAccount(owner=OWNER)))
    store = site.opened()
    await store.open()
    try:
        master_key_id, wrapped = MasterKeys.parse(KEYS, source="test").wrap(b"\x01" * 32)
        await store.create_data_key(DataKey("acc-m", master_key_id, wrapped))
        await store.forget_data_key("acc-m")  # as an older version's forget left it
    finally:
        await store.close()
    async with running_server(site.opened(), master_keys=KEYS, anonymous_admin=True) as (_, client):
        code, reason, _, _ = await refusal_of(forget(client, "acc-m"))
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_ENCRYPTED")
