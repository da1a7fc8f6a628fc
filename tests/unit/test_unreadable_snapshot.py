"""A snapshot is a cache: one whose state does not parse as the plugin's
state type is skipped with a warning, and the aggregate's state rebuilt
from all its events (as of the version asked for), instead of failing every
load of the aggregate."""

from __future__ import annotations

import logging
import time
import uuid

import pytest

from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins.registry import Registry
from service.processing.state import AggregateLoader
from service.store.base import Store
from service.store.memory import MemoryStore
from service.store.records import NewEvent, Snapshot

REGISTRY = Registry([bank_account.plugin])
ACCOUNT = REGISTRY.aggregate("Account")


def event(message: bank.AccountOpened | bank.MoneyDeposited) -> NewEvent:
    return NewEvent(
        event_id=str(uuid.uuid4()),
        aggregate_type="Account",
        event_type=message.DESCRIPTOR.full_name,
        schema_version=1,
        payload=message.SerializeToString(),
        timestamp_us=time.time_ns() // 1000,
    )


async def test_an_unreadable_snapshot_is_skipped_and_the_state_rebuilt_from_the_events(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert ACCOUNT is not None
    store = MemoryStore()
    opened = [event(bank.AccountOpened(owner="ann")), event(bank.MoneyDeposited(amount=10))]
    await store.append("acc-1", opened, 0)
    await store.append("acc-1", [event(bank.MoneyDeposited(amount=5))], 2)
    await store.save_snapshot(Snapshot("acc-1", "Account", 2, ACCOUNT.snapshot_state_type, 1, b"\x0a\x05ab"))
    loader = AggregateLoader(Store.of(store), REGISTRY)

    with caplog.at_level(logging.WARNING, logger="service.processing.state"):
        loaded = await loader.load("acc-1", ACCOUNT)
    assert loaded.version == 3
    assert loaded.state == bank.Account(owner="ann", balance=15)
    assert "does not parse as bank.v1.Account" in caplog.text and "acc-1" in caplog.text

    at_two = await loader.load("acc-1", ACCOUNT, to_version=2)
    assert (at_two.version, at_two.state) == (2, bank.Account(owner="ann", balance=10))


async def test_a_readable_snapshot_is_still_used() -> None:
    assert ACCOUNT is not None
    store = MemoryStore()
    await store.append("acc-1", [event(bank.AccountOpened(owner="ann"))], 0)
    # A snapshot whose state differs from the events': used, so the events before it were not read.
    state = bank.Account(owner="ann", balance=99).SerializeToString()
    await store.save_snapshot(Snapshot("acc-1", "Account", 1, ACCOUNT.snapshot_state_type, 1, state))
    loaded = await AggregateLoader(Store.of(store), REGISTRY).load("acc-1", ACCOUNT)
    assert (loaded.version, loaded.state.balance) == (1, 99)  # type: ignore[attr-defined]
