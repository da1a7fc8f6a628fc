"""Forgotten stays forgotten through imports (docs/export-format.md,
"Forgotten stays forgotten"): an export taken before a forget, imported
again after it (an import is meant to be run again), brings back neither
the forgotten person's claims nor snapshots nor anything readable, on each
store; an import that would replace a forgotten aggregate (overwriting,
restoring a deleted one) is refused, AGGREGATE_FORGOTTEN, and writes
nothing of it."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import export_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.users.protos.users.v1 import users_pb2 as users
from service import cli
from service.store.base import Store, StoreAdapter
from service.store.encryption import is_sealed, new_master_key
from service.store.memory import MemoryStore
from service.store.records import DataKey, HeldClaim, LogFilter
from service.transfer.importer import Importer
from service.transfer.records import end_record, exported_claim, exported_command, exported_event
from service.transfer.restoring import only_aggregates
from service.transfer.sealing import ImportSealing
from service.transfer.stream import BINARY, Writer
from tests.support.events import command_record, new_event, recorded_event
from tests.support.grpc_client import Client, asking_again_if_lost, command, details_of, running_server
from tests.support.stores import STORES, store_site
from tests.support.transfer import exported, imported
from tests.support.waiting import eventually

KEYS = f"k1:{new_master_key()}"
EMAIL = "zelda@example.com"
Record = export_pb2.ExportRecord


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreAdapter]:
    """A store to import into, of each kind."""
    async with STORES[request.param](store_site(request, tmp_path)) as opened:
        yield opened


async def zelda_before_the_forget() -> list[Record]:
    """An export (snapshots and command records included) of a store where
    Zelda registered with her e-mail address (a snapshot is kept of her
    user) and opened an account, taken before she asked to be forgotten."""
    source = MemoryStore()
    async with running_server(source, anonymous_admin=True, master_keys=KEYS, snapshot_every=1) as (_, client):
        await client.submit(command("usr-zelda", users.RegisterUser(email=EMAIL, name="Zelda")))
        await client.submit(command("acc-zelda", bank.OpenAccount(owner="Zelda")))
        await client.submit(command("acc-zelda", bank.Deposit(amount=5)))
        await client.submit(command("acc-other", bank.OpenAccount(owner="Otto")))

        async def snapshot_saved() -> bool:
            return await source.load_snapshot("usr-zelda") is not None

        await eventually(snapshot_saved, what="the snapshot of Zelda's user")
        return await exported(client, include_snapshots=True, include_commands=True)


async def forget(client: Client, *aggregate_ids: str) -> None:
    for aggregate_id in aggregate_ids:
        await client.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id=aggregate_id))


async def test_an_export_from_before_a_forget_brings_back_none_of_it(target: StoreAdapter) -> None:
    """Before the fix the second import answered claims_written 1 and
    snapshots_written 1: the claims table held her address's keyed hash
    again (holder usr-zelda), acc-zelda's snapshot was back, and her address
    could not be registered again (NOT_UNIQUE)."""
    before = await zelda_before_the_forget()
    snapshots = [r.snapshot.aggregate_id for r in before if r.HasField("snapshot")]
    assert snapshots == ["usr-zelda"]
    async with running_server(target, anonymous_admin=True, master_keys=KEYS) as (_, client):
        first = await imported(client, before)
        assert (first.claims_written, first.snapshots_written, first.forgotten_skipped) == (1, 1, 0)
        await forget(client, "usr-zelda", "acc-zelda")
        claims_after_forget = await target.claims_page(("", ""), 100)
        assert claims_after_forget == []

        again = await imported(client, before)
        assert (again.events_written, again.claims_written, again.snapshots_written) == (0, 0, 0)
        assert (again.data_keys_written, again.commands_written) == (0, 0)
        # Her claim, her snapshot, and the two live data keys of hers the export holds.
        assert again.forgotten_skipped == 1 + 1 + 2
        assert await target.claims_page(("", ""), 100) == []
        for aggregate_id in ("usr-zelda", "acc-zelda"):
            assert await target.load_snapshot(aggregate_id) is None
            key = await target.load_data_key(aggregate_id)
            assert key is not None and key.forgotten
        # A forgotten user's e-mail address can be registered again.
        await client.submit(command("usr-new", users.RegisterUser(email=EMAIL, name="Another Zelda")))
        # And the export imported once more is not refused for it: her claim is void, not held against usr-new.
        third = await imported(client, before)
        assert (third.claims_written, third.forgotten_skipped) == (0, 4)
        assert [c.aggregate_id for c in await target.claims_page(("", ""), 100)] == ["usr-new"]
        assert await refused_get(client, "acc-zelda") == "AGGREGATE_FORGOTTEN"


async def refused_get(client: Client, aggregate_id: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.events.GetAggregate(ev.GetAggregateRequest(aggregate_id=aggregate_id))
    return details_of(refused.value).reason


async def test_what_comes_in_the_clear_for_a_forgotten_aggregate_is_written_unreadable() -> None:
    """An event or a command record of a forgotten aggregate that comes in
    the clear (an export of a store without encryption) is written
    shredded: it reads redacted like the aggregate's other events, and
    nothing of it is stored readable."""
    target = MemoryStore()
    async with running_server(target, anonymous_admin=True, master_keys=KEYS) as (_, client):
        opened = await client.submit(command("acc-zelda", bank.OpenAccount(owner="Zelda")))
        first = opened.events[0]
        records = await exported(client, aggregate_ids=["acc-zelda"])
        await forget(client, "acc-zelda")
        secret = bank.MoneyDeposited(amount=987_654_321).SerializeToString()
        deposit = replace(
            recorded_event("acc-zelda", 2, event_type="bank.v1.MoneyDeposited", payload=secret),
            aggregate_type="Account",
        )
        refused = command_record("acc-zelda", 2, 2)
        header, *rest, end = records
        end.end.events += 1
        end.end.commands += 1
        done = await imported(client, [header, *rest, exported_event(deposit), exported_command(refused), end])
        assert (done.events_written, done.events_skipped, done.commands_written) == (1, 1, 1)
        log = (await target.read_log(0, LogFilter(), 100)).events
        assert [e.event_id for e in log] == [first.event_id, deposit.event_id]
        assert all(is_sealed(e.payload) for e in log)
        assert secret not in log[1].payload
        read = [e async for e in client.events.ReadAggregate(ev.ReadAggregateRequest(aggregate_id="acc-zelda"))]
        assert [(e.version, e.redacted) for e in read] == [(1, True), (2, True)]
        stored = await target.find_command(refused.command_id)
        assert stored is not None and stored.fingerprint != refused.fingerprint


async def refused_import(
    client: Client, records: list[Record], **options: bool
) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await asking_again_if_lost(lambda: imported(client, records, **options))
    details = details_of(refused.value)
    return details.code, details.reason, details.metadata


async def test_overwriting_a_forgotten_aggregate_is_refused_and_writes_nothing_of_it(
    target: StoreAdapter, tmp_path: Path
) -> None:
    """Before the fix, importing an older export in the clear with
    overwriting replaced the forgotten account (aggregates_replaced 8 in
    the walkthrough): GetAggregate of acc-zelda answered her name again,
    stored in the clear."""
    async with running_server(MemoryStore(), anonymous_admin=True) as (_, client):  # no encryption at rest
        await client.submit(command("acc-zelda", bank.OpenAccount(owner="Zelda Older")))
        await client.submit(command("acc-other", bank.OpenAccount(owner="Otto")))
        older = await exported(client, include_snapshots=True)
    async with running_server(target, anonymous_admin=True, master_keys=KEYS) as (app, client):
        await client.submit(command("acc-other", bank.OpenAccount(owner="Otto Here")))
        await client.submit(command("acc-zelda", bank.OpenAccount(owner="Zelda")))
        await client.submit(command("acc-zelda", bank.Deposit(amount=5)))
        await forget(client, "acc-zelda")
        held = await target.read_aggregate("acc-zelda")
        other = await target.read_aggregate("acc-other")

        code, reason, metadata = await refused_import(client, older, overwrite=True)
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "AGGREGATE_FORGOTTEN")
        index = next(i for i, r in enumerate(older) if r.event.event.aggregate_id == "acc-zelda")
        assert (metadata["aggregate_id"], metadata["record"]) == ("acc-zelda", str(index))
        # Nothing of the batch was written, and no aggregate of it removed.
        assert await target.read_aggregate("acc-zelda") == held
        assert await target.read_aggregate("acc-other") == other
        assert await refused_get(client, "acc-zelda") == "AGGREGATE_FORGOTTEN"
        owners = await log_owners(target)
        assert b"Zelda Older" not in owners

        # The operator leaves it out: the rest is imported.
        path = tmp_path / "older.chronicle"
        write_export(path, older)
        argv = ["import", str(path), "--overwrite", "--leave-out", "acc-zelda", "--quiet", "--server", app.address]
        assert await asyncio.to_thread(cli.main, argv) == 0
        assert [e.event_id for e in await target.read_aggregate("acc-other")] == [
            r.event.event.event_id for r in older if r.event.event.aggregate_id == "acc-other"
        ]
        assert await target.read_aggregate("acc-zelda") == held


async def test_an_archived_aggregate_forgotten_since_is_not_restored() -> None:
    """Before the fix, restoring it replaced its tombstone with its events,
    which nobody can read any more (redacted), and no command could use."""
    store = MemoryStore()
    async with running_server(store, anonymous_admin=True, master_keys=KEYS) as (_, client):
        await client.submit(command("usr-zelda", users.RegisterUser(email=EMAIL, name="Zelda")))
        archive = await exported(client, aggregate_ids=["usr-zelda"], include_snapshots=True)
        await client.admin.DeleteAggregate(admin.DeleteAggregateRequest(aggregate_id="usr-zelda", reason="closed"))
        await forget(client, "usr-zelda")
        tombstone = await store.read_aggregate("usr-zelda")
        code, reason, metadata = await refused_import(
            client, list(only_aggregates(archive, {"usr-zelda"})), restore_deleted=True
        )
        assert (code, reason, metadata["aggregate_id"]) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "AGGREGATE_FORGOTTEN",
            "usr-zelda",
        )
        assert await store.read_aggregate("usr-zelda") == tombstone
        assert await store.claims_page(("", ""), 10) == []


async def log_owners(store: StoreAdapter) -> bytes:
    """Every payload byte of the store's log, to look for a name in."""
    return b"".join(e.payload for e in (await store.read_log(0, LogFilter(), 1000)).events)


