"""Balances by owner: the bank's example read model.

A projection (``service.plugins``: Projection, Documents, ProjectedEvent): the server applies each
account event once, in log order, and commits the documents together with
its checkpoint. Documents: ``owner:<owner>`` (OwnerBalance) and
``account:<id>`` (AccountBalance, so that a deposit finds its owner). A
deleted account (its tombstone, AggregateDeleted) leaves its owner's
documents; restored, its events come again and it is counted again.

Both hold personal data (the owner's name, balances), so each names the
accounts it is derived from as its subjects: forgetting an account deletes
its ``account:`` document and its owner's ``owner:`` document (which also
summed the owner's other accounts: it starts again from their next event).

The cost of that: each write of an owner's document names every account of
the owner as a subject, so a deposit costs in proportion to how many
accounts its owner has. Right for people with a few accounts each; a read
model summing over thousands of aggregates per key (a tenant's total, say)
keeps the total under a key of its own with no subjects, or derives it in
the query, rather than naming every contributor on every write.
"""

from __future__ import annotations

from domain_plugins.bank_account.domain import plugin
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins import AggregateDeleted, Documents, ProjectedEvent

balances_by_owner = plugin.projection("bank.balances_by_owner", aggregate_types=["Account"])


def owner_key(owner: str) -> str:
    return f"owner:{owner}"


def account_key(account_id: str) -> str:
    return f"account:{account_id}"


@balances_by_owner.on(bank.AccountOpened)
def _opened(event: bank.AccountOpened, envelope: ProjectedEvent, documents: Documents) -> None:
    account_id = envelope.aggregate_id
    documents.put(account_key(account_id), bank.AccountBalance(owner=event.owner), subject=account_id)
    holder = documents.get(owner_key(event.owner), bank.OwnerBalance) or bank.OwnerBalance(owner=event.owner)
    holder.account_ids.append(account_id)
    documents.put(owner_key(event.owner), holder, subject=holder.account_ids)


def _move(account_id: str, amount: int, documents: Documents) -> None:
    account = documents.get(account_key(account_id), bank.AccountBalance)
    if account is None:
        return  # opened before this projection knew of it: cannot happen from position 0
    account.balance += amount
    documents.put(account_key(account_id), account, subject=account_id)
    holder = documents.get(owner_key(account.owner), bank.OwnerBalance)
    if holder is None:  # deleted when another of the owner's accounts was forgotten
        holder = bank.OwnerBalance(owner=account.owner, account_ids=[account_id])
    holder.balance += amount
    documents.put(owner_key(account.owner), holder, subject=holder.account_ids)


@balances_by_owner.on(bank.MoneyDeposited)
def _deposited(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Documents) -> None:
    _move(envelope.aggregate_id, event.amount, documents)


@balances_by_owner.on(bank.MoneyWithdrawn)
def _withdrawn(event: bank.MoneyWithdrawn, envelope: ProjectedEvent, documents: Documents) -> None:
    _move(envelope.aggregate_id, -event.amount, documents)


@balances_by_owner.on(AggregateDeleted)
def _deleted(event: AggregateDeleted, envelope: ProjectedEvent, documents: Documents) -> None:
    account = documents.get(account_key(envelope.aggregate_id), bank.AccountBalance)
    if account is None:
        return
    documents.delete(account_key(envelope.aggregate_id))
    holder = documents.get(owner_key(account.owner), bank.OwnerBalance)
    if holder is None:
        return
    holder.balance -= account.balance
    remaining = [a for a in holder.account_ids if a != envelope.aggregate_id]
    del holder.account_ids[:]
    holder.account_ids.extend(remaining)
    if remaining:
        documents.put(owner_key(account.owner), holder, subject=holder.account_ids)
    else:
        documents.delete(owner_key(account.owner))
