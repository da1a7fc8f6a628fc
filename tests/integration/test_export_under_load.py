"""An export of a store written to while it is exported is a consistent copy
up to its ``log_head`` (docs/export-format.md, "An export of a running
server"): the command records, snapshots and claims read after the events
go no further than those events, and every exported aggregate's data key is
in it. Imported, a retry of a command decided after the head runs it: it is
never answered "replayed" with another command's event, nor refused
DATA_LOSS under a data key the export lacks. The store gains its writes
between the exporter's reads (right after it read the head), through a
wrapper: no timing.

And an export made before that bound (its command records read unbounded
after its events) imports with those records past the events left out,
counted (``commands_past_events_left_out``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import export_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.users.protos.users.v1 import users_pb2 as users
from service.store.base import Store, StoreAdapter
from service.store.encryption import new_master_key
from service.store.records import LogFilter
from service.transfer.exporter import Exporter, ExportSelection
from tests.support.grpc_client import Client, command, details_of, running_server
from tests.support.postgres import Cluster
from tests.support.transfer import OpenStore, imported, store_opener
from tests.support.waiting import eventually

KEYS = f"k1:{new_master_key()}"
Record = export_pb2.ExportRecord


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> OpenStore:
    def cluster() -> Cluster:
        found: Cluster = request.getfixturevalue("pg_cluster")
        return found

    return store_opener(tmp_path, cluster)


class WritingAfterHead:
    """``inner``, whose ``log_head`` lets ``writes`` run once the head is
    read: the store gains events, command records, snapshots, claims and
    data keys between the exporter's first read and the others. With
    ``after_keys``, they run at the first read of the log instead, once
    the data keys were read."""

    def __init__(self, inner: StoreAdapter, writes: Callable[[], Awaitable[None]], *, after_keys: bool = False) -> None:
        self._inner = inner
        self._writes: Callable[[], Awaitable[None]] | None = writes
        self._after_keys = after_keys

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def _write_once(self) -> None:
        if self._writes is not None:
            writes, self._writes = self._writes, None
            await writes()

    async def log_head(self) -> int:
        head = await self._inner.log_head()
        if not self._after_keys:
            await self._write_once()
        return head

    async def read_log(self, *args: Any, **kwargs: Any) -> Any:
        await self._write_once()
        return await self._inner.read_log(*args, **kwargs)


class Bank:
    """Alice's account with a deposit and her user (claiming her e-mail
    address, a snapshot after each of its commands) before the export;
    during it, a deposit, Alice's new address, Bob's new account and Bob's
    user."""

    def __init__(self) -> None:
        self.before = [
            command("acc-alice", bank.OpenAccount(owner="Alice")),
            command("acc-alice", bank.Deposit(amount=70)),
            command("usr-alice", users.RegisterUser(email="alice@example.com", name="Alice")),
        ]
        self.deposit = command("acc-alice", bank.Deposit(amount=5))
        self.new_address = command("usr-alice", users.ChangeEmail(email="alice@example.org"))
        self.bob = command("acc-bob", bank.OpenAccount(owner="Bob"))
        self.bob_user = command("usr-bob", users.RegisterUser(email="bob@example.com", name="Bob"))

    async def during(self, client: Client, store: StoreAdapter) -> None:
        for built in (self.deposit, self.new_address, self.bob, self.bob_user):
            await client.submit(built)
        # The server keeps snapshots after its answer: wait for the new address's.
        await eventually(lambda: snapshot_at(store, "usr-alice", 2), what="the snapshot of Alice's new address")


async def snapshot_at(store: StoreAdapter, aggregate_id: str, version: int) -> bool:
    kept = await store.load_snapshot(aggregate_id)
    return kept is not None and kept.version >= version


async def exported_under_load(
    store: StoreAdapter, writes: Callable[[], Awaitable[None]], *, snapshots: bool = True, after_keys: bool = False
) -> list[Record]:
    """A whole export of ``store``, with its command records (and its
    snapshots unless told), that lets ``writes`` run once it read the head
    (or its data keys)."""
    wrapper = WritingAfterHead(store, writes, after_keys=after_keys)
    exporter = Exporter(Store.of(wrapper), source="test")  # type: ignore[arg-type]
    return [record async for record in exporter.records(ExportSelection(snapshots=snapshots, commands=True))]


def of_kind(records: list[Record], kind: str) -> list[Record]:
    return [record for record in records if record.WhichOneof("record") == kind]


def versions(records: list[Record]) -> dict[str, int]:
    """Each exported aggregate's last exported version."""
    last: dict[str, int] = {}
    for record in of_kind(records, "event"):
        event = record.event.event
        last[event.aggregate_id] = max(last.get(event.aggregate_id, 0), event.version)
    return last


async def bank_exported(
    open_store: OpenStore, kind: str, bank_: Bank, *, snapshots: bool = True
) -> tuple[list[Record], list[Record]]:
    """The bank's export taken under load, and one taken once it was quiet."""
    async with (
        open_store(kind, "source") as source,
        running_server(source, anonymous_admin=True, master_keys=KEYS, snapshot_every=1) as (_, client),
    ):
        for built in bank_.before:
            await client.submit(built)
        await eventually(lambda: snapshot_at(source, "usr-alice", 1), what="the snapshot of Alice's user")
        under_load = await exported_under_load(source, lambda: bank_.during(client, source), snapshots=snapshots)
        quiet = await exported_under_load(source, _nothing)
    return under_load, quiet


async def _nothing() -> None:
    return None


