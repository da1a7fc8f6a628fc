"""The live-aggregate cap (``--max-workers``): idle workers make room for new
aggregates, least recently used first; only busy ones refuse them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from google.protobuf.message import Message

from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.errors import Overloaded
from service.plugins.registry import Registry
from service.processing.commands import CommandRequest, CommandResult
from service.processing.executor import CommandExecutor
from service.processing.router import Router
from service.processing.snapshots import SnapshotPolicy
from service.processing.worker import AggregateWorker
from service.store.base import Store
from service.store.memory import MemoryStore
from service.store.records import NewEvent, Snapshot
from tests.support.waiting import eventually

REGISTRY = Registry([bank_account.plugin])


class HeldAppends(MemoryStore):
    """Appends to the aggregates in ``held`` wait until their event is set."""

    def __init__(self) -> None:
        super().__init__()
        self.held: dict[str, asyncio.Event] = {}

    async def append(self, aggregate_id: str, events: Sequence[NewEvent], expected_version: int, **kw: Any) -> Any:
        gate = self.held.get(aggregate_id)
        if gate is not None:
            await gate.wait()
        return await super().append(aggregate_id, events, expected_version, **kw)


class HeldSnapshots(MemoryStore):
    """Snapshot saves wait until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.saving = 0

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        self.saving += 1
        await self.release.wait()
        await super().save_snapshot(snapshot)


def request(aggregate_id: str, message: Message) -> CommandRequest:
    spec = REGISTRY.command(message.DESCRIPTOR.full_name)
    assert spec is not None
    return CommandRequest(command_id=str(uuid.uuid4()), aggregate_id=aggregate_id, spec=spec, message=message)


def router_over(store: MemoryStore, *, max_workers: int, snapshots: SnapshotPolicy | None = None) -> Router:
    # An idle timeout of an hour: only the cap evicts here, never the sweeper.
    executor = CommandExecutor(Store.of(store), REGISTRY, snapshots=snapshots)
    return Router(executor, max_workers=max_workers, idle_timeout=3600)


async def open_one_by_one(router: Router, names: Sequence[str]) -> list[CommandResult]:
    results = []
    for name in names:
        results.append(await router.submit(request(name, bank.OpenAccount(owner="ann"))))
        await asyncio.sleep(0.002)  # distinct idle times, whatever the clock's resolution
    return results


async def test_at_the_cap_idle_workers_make_room_least_recently_used_first() -> None:
    router = router_over(MemoryStore(), max_workers=4)
    try:
        await open_one_by_one(router, ["a-0", "a-1", "a-2", "a-3"])
        await router.submit(request("a-0", bank.Deposit(amount=1)))  # a-0 used again: a-1 is the oldest now
        await asyncio.sleep(0.002)
        assert (await router.submit(request("a-4", bank.OpenAccount(owner="bob")))).version == 1
        assert sorted(router._workers) == ["a-0", "a-2", "a-3", "a-4"]
        # Many more, one at a time: none refused, the cap held throughout.
        results = await open_one_by_one(router, [f"b-{n}" for n in range(20)])
        assert [r.version for r in results] == [1] * 20
        assert router.live_workers == 4
        # An evicted aggregate comes back with its history.
        assert (await router.submit(request("a-1", bank.Deposit(amount=2)))).version == 2
    finally:
        await router.close()


async def test_one_scan_at_the_cap_evicts_a_share_of_the_cap() -> None:
    # The walk over every worker is paid once per many new aggregates.
    router = router_over(MemoryStore(), max_workers=64)
    try:
        await asyncio.gather(*(router.submit(request(f"a-{n}", bank.OpenAccount(owner="ann"))) for n in range(64)))
        await router.submit(request("new", bank.OpenAccount(owner="bob")))
        assert router.live_workers == 64 - 64 // 16 + 1
    finally:
        await router.close()


