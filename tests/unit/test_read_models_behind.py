"""Which stored projections an import's replacement leaves unlike a rebuild
(service/transfer/read_models.py), on the memory store: every stored
projection's checkpoint counts, loaded or not, but reactions' (which pass
imported events) and a loaded projection's that never reads the aggregate's
type; a restore of a whole export (no aggregates named in its header) is
refused at the batch that would replace a tombstone, before it is written.
A restore waits a while for a projection below the tombstone to pass it,
not for one stopped at a failing event; a retired projection (no loaded
plugin declares it) does not refuse it and is named to be rebuilt."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from chronicle.v1 import export_pb2
from domain_plugins.bank_account import plugin as bank_plugin
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.bank_account.transfers import transfers
from service.errors import ImportConflict
from service.plugins.registry import Registry
from service.processing.projection_failures import StoredFailure, record_failure
from service.store.base import AggregateQuery, Store
from service.store.memory import MemoryStore
from service.transfer.deleting import delete_aggregate
from service.transfer.exporter import Exporter, ExportSelection
from service.transfer.importer import Importer, ImportOptions
from service.transfer.read_models import READ_MODELS_BEHIND, Replaced, checkpoints, stale
from tests.support.events import new_event
from tests.support.stalling_ledger import plugin as stalling_plugin

REGISTRY = Registry([bank_plugin, stalling_plugin])
BALANCES = "bank.balances_by_owner"  # reads Account, loaded
STALLING = "stalling.opened"  # reads Account only (aggregate_types), loaded
RETIRED = "retired.model"  # no plugin declares it: what it reads is unknown


async def stored(store: MemoryStore, names: dict[str, int]) -> None:
    for name, position in names.items():
        await store.start_projection(name, position)


async def test_every_stored_projection_counts_but_reactions() -> None:
    store = MemoryStore()
    await stored(
        store,
        # A loaded reaction, and one no plugin declares (its start row tells it apart).
        {BALANCES: 3, RETIRED: 1, transfers.name: 1, "old.reaction": 1, "#start/old.reaction": 1},
    )
    assert await checkpoints(store, REGISTRY) == {BALANCES: 3, RETIRED: 1}


def test_a_loaded_projection_that_never_reads_the_type_is_not_stale() -> None:
    read_models = {BALANCES: 1, STALLING: 1, RETIRED: 1}
    box = Replaced("box-1", "Box", first_removed=1, tombstone=5)
    assert stale(box, read_models, REGISTRY) == {RETIRED: 1}
    account = Replaced("acc-1", "Account", first_removed=1, tombstone=5)
    assert stale(account, read_models, REGISTRY) == read_models
    # Live: those that reached the first event removed; deleted: those below the tombstone.
    live = Replaced("acc-1", "Account", first_removed=2, tombstone=None)
    assert stale(live, {BALANCES: 1, STALLING: 2, RETIRED: 9}, REGISTRY) == {STALLING: 2, RETIRED: 9}
    assert stale(account, {BALANCES: 5, STALLING: 4}, REGISTRY) == {STALLING: 4}


async def test_a_whole_export_restored_past_a_projection_behind_is_refused_before_its_batch() -> None:
    store = MemoryStore()
    roles = Store.of(store)
    opened = bank.AccountOpened(owner="ann").SerializeToString()
    await store.append("acc-1", [new_event("bank.v1.AccountOpened", aggregate_type="Account", payload=opened)], 0)
    records = [r async for r in Exporter(roles, source="memory").records(ExportSelection(aggregate_ids=("acc-1",)))]
    del records[0].header.aggregate_ids[:]  # as a whole export's: the aggregates are known batch by batch
    await delete_aggregate(roles, "acc-1")
    (tombstone,) = await store.read_aggregate("acc-1", AggregateQuery())
    await stored(store, {STALLING: 1, BALANCES: tombstone.position})

    async def restored(**options: bool) -> Importer:
        options.setdefault("read_models_wait", 0)  # type: ignore[arg-type]
        importer = Importer(roles, options=ImportOptions(restore_deleted=True, **options), registry=REGISTRY)
        await importer.run(_of(records))
        return importer

    with pytest.raises(ImportConflict) as refused:
        await restored()
    assert refused.value.reason == READ_MODELS_BEHIND
    assert refused.value.metadata["projections"] == '{"stalling.opened": 1}'
    assert refused.value.metadata["tombstones"] == f'{{"acc-1": {tombstone.position}}}'
    assert await store.read_aggregate("acc-1", AggregateQuery()) == [tombstone]  # nothing of it written

    importer = await restored(even_if_read_models_behind=True)
    assert importer.summary.projections_to_rebuild == {STALLING: 1}
    assert [e.event_type for e in await store.read_aggregate("acc-1", AggregateQuery())] == ["bank.v1.AccountOpened"]


async def _of(records: list[export_pb2.ExportRecord]) -> AsyncIterator[export_pb2.ExportRecord]:
    for record in records:
        yield record


class WatchedStore(MemoryStore):
    """A memory store that says when a projection's checkpoint is read (a
    restore looking at it), so a test can move it on while the restore waits."""

    def __init__(self, watched: str) -> None:
        super().__init__()
        self.watched = watched
        self.read = asyncio.Event()

    async def projection_position(self, name: str) -> int:
        if name == self.watched:
            self.read.set()
        return await super().projection_position(name)


async def deleted_account(store: MemoryStore) -> tuple[list[export_pb2.ExportRecord], int]:
    """An archive of acc-1, deleted since: its records and its tombstone's position."""
    roles = Store.of(store)
    opened = bank.AccountOpened(owner="ann").SerializeToString()
    await store.append("acc-1", [new_event("bank.v1.AccountOpened", aggregate_type="Account", payload=opened)], 0)
    records = [r async for r in Exporter(roles, source="memory").records(ExportSelection(aggregate_ids=("acc-1",)))]
    await delete_aggregate(roles, "acc-1")
    (tombstone,) = await store.read_aggregate("acc-1", AggregateQuery())
    return records, tombstone.position


