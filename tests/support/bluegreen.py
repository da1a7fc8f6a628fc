"""One read model in two versions, for a blue/green change of its logic
(docs/plugins.md, "Changing a projection's logic"): ``blue`` declares
version 1 (deposits summed in units), ``both`` declares version 1 and its
successor version 2 (the same deposits in cents) side by side, ``green``
version 2 alone. Served with the bank's plugin, which owns the events."""

from __future__ import annotations

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins import Documents, Plugin, ProjectedEvent

V1 = "deposits.total"
V2 = "deposits.total.v2"
KEY = "total"


def _units(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Documents) -> None:
    total = documents.get(KEY, bank.AccountBalance) or bank.AccountBalance()
    total.balance += event.amount
    documents.put(KEY, total)


def _cents(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Documents) -> None:
    total = documents.get(KEY, bank.AccountBalance) or bank.AccountBalance()
    total.balance += event.amount * 100
    documents.put(KEY, total)


def _plugin(name: str, *, v1: bool, v2: bool) -> Plugin:
    plugin = Plugin(name)
    if v1:
        plugin.projection(V1, aggregate_types=["Account"]).on(bank.MoneyDeposited)(_units)
    if v2:
        plugin.projection(V2, aggregate_types=["Account"]).on(bank.MoneyDeposited)(_cents)
    return plugin


blue = _plugin("blue", v1=True, v2=False)
both = _plugin("both", v1=True, v2=True)
green = _plugin("green", v1=False, v2=True)