async def test_at_the_cap_with_every_worker_busy_a_new_aggregate_is_refused_until_one_is_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = HeldAppends()
    router = router_over(store, max_workers=3)
    gates = {name: asyncio.Event() for name in ("a-0", "a-1", "a-2")}
    store.held.update(gates)
    try:
        busy = [asyncio.ensure_future(router.submit(request(n, bank.OpenAccount(owner="ann")))) for n in gates]
        await eventually(lambda: router.live_workers == 3 and all(w.busy for w in router._workers.values()))
        with pytest.raises(Overloaded) as raised:
            await router.submit(request("a-3", bank.OpenAccount(owner="cy")))
        assert raised.value.reason == "TOO_MANY_AGGREGATES"
        assert "all 3 live aggregates (--max-workers) are busy" in str(raised.value)
        # Refused again without walking the workers again: none went idle.
        looked = 0
        evictable = AggregateWorker.evictable

        def counted(worker: AggregateWorker) -> bool:
            nonlocal looked
            looked += 1
            return bool(evictable.__get__(worker))

        monkeypatch.setattr(AggregateWorker, "evictable", property(counted))
        with pytest.raises(Overloaded):
            await router.submit(request("a-3", bank.OpenAccount(owner="cy")))
        assert looked == 0
        # One finishes and goes idle: it makes room for the newcomer.
        gates["a-1"].set()
        assert (await busy[1]).version == 1
        assert (await router.submit(request("a-3", bank.OpenAccount(owner="cy")))).version == 1
        assert sorted(router._workers) == ["a-0", "a-2", "a-3"]
        assert not busy[0].done() and not busy[2].done()
        for gate in gates.values():
            gate.set()
        assert [(await call).version for call in busy] == [1, 1, 1]
    finally:
        for gate in gates.values():
            gate.set()
        await router.close()


async def test_an_idle_worker_still_saving_its_snapshot_is_not_evicted_at_the_cap() -> None:
    # Its successor would save without waiting for that save (saves of one
    # aggregate must run one at a time, see worker.py).
    store = HeldSnapshots()
    router = router_over(store, max_workers=1, snapshots=SnapshotPolicy())  # bank_account snapshots every 100
    try:
        await router.submit(request("a-0", bank.OpenAccount(owner="ann")))
        for _ in range(99):
            await router.submit(request("a-0", bank.Deposit(amount=1)))
        await eventually(lambda: store.saving == 1, what="the snapshot at version 100 being saved")
        with pytest.raises(Overloaded) as raised:
            await router.submit(request("a-1", bank.OpenAccount(owner="bob")))
        assert raised.value.reason == "TOO_MANY_AGGREGATES"
        store.release.set()
        await eventually(lambda: router._workers["a-0"].evictable, what="the save finished")
        # Its save done, it makes room (no command went idle meanwhile: the router looks again).
        assert (await router.submit(request("a-1", bank.OpenAccount(owner="bob")))).version == 1
        assert list(router._workers) == ["a-1"]
    finally:
        store.release.set()
        await router.close()


async def test_the_idle_sweep_keeps_a_worker_still_saving_its_snapshot() -> None:
    # As at the cap: a worker made for the aggregate after this one left
    # would save without waiting for that save.
    store = HeldSnapshots()
    router = router_over(store, max_workers=10, snapshots=SnapshotPolicy())  # bank_account snapshots every 100
    try:
        await router.submit(request("a-0", bank.OpenAccount(owner="ann")))
        for _ in range(99):
            await router.submit(request("a-0", bank.Deposit(amount=1)))
        await eventually(lambda: store.saving == 1, what="the snapshot at version 100 being saved")
        now = asyncio.get_running_loop().time()
        assert router.drop_idle(now + 3600) == 0  # idle long enough, but saving
        store.release.set()
        await eventually(lambda: router._workers["a-0"].evictable, what="the save finished")
        assert router.drop_idle(now + 3600) == 1
    finally:
        store.release.set()
        await router.close()