async def restore(store: MemoryStore, records: list[export_pb2.ExportRecord], *, wait: float) -> Importer:
    options = ImportOptions(restore_deleted=True, read_models_wait=wait)
    importer = Importer(Store.of(store), options=options, registry=REGISTRY)
    await importer.run(_of(records))
    return importer


async def test_a_restore_waits_for_a_projection_below_the_tombstone_to_pass_it() -> None:
    store = WatchedStore(STALLING)
    records, tombstone = await deleted_account(store)
    await stored(store, {STALLING: 1, BALANCES: tombstone})
    restoring = asyncio.create_task(restore(store, records, wait=60))
    await store.read.wait()  # the restore has found it below
    await store.commit_projection(STALLING, expected_position=1, new_position=tombstone, writes=[])
    importer = await restoring
    assert importer.summary.projections_to_rebuild == {}
    assert [e.event_type for e in await store.read_aggregate("acc-1", AggregateQuery())] == ["bank.v1.AccountOpened"]


async def test_a_restore_names_where_a_lagging_projection_is_once_the_wait_is_over() -> None:
    store = MemoryStore()
    records, tombstone = await deleted_account(store)
    await stored(store, {STALLING: 1, BALANCES: tombstone})
    with pytest.raises(ImportConflict) as refused:
        await restore(store, records, wait=0.01)
    assert refused.value.reason == READ_MODELS_BEHIND
    assert "after 0.01 s: stalling.opened (at 1)." in str(refused.value)
    assert refused.value.metadata["stopped"] == "{}"


async def test_a_restore_does_not_wait_for_a_projection_stopped_below_the_tombstone() -> None:
    store = MemoryStore()
    records, tombstone = await deleted_account(store)
    await stored(store, {STALLING: 1, BALANCES: tombstone})
    assert await record_failure(store, STALLING, StoredFailure(tombstone, "boom"), None)
    with pytest.raises(ImportConflict) as refused:
        async with asyncio.timeout(30):  # it would wait the hour out for one that runs
            await restore(store, records, wait=3600)
    assert f"stalling.opened (at 1, stopped by a failure at {tombstone})" in str(refused.value)
    assert refused.value.metadata["stopped"] == f'{{"stalling.opened": {tombstone}}}'


async def test_a_retired_projection_below_the_tombstone_is_named_to_rebuild_not_waited_for() -> None:
    store = MemoryStore()
    records, tombstone = await deleted_account(store)
    await stored(store, {RETIRED: 1, STALLING: tombstone, BALANCES: tombstone})
    async with asyncio.timeout(30):
        importer = await restore(store, records, wait=3600)
    assert importer.summary.projections_to_rebuild == {RETIRED: 1}
    assert [e.event_type for e in await store.read_aggregate("acc-1", AggregateQuery())] == ["bank.v1.AccountOpened"]
