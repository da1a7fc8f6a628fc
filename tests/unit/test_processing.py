"""Router, workers and executor on the memory store: serial per aggregate,
parallel across aggregates, retries under conflicts, snapshots, eviction."""

from __future__ import annotations

import asyncio
import platform
import sys
import tracemalloc
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from google.protobuf.message import Message

from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.errors import ConcurrencyConflict, HandlerFailed, Overloaded, StoreUnavailable, ValidationError
from service.plugins.registry import Registry
from service.processing import memory
from service.processing.commands import CommandRequest
from service.processing.executor import CommandExecutor
from service.processing.memory import release_free_memory
from service.processing.router import Router
from service.processing.snapshots import SnapshotPolicy
from service.processing.state import AggregateLoader
from service.processing.worker import AggregateWorker
from service.store.base import Store, StoreAdapter
from service.store.memory import MemoryStore
from service.store.records import ClaimChange, CommandRecord, NewEvent, RecordedEvent, Snapshot
from service.store_contract.records import recorded_event
from tests.support import plugins
from tests.support.contents import contents
from tests.support.instrumented import ObservedStore
from tests.support.waiting import eventually

REGISTRY = Registry([bank_account.plugin])
# The faulty plugin reuses bank messages, so it lives in a registry of its own
# (one registry refuses two plugins claiming one command type).
FAULTY = Registry([plugins.faulty])
EXECUTOR_OPTIONS = ("max_attempts", "snapshots")


def request(aggregate_id: str, message: Message, *, registry: Registry = REGISTRY) -> CommandRequest:
    spec = registry.command(message.DESCRIPTOR.full_name)
    assert spec is not None
    return CommandRequest(command_id=str(uuid.uuid4()), aggregate_id=aggregate_id, spec=spec, message=message)


def faulty(aggregate_id: str, message: Message) -> CommandRequest:
    return request(aggregate_id, message, registry=FAULTY)


def router_over(store: StoreAdapter, *, registry: Registry = REGISTRY, **options: Any) -> Router:
    executor = CommandExecutor(Store.of(store), registry, **{k: v for k, v in options.items() if k in EXECUTOR_OPTIONS})
    return Router(executor, **{k: v for k, v in options.items() if k not in EXECUTOR_OPTIONS})


async def test_commands_for_one_aggregate_run_one_at_a_time() -> None:
    store: Any = ObservedStore(MemoryStore(), append_delay=0.002)
    router = router_over(store)
    await router.submit(request("acc-1", bank.OpenAccount(owner="ann")))
    results = await asyncio.gather(*(router.submit(request("acc-1", bank.Deposit(amount=1))) for _ in range(30)))
    assert store.max_in_flight_per_aggregate == 1
    assert sorted(r.version for r in results) == list(range(2, 32))
    await router.close()


async def test_commands_for_different_aggregates_run_concurrently() -> None:
    store: Any = ObservedStore(MemoryStore(), append_delay=0.01)
    router = router_over(store)
    await asyncio.gather(*(router.submit(request(f"acc-{i}", bank.OpenAccount(owner="ann"))) for i in range(10)))
    assert store.max_in_flight_total == 10
    await router.close()


async def test_idle_workers_leave() -> None:
    # Idle for a second is long on a memory store, even on a loaded machine;
    # the wait for them to leave is bounded only to fail a broken build.
    router = router_over(MemoryStore(), idle_timeout=1.0)
    await asyncio.gather(*(router.submit(request(f"acc-{i}", bank.OpenAccount(owner="ann"))) for i in range(50)))
    assert router.live_workers == 50

    async def all_left() -> bool:
        return router.live_workers == 0

    await eventually(all_left, what="idle workers leaving")
    # and a new command after eviction still sees the aggregate's history
    result = await router.submit(request("acc-3", bank.Deposit(amount=4)))
    assert result.version == 2
    await router.close()


