"""Loading an aggregate's past from the nearest snapshot below it."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.errors import AggregateNotFound, VersionNotReached
from service.plugins.registry import Registry
from service.processing.commands import CommandRequest
from service.processing.executor import CommandExecutor
from service.processing.history import History
from service.processing.router import Router
from service.processing.state import AggregateLoader
from service.store.base import Store
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
