"""Balances by owner: the bank's example read model.

A projection (``service.plugins``: Projection, Documents, ProjectedEvent): the server applies each
account event once, in log order, and commits the documents together with
its checkpoint. Documents: ``owner:<owner>`` (OwnerBalance) and
``account:<id>`` (AccountBalance, so that a deposit finds its owner). A
deleted account (its tombstone, AggregateDeleted) is taken out: its
``account:`` document is deleted, its balance and id are taken off its
owner's document, and that document is deleted with the owner's last
account; restored, its events come again and it is counted again.

Both hold personal data (the owner's name, balances), so each names the
accounts it is derived from as its subjects: forgetting an account deletes
its ``account:`` document and its owner's ``owner:`` document (which also
summed the owner's other accounts). The owner's document is then made
again from its accounts' own documents, which forgetting left alone: each
account adds its whole balance (not the one event's amount) when it is
first counted in the owner's document, at its next event; until then the
document lacks it. So, once each has had an event, it holds what a rebuild
gives (account ids in code point order, whatever order they came in).
An owner whose name makes no key ``GetDocument`` takes (over 194
characters, or not printable) is kept under ``owner-sha256:`` and the
name's SHA-256 (``owner_key``).

The cost of that: each write of an owner's document names every account of
the owner as a subject, so a deposit costs in proportion to how many
accounts its owner has. Right for people with a few accounts each; a read
model summing over thousands of aggregates per key (a tenant's total, say)
keeps the total under a key of its own with no subjects, or derives it in
the query, rather than naming every contributor on every write.
"""

from __future__ import annotations

import bisect
import hashlib

from domain_plugins.bank_account.domain import plugin
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins import AggregateDeleted, Documents, ProjectedEvent
from service.plugins.projections import document_key_problem

balances_by_owner = plugin.projection("bank.balances_by_owner", aggregate_types=["Account"])


def owner_key(owner: str) -> str:
    key = f"owner:{owner}"
    if document_key_problem(key):  # a key no one could read the document by
        return "owner-sha256:" + hashlib.sha256(owner.encode()).hexdigest()
    return key


def _counted(holder: bank.OwnerBalance, account_id: str) -> bool:
    """Whether ``account_id`` is among the accounts ``holder`` sums; if not,
    it is added (in code point order, as a rebuild would list it)."""
    ids = holder.account_ids
    # Looked for in the whole list, not by bisection: a document written
    # before the ids were kept in order lists them as they were opened.
    if account_id in ids:
        return True
    bisect.insort(ids, account_id)  # in place: the field has insert()
    return False


def account_key(account_id: str) -> str:
    return f"account:{account_id}"


@balances_by_owner.on(bank.AccountOpened)
def _opened(event: bank.AccountOpened, envelope: ProjectedEvent, documents: Documents) -> None:
    account_id = envelope.aggregate_id
    documents.put(account_key(account_id), bank.AccountBalance(owner=event.owner), subject=account_id)
    key = owner_key(event.owner)
    holder = documents.get(key, bank.OwnerBalance) or bank.OwnerBalance(owner=event.owner)
    _counted(holder, account_id)  # its balance is 0
    documents.put(key, holder, subject=holder.account_ids)


def _move(account_id: str, amount: int, documents: Documents) -> None:
    account = documents.get(account_key(account_id), bank.AccountBalance)
    if account is None:
        return  # opened before this projection knew of it: cannot happen from position 0
    account.balance += amount
    documents.put(account_key(account_id), account, subject=account_id)
    # None: deleted when another of the owner's accounts was forgotten.
    key = owner_key(account.owner)
    holder = documents.get(key, bank.OwnerBalance) or bank.OwnerBalance(owner=account.owner)
    # An account the document does not sum yet (it was made again after a
    # forgetting) counts with its whole balance, as a rebuild counts it.
    holder.balance += amount if _counted(holder, account_id) else account.balance
    documents.put(key, holder, subject=holder.account_ids)


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
    key = owner_key(account.owner)
    holder = documents.get(key, bank.OwnerBalance)
    if holder is None:
        return
    holder.balance -= account.balance
    remaining = [a for a in holder.account_ids if a != envelope.aggregate_id]
    del holder.account_ids[:]
    holder.account_ids.extend(remaining)
    if remaining:
        documents.put(key, holder, subject=holder.account_ids)
    else:
        documents.delete(key)