async def test_a_full_aggregate_queue_is_overloaded() -> None:
    store: Any = ObservedStore(MemoryStore(), append_delay=0.05)
    router = router_over(store, queue_depth=2)
    await router.submit(request("acc-1", bank.OpenAccount(owner="ann")))
    attempts = [router.submit(request("acc-1", bank.Deposit(amount=1))) for _ in range(5)]
    results = await asyncio.gather(*attempts, return_exceptions=True)
    refused = [r for r in results if isinstance(r, Overloaded)]
    accepted = [r for r in results if not isinstance(r, BaseException)]
    # the aggregate is warm, so the first starts at once; of the four that
    # arrive while it runs, two fit in the queue and two are refused
    assert (len(accepted), len(refused)) == (3, 2)
    assert refused[0].reason == "AGGREGATE_QUEUE_FULL"
    await router.close()


async def test_room_in_a_full_queue_is_promised_and_given_as_it_drains() -> None:
    store: Any = ObservedStore(MemoryStore(), append_delay=0.05)
    router = router_over(store, queue_depth=2)
    assert router.room_for("acc-1") is None  # no worker yet
    await router.submit(request("acc-1", bank.OpenAccount(owner="ann")))
    assert router.room_for("acc-1") is None  # an idle worker
    running = [asyncio.ensure_future(router.submit(request("acc-1", bank.Deposit(amount=1)))) for _ in range(3)]
    await asyncio.sleep(0)  # each reached the worker: one runs, two wait
    room = router.room_for("acc-1")
    assert room is not None and not room.done()
    await asyncio.wait_for(room, timeout=10)  # the running command finished, the next one left the queue
    assert router.room_for("acc-1") is None
    await router.submit(request("acc-1", bank.Deposit(amount=1)))  # not refused
    assert [r.version for r in await asyncio.gather(*running)] == [2, 3, 4]
    await router.close()


async def test_a_failing_handler_writes_nothing_and_the_worker_keeps_serving() -> None:
    store = MemoryStore()
    router = router_over(store, registry=FAULTY)
    await router.submit(faulty("w-1", bank.Deposit(amount=5)))
    before = await contents(store)
    with pytest.raises(HandlerFailed):
        await router.submit(faulty("w-1", bank.Deposit(amount=plugins.FAIL_AMOUNT)))
    assert (await contents(store)).changes_since(before) == {}
    result = await router.submit(faulty("w-1", bank.Deposit(amount=6)))
    assert result.version == 2
    assert [e.version for e in await store.read_aggregate("w-1")] == [1, 2]
    await router.close()


async def test_a_handler_returning_a_non_event_fails_without_writing() -> None:
    store = MemoryStore()
    router = router_over(store, registry=FAULTY)
    before = await contents(store)
    with pytest.raises(HandlerFailed) as raised:
        await router.submit(faulty("w-1", bank.Withdraw(amount=1)))
    assert raised.value.reason == "UNREGISTERED_EVENT"
    assert (await contents(store)).changes_since(before) == {}
    await router.close()


async def test_a_stale_replica_reloads_and_reruns_on_conflict() -> None:
    store = MemoryStore()
    replica_a, replica_b = router_over(store), router_over(store)
    await replica_a.submit(request("acc-1", bank.OpenAccount(owner="ann")))
    await replica_a.submit(request("acc-1", bank.Deposit(amount=1)))  # a caches version 2
    await replica_b.submit(request("acc-1", bank.Deposit(amount=10)))  # b moves it to 3
    result = await replica_a.submit(request("acc-1", bank.Withdraw(amount=11)))  # a's cache says 1: stale
    assert result.version == 4
    await replica_a.close()
    await replica_b.close()


async def test_a_refusal_decided_on_a_stale_cache_is_decided_again() -> None:
    store = MemoryStore()
    replica_a, replica_b = router_over(store), router_over(store)
    await replica_a.submit(request("acc-1", bank.OpenAccount(owner="ann")))  # a caches balance 0
    await replica_b.submit(request("acc-1", bank.Deposit(amount=10)))
    withdraw = request("acc-1", bank.Withdraw(amount=5))
    result = await replica_a.submit(withdraw)
    assert result.version == 3
    record = await store.find_command(withdraw.command_id)
    assert record is not None and record.rejection is None
    await replica_a.close()
    await replica_b.close()


