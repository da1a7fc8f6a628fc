"""The bank account aggregate: handlers decide, apply functions record."""

from __future__ import annotations

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins import (
    CommandContext,
    InvalidArgumentError,
    Plugin,
    ValidationError,
)

plugin = Plugin("bank_account", description="Bank accounts: the example every test and client may rely on.")
account = plugin.aggregate(
    "Account",
    state=bank.Account,
    snapshot_every=100,
    not_found="ACCOUNT_NOT_FOUND",
    already_exists="ACCOUNT_ALREADY_OPEN",
)

# The most an account may hold. Balances are int64: without a limit a deposit
# could be accepted whose event no apply function can apply (the account
# would answer every later command with an internal error), and the owners'
# sums in the read model would overflow long before that.
MAX_BALANCE = 10**15


def _require_open(state: bank.Account, context: CommandContext) -> None:
    if state.closed:
        raise ValidationError(f"account {context.aggregate_id!r} is closed", reason="ACCOUNT_CLOSED")


def _require_positive(amount: int) -> None:
    if amount <= 0:
        raise InvalidArgumentError(f"amount must be positive, got {amount}", reason="INVALID_AMOUNT", field="amount")


@account.command(bank.OpenAccount, creates=True)
def open_account(command: bank.OpenAccount, state: bank.Account, context: CommandContext) -> bank.AccountOpened:
    if not command.owner.strip():
        raise InvalidArgumentError("owner must not be empty", reason="OWNER_REQUIRED", field="owner")
    return bank.AccountOpened(owner=command.owner)


@account.command(bank.Deposit, requires_existing=True)
def deposit(command: bank.Deposit, state: bank.Account, context: CommandContext) -> bank.MoneyDeposited:
    _require_positive(command.amount)
    _require_open(state, context)
    if command.amount > MAX_BALANCE - state.balance:
        raise ValidationError(
            f"cannot deposit {command.amount}: the balance {state.balance} would exceed {MAX_BALANCE}",
            reason="BALANCE_LIMIT",
            metadata={"balance": str(state.balance), "amount": str(command.amount), "limit": str(MAX_BALANCE)},
        )
    return bank.MoneyDeposited(amount=command.amount)


@account.command(bank.Withdraw, requires_existing=True)
def withdraw(command: bank.Withdraw, state: bank.Account, context: CommandContext) -> bank.MoneyWithdrawn:
    _require_positive(command.amount)
    _require_open(state, context)
    if command.amount > state.balance:
        raise ValidationError(
            f"cannot withdraw {command.amount}: the balance is {state.balance}",
            reason="INSUFFICIENT_FUNDS",
            metadata={"balance": str(state.balance), "amount": str(command.amount)},
        )
    return bank.MoneyWithdrawn(amount=command.amount)


@account.command(bank.CloseAccount, requires_existing=True)
def close_account(command: bank.CloseAccount, state: bank.Account, context: CommandContext) -> bank.AccountClosed:
    _require_open(state, context)
    if state.balance > 0:
        # Closed, the account would accept no withdrawal: the money would be stuck in it.
        raise ValidationError(
            f"cannot close account {context.aggregate_id!r}: it holds {state.balance}; withdraw it first",
            reason="ACCOUNT_NOT_EMPTY",
            metadata={"balance": str(state.balance)},
        )
    return bank.AccountClosed()


@account.apply(bank.AccountOpened)
def _opened(state: bank.Account, event: bank.AccountOpened) -> None:
    state.owner = event.owner


@account.apply(bank.MoneyDeposited)
def _deposited(state: bank.Account, event: bank.MoneyDeposited) -> None:
    state.balance += event.amount


@account.apply(bank.MoneyWithdrawn)
def _withdrawn(state: bank.Account, event: bank.MoneyWithdrawn) -> None:
    state.balance -= event.amount


@account.apply(bank.AccountClosed)
def _closed(state: bank.Account, event: bank.AccountClosed) -> None:
    state.closed = True
