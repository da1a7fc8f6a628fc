"""Independent commands queued for one aggregate run as a series: decided in
order on the state each leaves, appended in one transaction, each with its
own outcome."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from google.protobuf.message import Message

from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.errors import HandlerFailed, ValidationError
from service.plugins.registry import Registry
from service.processing.commands import CommandRequest
from service.processing.executor import CommandExecutor
from service.processing.router import Router
from service.store.base import Store
from service.store.memory import MemoryStore
from service.store.records import CommandRecord, NewEvent, RecordedEvent
from tests.support import plugins

REGISTRY = Registry([bank_account.plugin])


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.appends = 0

    async def append(
        self,
        aggregate_id: str,
        events: Sequence[NewEvent],
        expected_version: int,
        *,
        commands: Sequence[CommandRecord] = (),
        **options: Any,
    ) -> list[RecordedEvent]:
        self.appends += 1
        return await super().append(aggregate_id, events, expected_version, commands=commands, **options)


def request(
    message: Message, *, aggregate_id: str = "acc-1", command_id: str | None = None, **fields: Any
) -> CommandRequest:
    spec = REGISTRY.command(message.DESCRIPTOR.full_name)
    assert spec is not None
    return CommandRequest(
        command_id=command_id or str(uuid.uuid4()), aggregate_id=aggregate_id, spec=spec, message=message, **fields
    )


async def opened(store: MemoryStore, router: Router, balance: int = 0) -> None:
    await router.submit(request(bank.OpenAccount(owner="ann")))
    if balance:
        await router.submit(request(bank.Deposit(amount=balance)))


async def test_commands_that_queue_up_for_one_aggregate_share_one_append() -> None:
    store = CountingStore()
    router = Router(CommandExecutor(Store.of(store), REGISTRY))
    await opened(store, router)
    store.appends = 0
    results = await asyncio.gather(*(router.submit(request(bank.Deposit(amount=i + 1))) for i in range(50)))
    assert [r.version for r in results] == list(range(2, 52))  # in the order sent
    assert store.appends < 10  # the first alone, the rest in series
    assert [e.version for e in await store.read_aggregate("acc-1")] == list(range(1, 52))
    await router.close()


async def test_a_refusal_in_a_series_is_recorded_and_the_others_go_on() -> None:
    store = CountingStore()
    router = Router(CommandExecutor(Store.of(store), REGISTRY))
    await opened(store, router, balance=10)
    refused = request(bank.Withdraw(amount=10))
    outcomes = await asyncio.gather(
        router.submit(request(bank.Withdraw(amount=5))),
        router.submit(refused),
        router.submit(request(bank.Deposit(amount=3))),
        return_exceptions=True,
    )
    first, second, third = outcomes
    assert not isinstance(first, BaseException) and first.version == 3
    assert isinstance(second, ValidationError) and second.reason == "INSUFFICIENT_FUNDS"
    assert second.metadata["balance"] == "5"  # decided on the state the first one left
    assert not isinstance(third, BaseException) and third.version == 4
    record = await store.find_command(refused.command_id)
    assert record is not None and record.rejection is not None
    with pytest.raises(ValidationError):  # refused again the same way on retry
        await router.submit(refused)
    await router.close()


async def test_a_command_id_seen_before_in_a_series_is_replayed() -> None:
    store = CountingStore()
    router = Router(CommandExecutor(Store.of(store), REGISTRY))
    await opened(store, router)
    done = request(bank.Deposit(amount=7))
    first = await router.submit(done)
    again, fresh = await asyncio.gather(router.submit(done), router.submit(request(bank.Deposit(amount=1))))
    assert again.replayed
    assert [e.event_id for e in again.events] == [e.event_id for e in first.events]
    assert fresh.version == 3
    await router.close()


async def test_expected_versions_hold_within_a_series() -> None:
    store = CountingStore()
    router = Router(CommandExecutor(Store.of(store), REGISTRY))
    await opened(store, router)
    results = await asyncio.gather(
        router.submit(request(bank.Deposit(amount=1), expected_version=1)),
        router.submit(request(bank.Deposit(amount=1), expected_version=2)),
        router.submit(request(bank.Deposit(amount=1), expected_version=2)),
        return_exceptions=True,
    )
    assert [getattr(r, "version", None) for r in results[:2]] == [2, 3]
    assert getattr(results[2], "reason", "") == "WRONG_EXPECTED_VERSION"
    await router.close()


async def test_a_series_on_a_stale_cache_falls_back_and_every_command_lands() -> None:
    store = CountingStore()
    replica_a, replica_b = (
        Router(CommandExecutor(Store.of(store), REGISTRY)),
        Router(CommandExecutor(Store.of(store), REGISTRY)),
    )
    await opened(store, replica_a)
    await replica_b.submit(request(bank.Deposit(amount=100)))  # a's cache is now behind
    results = await asyncio.gather(*(replica_a.submit(request(bank.Withdraw(amount=10))) for _ in range(5)))
    assert [r.version for r in results] == [3, 4, 5, 6, 7]
    await replica_a.close()
    await replica_b.close()


async def test_a_failing_handler_in_a_series_fails_alone() -> None:
    registry = Registry([plugins.faulty])
    store = CountingStore()
    router = Router(CommandExecutor(Store.of(store), registry))

    def faulty(amount: int) -> CommandRequest:
        spec = registry.command("bank.v1.Deposit")
        assert spec is not None
        return CommandRequest(
            command_id=str(uuid.uuid4()), aggregate_id="w-1", spec=spec, message=bank.Deposit(amount=amount)
        )

    await router.submit(faulty(1))
    outcomes = await asyncio.gather(
        router.submit(faulty(2)),
        router.submit(faulty(plugins.FAIL_AMOUNT)),
        router.submit(faulty(3)),
        return_exceptions=True,
    )
    assert [getattr(o, "version", None) for o in (outcomes[0], outcomes[2])] == [2, 3]
    assert isinstance(outcomes[1], HandlerFailed)
    assert [e.version for e in await store.read_aggregate("w-1")] == [1, 2, 3]
    await router.close()