class RacingStore(MemoryStore):
    """Before every append, another writer slips in one more event."""

    async def append(
        self,
        aggregate_id: str,
        events: Sequence[NewEvent],
        expected_version: int,
        *,
        commands: Sequence[CommandRecord] = (),
        claims: Sequence[ClaimChange] = (),
    ) -> list[RecordedEvent]:
        head = await self.head(aggregate_id)
        if head is not None:
            last = (await self.read_aggregate(aggregate_id))[-1]
            intruder = NewEvent(str(uuid.uuid4()), last.aggregate_type, last.event_type, 1, last.payload, 0)
            await super().append(aggregate_id, [intruder], head.version)
        return await super().append(aggregate_id, events, expected_version, commands=commands, claims=claims)


async def test_conflicts_beyond_the_budget_are_reported_with_the_current_version() -> None:
    store = RacingStore()
    router = router_over(store, max_attempts=3)
    await router.submit(request("acc-1", bank.OpenAccount(owner="ann")))
    with pytest.raises(ConcurrencyConflict) as raised:
        await router.submit(request("acc-1", bank.Deposit(amount=1)))
    assert raised.value.metadata["attempts"] == "3"
    head = await store.head("acc-1")
    assert head is not None and raised.value.metadata["current_version"] == str(head.version)
    await router.close()


async def test_snapshots_are_taken_every_n_events_and_used_when_loading() -> None:
    store: Any = ObservedStore(MemoryStore())
    router = router_over(store, snapshots=SnapshotPolicy())  # bank_account snapshots every 100
    await router.submit(request("acc-1", bank.OpenAccount(owner="ann")))
    for _ in range(249):
        await router.submit(request("acc-1", bank.Deposit(amount=2)))
    snapshot = await store.load_snapshot("acc-1")
    assert snapshot is not None and snapshot.version == 200
    store.events_read = 0
    loaded = await AggregateLoader(Store.of(store), REGISTRY).load("acc-1", bank_account.account)
    assert store.events_read == 50
    assert loaded.version == 250
    assert loaded.state == bank.Account(owner="ann", balance=498)
    await router.close()


class SnapshotsUnavailable(MemoryStore):
    """Takes commands but not snapshots: the database went away between the
    append and the snapshot's save after it."""

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        raise StoreUnavailable("the database is unreachable (simulated)")


async def test_a_snapshot_the_store_cannot_take_is_one_line_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = router_over(SnapshotsUnavailable(), snapshots=SnapshotPolicy())  # bank_account snapshots every 100
    await router.submit(request("acc-1", bank.OpenAccount(owner="ann")))
    with caplog.at_level("WARNING", logger="service.processing.executor"):
        for _ in range(100):
            await router.submit(request("acc-1", bank.Deposit(amount=1)))
        await asyncio.sleep(0.05)  # the save runs after the append it follows
    await router.close()
    said = [r for r in caplog.records if r.getMessage().startswith("snapshot of acc-1")]
    assert [r.getMessage() for r in said] == [
        "snapshot of acc-1 at 100 not saved: the database is unreachable (simulated)"
    ]
    assert said[0].exc_info is None


async def test_a_snapshot_with_another_state_schema_version_is_ignored() -> None:
    store: Any = ObservedStore(MemoryStore())
    router = router_over(store)
    await router.submit(request("acc-1", bank.OpenAccount(owner="ann")))
    for _ in range(120):
        await router.submit(request("acc-1", bank.Deposit(amount=1)))
    snapshot = await store.load_snapshot("acc-1")
    assert snapshot is not None
    await store.inner.save_snapshot(replace(snapshot, schema_version=99))
    store.events_read = 0
    loaded = await AggregateLoader(Store.of(store), REGISTRY).load("acc-1", bank_account.account)
    assert store.events_read == 121
    assert loaded.state == bank.Account(owner="ann", balance=120)
    await router.close()


class CountedSnapshots(MemoryStore):
    """Counts the snapshots saved (by version); refuses them while ``refusing``."""

    def __init__(self) -> None:
        super().__init__()
        self.saved: list[int] = []
        self.refusing = False  # the database unreachable for snapshots

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        if self.refusing:
            raise StoreUnavailable("the database is unreachable (simulated)")
        self.saved.append(snapshot.version)
        await super().save_snapshot(snapshot)


