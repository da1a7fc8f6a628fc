"""Loading an aggregate's past from the nearest snapshot below it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.errors import AggregateNotFound, VersionNotReached
from service.plugins.registry import Registry
from service.processing.commands import CommandRequest
from service.processing.executor import CommandExecutor
from service.processing.history import EventRange, History
from service.processing.router import Router
from service.processing.state import AggregateLoader
from service.store.base import AggregateQuery, Store
from service.store.memory import MemoryStore
from tests.support.instrumented import ObservedStore

REGISTRY = Registry([bank_account.plugin])  # snapshots every 100 events


def deposit(amount: int) -> CommandRequest:
    spec = REGISTRY.command("bank.v1.Deposit")
    assert spec is not None
    return CommandRequest(str(uuid.uuid4()), "acc-1", spec, bank.Deposit(amount=amount))


async def two_hundred_fifty_events(store: MemoryStore) -> tuple[History, Any]:
    """acc-1 opened, then 249 deposits of 1, 2, 3, …: snapshots at 100 and 200."""
    observed: Any = ObservedStore(store)
    router = Router(CommandExecutor(Store.of(observed), REGISTRY))
    spec = REGISTRY.command("bank.v1.OpenAccount")
    assert spec is not None
    await router.submit(CommandRequest(str(uuid.uuid4()), "acc-1", spec, bank.OpenAccount(owner="ann")))
    for amount in range(1, 250):
        await router.submit(deposit(amount))
    await router.close()
    return History(observed, AggregateLoader(Store.of(observed), REGISTRY)), observed


@pytest.fixture
async def history() -> tuple[History, Any]:
    return await two_hundred_fifty_events(MemoryStore())


def balance_at(version: int) -> int:
    return sum(range(1, version))  # version 1 opened the account, version n deposited n - 1


@pytest.mark.parametrize(("version", "events_read"), [(150, 50), (200, 0), (250, 50), (99, 99)])
async def test_a_past_version_loads_from_the_nearest_snapshot_below_it(
    history: tuple[History, Any], version: int, events_read: int
) -> None:
    reader, store = history
    store.events_read = 0
    aggregate = await reader.state("acc-1", at_version=version)
    assert (aggregate.version, aggregate.state) == (version, bank.Account(owner="ann", balance=balance_at(version)))
    assert store.events_read == events_read


async def test_a_version_not_reached_is_refused_with_the_current_version(history: tuple[History, Any]) -> None:
    reader, _ = history
    with pytest.raises(VersionNotReached) as raised:
        await reader.state("acc-1", at_version=251)
    assert raised.value.metadata["current_version"] == "250"


async def test_a_moment_before_the_first_event_is_not_found(history: tuple[History, Any]) -> None:
    reader, _ = history
    with pytest.raises(AggregateNotFound):
        await reader.state_at_time("acc-1", 0)


async def test_a_version_older_than_every_kept_snapshot_is_replayed_from_the_first_event() -> None:
    reader, store = await two_hundred_fifty_events(MemoryStore(keep_snapshots=1))  # 200 kept, 100 pruned
    for version, events_read in ((150, 150), (250, 50)):
        store.events_read = 0
        aggregate = await reader.state("acc-1", at_version=version)
        assert aggregate.state == bank.Account(owner="ann", balance=balance_at(version))
        assert store.events_read == events_read


class CountedReads:
    """The store's ``read_aggregate``, counting the reads started."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.started = 0

    def read_aggregate(self, aggregate_id: str, query: AggregateQuery) -> Any:
        self.started += 1
        return self._store.read_aggregate(aggregate_id, query)


async def twelve_hundred_events() -> tuple[History, CountedReads]:
    store = MemoryStore()
    router = Router(CommandExecutor(Store.of(store), REGISTRY))
    spec = REGISTRY.command("bank.v1.OpenAccount")
    assert spec is not None
    await router.submit(CommandRequest(str(uuid.uuid4()), "acc-1", spec, bank.OpenAccount(owner="ann")))
    for _ in range(1199):
        await router.submit(deposit(1))
    await router.close()
    counted = CountedReads(store)
    return History(counted, AggregateLoader(Store.of(store), REGISTRY)), counted  # type: ignore[arg-type]


@pytest.mark.parametrize("backwards", [False, True], ids=["forwards", "backwards"])
async def test_the_next_page_of_an_aggregate_is_read_while_this_one_is_sent(backwards: bool) -> None:
    history, reads = await twelve_hundred_events()
    versions: list[int] = []
    started_when_handed = []
    async for page in history.pages("acc-1", EventRange(backwards=backwards)):
        started_when_handed.append(reads.started)
        versions.extend(event.version for event in page)
    # Pages of 500: the second read is under way when the first page is
    # handed over, the third with the second; the last, short, starts none.
    assert started_when_handed == [2, 3, 3]
    assert versions == (list(range(1200, 0, -1)) if backwards else list(range(1, 1201)))


async def test_a_read_that_ends_within_its_page_reads_nothing_ahead() -> None:
    history, reads = await twelve_hundred_events()
    pages = [page async for page in history.pages("acc-1", EventRange(limit=10))]
    assert [event.version for page in pages for event in page] == list(range(1, 11))
    assert reads.started == 1


async def test_a_reader_that_stops_early_leaves_no_read_running() -> None:
    history, reads = await twelve_hundred_events()
    before = asyncio.all_tasks()
    pages = history.pages("acc-1", EventRange())
    assert isinstance(pages, AsyncGenerator)
    first = await anext(pages)
    assert len(first) == 500 and reads.started == 2
    await pages.aclose()  # the client went away after one page
    await asyncio.sleep(0)
    assert all(task.done() for task in asyncio.all_tasks() - before)
