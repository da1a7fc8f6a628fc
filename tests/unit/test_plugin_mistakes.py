"""What a plugin's mistakes do to the aggregate they touch: the command is
refused with HANDLER_FAILED (or UNREGISTERED_EVENT), nothing is written, and
the aggregate goes on serving as its events say. A mistake that got through
would break the aggregate for good (a state that is not a message) or
silently (a state changed behind its events, then kept in a snapshot)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from google.protobuf.message import Message

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.errors import HandlerFailed
from service.plugins import CommandContext, Plugin
from service.plugins.registry import Registry
from service.processing.commands import CommandRequest
from service.processing.executor import CommandExecutor
from service.processing.router import Router
from service.processing.snapshots import SnapshotPolicy
from service.store.base import Store
from service.store.memory import MemoryStore
from service.store.records import NewEvent
from service.testing import Scenario
from tests.support.contents import contents

RETURNS_TEXT = "apply returns text"
RAISES = "apply raises"

mistakes = Plugin("mistakes")
slate = mistakes.aggregate("Slate", state=bank.Account)


@slate.command(bank.OpenAccount)
def open_slate(command: bank.OpenAccount, state: bank.Account, context: CommandContext) -> bank.AccountOpened:
    return bank.AccountOpened(owner=command.owner)


@slate.command(bank.Deposit)
def deposit_and_scribble(command: bank.Deposit, state: bank.Account, context: CommandContext) -> bank.MoneyDeposited:
    if command.amount == 1:
        state.balance += 100  # the mistake: a handler changes the state it was given
    if command.amount == 2:
        state.owner = "scribbled"
        raise RuntimeError("and fails too")
    return bank.MoneyDeposited(amount=command.amount)


@slate.command(bank.Withdraw)
def withdraw_returns_a_number(command: bank.Withdraw, state: bank.Account, context: CommandContext) -> Any:
    return 42


@slate.command(bank.CloseAccount)
def close_if_the_other_exists(
    command: bank.CloseAccount, state: bank.Account, context: CommandContext
) -> bank.AccountClosed | None:
    try:
        found = context.exists("Slate", "s-other")
    except BaseException:  # the mistake: this catches the lookup too
        found = False
    return bank.AccountClosed() if found else None


@slate.apply(bank.AccountClosed)
def closed(state: bank.Account, event: bank.AccountClosed) -> None:
    state.closed = True


@slate.apply(bank.AccountOpened)
def opened(state: bank.Account, event: bank.AccountOpened) -> Any:
    if event.owner == RETURNS_TEXT:
        return "not a state"
    if event.owner == RAISES:
        raise KeyError("owner")
    state.owner = event.owner
    return None


@slate.apply(bank.MoneyDeposited)
def deposited(state: bank.Account, event: bank.MoneyDeposited) -> None:
    state.balance += event.amount


REGISTRY = Registry([mistakes])


def request(aggregate_id: str, message: Message) -> CommandRequest:
    spec = REGISTRY.command(message.DESCRIPTOR.full_name)
    assert spec is not None
    return CommandRequest(command_id=str(uuid.uuid4()), aggregate_id=aggregate_id, spec=spec, message=message)


def router_over(store: MemoryStore, *, snapshot_every: int = 100) -> Router:
    return Router(CommandExecutor(Store.of(store), REGISTRY, snapshots=SnapshotPolicy(default_every=snapshot_every)))


async def test_an_apply_function_returning_what_is_not_a_state_is_refused_before_anything_is_written() -> None:
    store = MemoryStore()
    router = router_over(store)
    before = await contents(store)
    with pytest.raises(HandlerFailed) as raised:
        await router.submit(request("s-1", bank.OpenAccount(owner=RETURNS_TEXT)))
    assert raised.value.reason == "HANDLER_FAILED"
    assert "returned str" in str(raised.value) and "bank.v1.Account" in str(raised.value)
    assert raised.value.metadata["event_type"] == "bank.v1.AccountOpened"
    assert (await contents(store)).changes_since(before) == {}
    opened_then = await router.submit(request("s-1", bank.OpenAccount(owner="ann")))
    deposited_then = await router.submit(request("s-1", bank.Deposit(amount=5)))
    assert (opened_then.version, deposited_then.version) == (1, 2)
    await router.close()


async def test_a_handler_that_changes_its_state_is_refused_and_the_state_stays_what_the_events_say() -> None:
    store = MemoryStore()
    router = router_over(store, snapshot_every=3)
    await router.submit(request("s-1", bank.OpenAccount(owner="ann")))
    await router.submit(request("s-1", bank.Deposit(amount=10)))
    before = await contents(store)
    for scribble in (1, 2):  # changes it and returns an event; changes it and raises
        with pytest.raises(HandlerFailed) as raised:
            await router.submit(request("s-1", bank.Deposit(amount=scribble)))
        assert raised.value.reason == "STATE_CHANGED_BY_HANDLER"
    assert (await contents(store)).changes_since(before) == {}
    third = await router.submit(request("s-1", bank.Deposit(amount=5)))  # a snapshot is due at version 3
    assert third.version == 3
    await router.close()
    snapshot = await store.load_snapshot("s-1")
    assert snapshot is not None and snapshot.version == 3
    assert bank.Account.FromString(snapshot.state) == bank.Account(owner="ann", balance=15)


def test_a_scenario_catches_a_handler_that_changes_its_state() -> None:
    scenario = Scenario(mistakes).given(bank.AccountOpened(owner="ann")).when(bank.Deposit(amount=1))
    scenario.then_fails(HandlerFailed, reason="STATE_CHANGED_BY_HANDLER")


async def test_a_handler_returning_a_number_is_refused_as_returning_no_event() -> None:
    store = MemoryStore()
    router = router_over(store)
    await router.submit(request("s-1", bank.OpenAccount(owner="ann")))
    before = await contents(store)
    with pytest.raises(HandlerFailed) as raised:
        await router.submit(request("s-1", bank.Withdraw(amount=1)))
    assert raised.value.reason == "UNREGISTERED_EVENT"
    assert "returned int" in str(raised.value)
    assert (await contents(store)).changes_since(before) == {}
    await router.close()


async def test_a_stored_event_its_apply_function_cannot_take_names_the_aggregate_and_the_event() -> None:
    store = MemoryStore()
    stored = NewEvent(
        event_id=str(uuid.uuid4()),
        aggregate_type="Slate",
        event_type="bank.v1.AccountOpened",
        schema_version=1,
        payload=bank.AccountOpened(owner=RAISES).SerializeToString(),
        timestamp_us=1,
    )
    await store.append("s-9", [stored], 0)
    router = router_over(store)
    with pytest.raises(HandlerFailed) as raised:
        await router.submit(request("s-9", bank.Deposit(amount=5)))
    assert raised.value.reason == "HANDLER_FAILED"
    assert raised.value.metadata == {"aggregate_id": "s-9", "event_type": "bank.v1.AccountOpened"}
    assert "KeyError" in str(raised.value)
    await router.close()


async def test_a_handler_that_catches_its_lookup_still_decides_with_the_answer() -> None:
    store = MemoryStore()
    router = router_over(store)
    await router.submit(request("s-other", bank.OpenAccount(owner="bob")))
    await router.submit(request("s-1", bank.OpenAccount(owner="ann")))
    closed = await router.submit(request("s-1", bank.CloseAccount()))
    assert [event.event_type for event in closed.events] == ["bank.v1.AccountClosed"]
    await router.close()
