"""The purse plugin's second version (``tests.support.purse``): deposits
in cents, and OpenAccount renamed."""

from __future__ import annotations

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins import CommandContext, Documents, OldEvent, Plugin, ProjectedEvent
from tests.support.purse import PURSE, TOTALS

plugin = Plugin("purse")
purse = plugin.aggregate(PURSE, state=bank.Account)


@purse.command(bank.RecordRefund, creates=True)
def open_purse(command: bank.RecordRefund, state: bank.Account, context: CommandContext) -> bank.AccountOpened:
    return bank.AccountOpened(owner=command.reason)


@purse.command(bank.Deposit)
def deposit_cents(command: bank.Deposit, state: bank.Account, context: CommandContext) -> bank.MoneyDeposited:
    return bank.MoneyDeposited(amount=command.amount)


@purse.apply(bank.AccountOpened)
def _opened(state: bank.Account, event: bank.AccountOpened) -> None:
    state.owner = event.owner


@purse.apply(bank.MoneyDeposited, schema_version=2)
def _deposited_cents(state: bank.Account, event: bank.MoneyDeposited) -> None:
    state.balance += event.amount


@purse.upcast(bank.MoneyDeposited, from_version=1)
def _units_to_cents(old: OldEvent) -> bank.MoneyDeposited:
    return bank.MoneyDeposited(amount=old.parse(bank.MoneyDeposited).amount * 100)


totals = plugin.projection(TOTALS, aggregate_types=[PURSE])


@totals.on(bank.MoneyDeposited)
def _total_cents(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Documents) -> None:
    balance = documents.get(envelope.aggregate_id, bank.AccountBalance) or bank.AccountBalance()
    balance.balance += event.amount
    documents.put(envelope.aggregate_id, balance)