async def test_an_export_under_load_holds_nothing_past_its_events(open_store: OpenStore, kind: str) -> None:
    records, _ = await bank_exported(open_store, kind, Bank())
    last = versions(records)
    assert last == {"acc-alice": 2, "usr-alice": 1}
    commands = [record.command for record in of_kind(records, "command")]
    assert sorted((c.aggregate_id, c.last_version) for c in commands) == [
        ("acc-alice", 1),
        ("acc-alice", 2),
        ("usr-alice", 1),
    ]
    assert [(s.snapshot.aggregate_id, s.snapshot.version) for s in of_kind(records, "snapshot")] == [("usr-alice", 1)]
    assert [c.claim.aggregate_id for c in of_kind(records, "claim")] == ["usr-alice"]
    keys = {record.data_key.aggregate_id for record in of_kind(records, "data_key")}
    assert set(last) <= keys


@pytest.mark.parametrize("snapshots", [True, False], ids=["with-snapshots", "without-snapshots"])
async def test_a_retry_after_importing_an_export_under_load_runs_the_command(
    open_store: OpenStore, kind: str, snapshots: bool
) -> None:
    bank_ = Bank()
    records, _ = await bank_exported(open_store, kind, bank_, snapshots=snapshots)
    async with (
        open_store(kind, "target") as target,
        running_server(target, anonymous_admin=True, master_keys=KEYS) as (_, client),
    ):
        await imported(client, records)
        # Another client's deposit takes version 3, the lost deposit's in the source.
        assert (await client.submit(command("acc-alice", bank.Deposit(amount=1)))).version == 3
        deposit = await client.submit(bank_.deposit)
        assert (deposit.replayed, deposit.version) == (False, 4)
        bob = await client.submit(bank_.bob)
        assert (bob.replayed, bob.version) == (False, 1)
        bob_user = await client.submit(bank_.bob_user)
        assert (bob_user.replayed, bob_user.version) == (False, 1)
        new_address = await client.submit(bank_.new_address)
        assert (new_address.replayed, new_address.version) == (False, 2)


def as_made_unbounded(quiet: list[Record], head: int) -> list[Record]:
    """What an exporter without the bound wrote under load, without
    ``--snapshots`` (a snapshot past the events is refused on import, as it
    was before): the quiet export's events up to ``head`` (the log's head
    when it began), and everything else it read after them."""
    kept = [
        r
        for r in quiet
        if r.WhichOneof("record") != "snapshot"
        and (r.WhichOneof("record") != "event" or r.event.event.position <= head)
    ]
    kept[0].header.snapshots = False
    kept[-1].end.events = len(of_kind(kept, "event"))
    kept[-1].end.snapshots = 0
    return kept


async def test_an_import_leaves_out_command_records_past_the_events_of_an_old_export(
    open_store: OpenStore, kind: str
) -> None:
    bank_ = Bank()
    under_load, quiet = await bank_exported(open_store, kind, bank_)
    old = as_made_unbounded(quiet, under_load[0].header.log_head)
    assert len(of_kind(old, "command")) == 7  # four past the events: the stream the importer must guard against
    async with (
        open_store(kind, "target") as target,
        running_server(target, anonymous_admin=True, master_keys=KEYS) as (_, client),
    ):
        summary = await imported(client, old)
        assert (summary.commands_past_events_left_out, summary.commands_written) == (4, 3)
        assert len((await target.read_log(0, LogFilter(), 100)).events) == 3
        deposit = await client.submit(bank_.deposit)
        assert (deposit.replayed, deposit.version) == (False, 3)


async def test_the_command_records_of_a_deleted_aggregate_stay_in_the_export(open_store: OpenStore, kind: str) -> None:
    """A deleted aggregate keeps only its tombstone, at the version after
    its events: the bound goes by it, and its command records (the audit of
    its commands) are exported as before."""
    async with (
        open_store(kind, "source") as source,
        running_server(source, anonymous_admin=True, master_keys=KEYS) as (_, client),
    ):
        for built in Bank().before:
            await client.submit(built)
        await client.admin.DeleteAggregate(admin.DeleteAggregateRequest(aggregate_id="acc-alice", reason="asked"))
        records = await exported_under_load(source, _nothing)
    commands = [record.command for record in of_kind(records, "command")]
    assert sorted((c.aggregate_id, c.last_version) for c in commands) == [
        ("acc-alice", 1),
        ("acc-alice", 2),
        ("usr-alice", 1),
    ]


async def test_a_refusal_recorded_after_the_keys_were_read_brings_its_key(open_store: OpenStore, kind: str) -> None:
    """A command refused on an aggregate with no events (version 0) has no
    event to be bounded by: its record is kept, sealed under a data key
    made for it, perhaps after the keys were read; that key follows it.
    Imported, its retry is answered the same refusal, not DATA_LOSS."""
    taken = command("usr-copycat", users.RegisterUser(email="alice@example.com", name="Copycat"))

    async def refused() -> None:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.submit(taken)
        assert details_of(raised.value).reason == "NOT_UNIQUE"

    async with (
        open_store(kind, "source") as source,
        running_server(source, anonymous_admin=True, master_keys=KEYS) as (_, client),
    ):
        for built in Bank().before:
            await client.submit(built)
        records = await exported_under_load(source, refused, after_keys=True)
    (copycat,) = [r.command for r in of_kind(records, "command") if r.command.aggregate_id == "usr-copycat"]
    assert copycat.last_version == 0
    assert "usr-copycat" in {record.data_key.aggregate_id for record in of_kind(records, "data_key")}
    async with (
        open_store(kind, "target") as target,
        running_server(target, anonymous_admin=True, master_keys=KEYS) as (_, client),
    ):
        await imported(client, records)
        await refused()