async def test_a_command_after_a_load_from_a_recent_snapshot_saves_none() -> None:
    store = CountedSnapshots()
    router = router_over(store, snapshots=SnapshotPolicy())  # bank_account snapshots every 100
    await router.submit(request("acc-1", bank.OpenAccount(owner="ann")))
    for _ in range(104):
        await router.submit(request("acc-1", bank.Deposit(amount=1)))
    await eventually(lambda: store.saved == [100], what="the snapshot at version 100")
    for _ in range(3):  # each command a cache miss: loaded from the snapshot at 100 and the events after it
        router.evict("acc-1")
        await router.submit(request("acc-1", bank.Deposit(amount=1)))
    await asyncio.sleep(0.05)  # a save runs after the append it follows
    assert store.saved == [100]
    await router.close()


async def test_a_command_after_a_load_that_found_no_snapshot_saves_one() -> None:
    store = CountedSnapshots()
    store.refusing = True
    router = router_over(store, snapshots=SnapshotPolicy())  # bank_account snapshots every 100
    await router.submit(request("acc-1", bank.OpenAccount(owner="ann")))
    for _ in range(104):
        await router.submit(request("acc-1", bank.Deposit(amount=1)))
    await asyncio.sleep(0.05)
    assert store.saved == []  # the save at 100 failed: no snapshot at all
    store.refusing = False
    router.evict("acc-1")  # the next command replays the whole history, and saves what it built
    await router.submit(request("acc-1", bank.Deposit(amount=1)))
    await eventually(lambda: store.saved == [106], what="a snapshot after the full replay")
    await router.close()


class HeldSnapshots(MemoryStore):
    """Holds each snapshot save until ``release`` is set (a save runs in the
    background after the append it follows, and can be slow)."""

    def __init__(self) -> None:
        super().__init__()
        self.saving: list[Snapshot] = []
        self.release = asyncio.Event()
        self.saves_done = 0

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        self.saving.append(snapshot)
        await self.release.wait()
        await super().save_snapshot(snapshot)
        self.saves_done += 1


async def test_a_snapshot_saved_after_an_import_replaced_the_history_is_not_kept() -> None:
    store = HeldSnapshots()
    router = router_over(store, snapshots=SnapshotPolicy())  # bank_account snapshots every 100
    await router.submit(request("acc-1", bank.OpenAccount(owner="ann")))
    for _ in range(99):
        await router.submit(request("acc-1", bank.Deposit(amount=2)))
    await eventually(lambda: len(store.saving) == 1, what="the snapshot at version 100 being saved")
    (held,) = store.saving
    stored = await store.read_aggregate("acc-1")
    assert (held.version, held.through_event_id) == (100, stored[-1].event_id)
    # Meanwhile an import overwrites the aggregate with another history.
    assert await store.remove_aggregate("acc-1") == 100
    await store.import_events([replace(recorded_event("acc-1", v), aggregate_type="Account") for v in range(1, 101)])
    router.evict("acc-1")
    store.release.set()
    await eventually(lambda: store.saves_done == 1, what="the held save finished")
    assert await store.load_snapshot("acc-1") is None  # the old history's state is not kept over the new one
    await router.close()


async def test_a_closed_router_refuses_new_commands() -> None:
    router = router_over(MemoryStore())
    await router.close()
    with pytest.raises(StoreUnavailable) as raised:
        await router.submit(request("acc-1", bank.OpenAccount(owner="ann")))
    assert raised.value.reason == "SHUTTING_DOWN"