def write_export(path: Path, records: list[Record]) -> None:
    with path.open("wb") as out:
        writer = Writer(out, BINARY)
        for record in records:
            writer.write(record)


class TransferBeforeForgottenAggregates:
    """A plugin's store adapter written before ``Transfer`` had
    ``forgotten_aggregates``: the importer asks its keys instead."""

    def __init__(self, inner: StoreAdapter) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        if name == "forgotten_aggregates":
            raise AttributeError(name)
        return getattr(self._inner, name)


async def test_an_adapter_without_the_forgotten_lookup_still_has_a_forgotten_aggregates_records_left_out() -> None:
    store = MemoryStore()
    await store.create_data_key(DataKey("usr-zelda", "k1", b"k" * 40))
    await store.append("usr-zelda", [new_event()], 0)
    await store.forget_data_key("usr-zelda")
    older: Any = TransferBeforeForgottenAggregates(store)  # not a Transfer: it lacks a method
    roles = replace(Store.of(store), transfer=older)
    claim = exported_claim(HeldClaim("users.email", "\x1fhash", "usr-zelda"))
    header = Record(header=export_pb2.ExportHeader(format="chronicle.export", format_version=1))
    # Encryption at rest set aside (ImportSealing: none): what is looked at is the forgotten lookup.
    importer = Importer(roles, sealing=ImportSealing())
    summary = await importer.run(replayed([header, claim, end_record(Counter(claim=1))]))
    assert (summary.written["claim"], summary.forgotten_skipped) == (0, 1)


async def replayed(records: list[Record]) -> AsyncIterator[Record]:
    for record in records:
        yield record
