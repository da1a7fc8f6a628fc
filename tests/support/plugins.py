"""Plugins that exist only to test the machinery around handlers."""

from __future__ import annotations

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins import CommandContext, Plugin

FAIL_AMOUNT = 13

faulty = Plugin("faulty")
wallet = faulty.aggregate("Wallet", state=bank.Account)


@wallet.command(bank.Deposit)
def deposit(command: bank.Deposit, state: bank.Account, context: CommandContext) -> bank.MoneyDeposited:
    if command.amount == FAIL_AMOUNT:
        raise RuntimeError("unlucky number")
    return bank.MoneyDeposited(amount=command.amount)


@wallet.command(bank.Withdraw)
def withdraw_returns_a_foreign_message(
    command: bank.Withdraw, state: bank.Account, context: CommandContext
) -> bank.Account:
    return bank.Account(owner="not an event")


@wallet.apply(bank.MoneyDeposited)
def deposited(state: bank.Account, event: bank.MoneyDeposited) -> None:
    state.balance += event.amount
