"""The purse plugin's first version (``tests.support.purse``)."""

from __future__ import annotations

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins import CommandContext, Documents, Plugin, ProjectedEvent
from tests.support.purse import PURSE, TOTALS

plugin = Plugin("purse")
purse = plugin.aggregate(PURSE, state=bank.Account)


@purse.command(bank.OpenAccount, creates=True)
def open_purse(command: bank.OpenAccount, state: bank.Account, context: CommandContext) -> bank.AccountOpened:
    return bank.AccountOpened(owner=command.owner)


@purse.command(bank.Deposit)
def deposit_units(command: bank.Deposit, state: bank.Account, context: CommandContext) -> bank.MoneyDeposited:
    return bank.MoneyDeposited(amount=command.amount)


@purse.apply(bank.AccountOpened)
def _opened(state: bank.Account, event: bank.AccountOpened) -> None:
    state.owner = event.owner


@purse.apply(bank.MoneyDeposited)
def _deposited_units(state: bank.Account, event: bank.MoneyDeposited) -> None:
    state.balance += event.amount * 100


totals = plugin.projection(TOTALS, aggregate_types=[PURSE])


@totals.on(bank.MoneyDeposited)
def _total_units(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Documents) -> None:
    balance = documents.get(envelope.aggregate_id, bank.AccountBalance) or bank.AccountBalance()
    balance.balance += event.amount * 100
    documents.put(envelope.aggregate_id, balance)