async def test_a_sweep_that_evicts_many_workers_gives_their_memory_back_and_a_small_one_does_not() -> None:
    released = 0

    def release() -> None:
        nonlocal released
        released += 1

    router = router_over(MemoryStore(), idle_timeout=3600, release_memory=release)
    await asyncio.gather(*(router.submit(request(f"acc-{i}", bank.OpenAccount(owner="ann"))) for i in range(1100)))
    await router.submit(request("acc-late", bank.OpenAccount(owner="bob")))
    assert router.drop_idle(idle_before=float("inf")) == 1101
    assert released == 1
    await asyncio.gather(*(router.submit(request(f"acc-{i}", bank.Deposit(amount=1))) for i in range(10)))
    assert router.drop_idle(idle_before=float("inf")) == 10
    assert released == 1  # ten workers: not worth a walk over the allocator
    await router.close()


def test_releasing_free_memory_calls_the_allocator_where_it_can() -> None:
    # On glibc (Linux here) malloc_trim runs; elsewhere it is a no-op.
    garbage = [bytearray(4096) for _ in range(10_000)]
    del garbage
    assert isinstance(release_free_memory(), bool)
    if sys.platform.startswith("linux") and "glibc" in (platform.libc_ver()[0] or ""):
        assert memory._TRIM is not None


async def test_validation_errors_keep_the_cached_state() -> None:
    store: Any = ObservedStore(MemoryStore())
    router = router_over(store)
    await router.submit(request("acc-1", bank.OpenAccount(owner="ann")))
    store.events_read = 0
    with pytest.raises(ValidationError):
        await router.submit(request("acc-1", bank.Withdraw(amount=1)))
    await router.submit(request("acc-1", bank.Deposit(amount=1)))
    assert store.events_read == 0  # warm aggregate: nothing read back
    await router.close()


async def test_a_mass_eviction_gives_the_workers_table_back() -> None:
    # One command to each of many aggregates, then all idle: the table that
    # held them must not stay at its peak size (a dict never shrinks).
    router = router_over(MemoryStore(), idle_timeout=3600)
    await asyncio.gather(*(router.submit(request(f"acc-{i}", bank.OpenAccount(owner="ann"))) for i in range(5000)))
    peak = sys.getsizeof(router._workers)
    assert router.drop_idle(idle_before=float("inf")) == 5000
    assert router.live_workers == 0
    assert sys.getsizeof(router._workers) < peak / 100
    # and the router goes on serving
    assert (await router.submit(request("acc-7", bank.Deposit(amount=1)))).version == 2
    await router.close()


async def test_an_idle_worker_holds_its_cached_state_and_no_queue() -> None:
    # Most cached aggregates are idle, so what an idle worker keeps besides its
    # state is paid per aggregate in memory: no command queue (an empty deque
    # is 760 bytes, more than the worker and its state's value together). What
    # it keeps is the hash of the command id it settled (an 88-byte array), to
    # answer a retry without running the handler.
    router = router_over(MemoryStore(), idle_timeout=3600)
    count = 2000
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        await asyncio.gather(*(router.submit(request(f"acc-{i}", bank.OpenAccount(owner="ann"))) for i in range(count)))
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    assert router.live_workers == count
    assert all(not worker.busy and worker.depth == 0 for worker in router._workers.values())
    worker_file = [tracemalloc.Filter(True, sys.modules[AggregateWorker.__module__].__file__ or "")]
    held = sum(
        stat.size_diff
        for stat in after.filter_traces(worker_file).compare_to(before.filter_traces(worker_file), "filename")
    )
    assert held / count < 100, f"{held / count:.0f} bytes per idle worker"
    # and an idle worker takes a command as before
    assert (await router.submit(request("acc-7", bank.Deposit(amount=1)))).version == 2
    await router.close()


async def test_a_worker_keeps_no_finished_snapshot_save() -> None:
    store: Any = ObservedStore(MemoryStore())
    router = router_over(store, snapshots=SnapshotPolicy())  # bank_account snapshots every 100
    await router.submit(request("acc-1", bank.OpenAccount(owner="ann")))
    for _ in range(99):
        await router.submit(request("acc-1", bank.Deposit(amount=2)))
    worker = router._workers["acc-1"]
    saving = worker._saving
    assert saving is not None  # the save at version 100 was started
    await asyncio.wait((saving,))
    await asyncio.sleep(0)  # its done callbacks
    assert (await store.load_snapshot("acc-1")) is not None
    assert worker._saving is None
    await router.close()
