"""Errors classify themselves: a plugin's own subclass of a refusal is
recorded, replayed and cached exactly like its parent, whatever its name."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf.message import Message

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service import errors
from service.api.status import status_code
from service.plugins import CommandContext, NotFoundError, Plugin, ValidationError
from service.plugins.registry import Registry
from service.processing.commands import CommandRequest
from service.processing.executor import CommandExecutor
from service.processing.router import Router
from service.store.base import Store
from service.store.memory import MemoryStore


class SafeLocked(ValidationError):
    """A plugin's own refusal, named as the plugin likes."""


class SafeMissing(NotFoundError):
    """A plugin's own NOT_FOUND."""


safes = Plugin("safes")
safe = safes.aggregate("Safe", state=bank.Account)


@safe.command(bank.OpenAccount)
def open_safe(command: bank.OpenAccount, state: bank.Account, context: CommandContext) -> bank.AccountOpened:
    return bank.AccountOpened(owner=command.owner)


@safe.command(bank.Deposit)
def deposit(command: bank.Deposit, state: bank.Account, context: CommandContext) -> bank.MoneyDeposited:
    if context.is_new:
        raise SafeMissing("no such safe", reason="SAFE_MISSING")
    return bank.MoneyDeposited(amount=command.amount)


@safe.command(bank.Withdraw)
def withdraw(command: bank.Withdraw, state: bank.Account, context: CommandContext) -> bank.MoneyWithdrawn:
    if command.amount > state.balance:
        raise SafeLocked(f"the safe holds {state.balance}", reason="SAFE_LOCKED")
    return bank.MoneyWithdrawn(amount=command.amount)


@safe.apply(bank.AccountOpened)
def _opened(state: bank.Account, event: bank.AccountOpened) -> None:
    state.owner = event.owner


@safe.apply(bank.MoneyDeposited)
def _deposited(state: bank.Account, event: bank.MoneyDeposited) -> None:
    state.balance += event.amount


@safe.apply(bank.MoneyWithdrawn)
def _withdrawn(state: bank.Account, event: bank.MoneyWithdrawn) -> None:
    state.balance -= event.amount


REGISTRY = Registry([safes])


def command(aggregate_id: str, message: Message, command_id: str | None = None) -> CommandRequest:
    spec = REGISTRY.command(message.DESCRIPTOR.full_name)
    assert spec is not None
    return CommandRequest(
        command_id=command_id or str(uuid.uuid4()), aggregate_id=aggregate_id, spec=spec, message=message
    )


@pytest.fixture
async def router() -> Router:
    return Router(CommandExecutor(Store.of(MemoryStore()), REGISTRY))


async def test_a_plugin_subclass_refusal_is_replayed_even_when_the_command_would_now_succeed(router: Router) -> None:
    await router.submit(command("s-1", bank.OpenAccount(owner="ann")))
    withdrawal = command("s-1", bank.Withdraw(amount=50))
    with pytest.raises(SafeLocked):
        await router.submit(withdrawal)
    await router.submit(command("s-1", bank.Deposit(amount=100)))

    with pytest.raises(errors.ValidationError) as again:
        await router.submit(withdrawal)  # the same command id, retried

    assert again.value.reason == "SAFE_LOCKED"
    assert again.value.message == "the safe holds 0"
    assert (await router.submit(command("s-1", bank.Deposit(amount=1)))).version == 3  # the withdrawal appended nothing


async def test_a_replayed_subclass_refusal_keeps_its_parents_status_code(router: Router) -> None:
    deposit_first = command("s-2", bank.Deposit(amount=5))
    with pytest.raises(SafeMissing) as first:
        await router.submit(deposit_first)
    await router.submit(command("s-2", bank.OpenAccount(owner="bob")))

    with pytest.raises(errors.NotFoundError) as replayed:
        await router.submit(deposit_first)

    assert status_code(first.value) == status_code(replayed.value) == grpc.StatusCode.NOT_FOUND
    assert replayed.value.reason == "SAFE_MISSING"


def test_a_recorded_refusal_is_stored_under_its_nearest_own_class() -> None:
    assert errors.record_kind(SafeLocked("x")) == "ValidationError"
    assert errors.record_kind(SafeMissing("x")) == "NotFoundError"
    assert errors.record_kind(errors.WrongExpectedVersion("a", 1, 2)) == "WrongExpectedVersion"


@pytest.mark.parametrize(
    ("error", "recorded", "keeps_cache"),
    [
        (SafeLocked("x"), True, True),
        (errors.WrongExpectedVersion("a", 1, 2), True, True),
        (errors.ConcurrencyConflict("a", 1), False, False),
        (errors.HandlerFailed("boom"), False, False),
        (errors.Overloaded("busy"), False, False),
        (errors.AggregateTypeMismatch("a", "X", "Y"), False, False),
    ],
)
def test_errors_say_whether_they_are_recorded_and_keep_the_cache(
    error: errors.ChronicleError, recorded: bool, keeps_cache: bool
) -> None:
    assert errors.recorded_with_command(error) is recorded
    assert error.keeps_cache is keeps_cache


def test_command_already_recorded_belongs_to_the_error_tree() -> None:
    assert issubclass(errors.CommandAlreadyRecorded, errors.ChronicleError)
