"""A read model of the bank's accounts that stops on an event it fails on,
so that a test can hold a projection below a tombstone
(tests/integration/test_import_read_models.py).

``stalling.opened`` counts, per account, the AccountOpened events it
applied (``opened:<id>``, 1 after a rebuild) and drops the count at the
account's tombstone; an account opened for ``POISON`` makes it fail and stop
there (``on_failure="stop"``), its checkpoint held before that event."""

from __future__ import annotations

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins import AggregateDeleted, Documents, Plugin, ProjectedEvent

POISON = "poison"

plugin = Plugin("stalling")
opened = plugin.projection("stalling.opened", aggregate_types=["Account"], batch_size=1)


@opened.on(bank.AccountOpened)
def _opened(event: bank.AccountOpened, envelope: ProjectedEvent, documents: Documents) -> None:
    if event.owner == POISON:
        raise ValueError("this read model cannot take a poisoned owner")
    key = f"opened:{envelope.aggregate_id}"
    count = documents.get(key, bank.AccountBalance) or bank.AccountBalance(owner=event.owner)
    count.balance += 1
    documents.put(key, count)


@opened.on(AggregateDeleted)
def _deleted(event: AggregateDeleted, envelope: ProjectedEvent, documents: Documents) -> None:
    documents.delete(f"opened:{envelope.aggregate_id}")
