"""``service.testing.ReactionRun`` reads events as the server does."""

from __future__ import annotations

import uuid

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.store.records import NewEvent
from service.testing import ReactionRun
from tests.support import plugins


def test_events_stored_at_an_older_schema_are_read_upcast() -> None:
    """The ledger's MoneyDeposited v1 held whole units; v2 holds cents."""
    with ReactionRun(plugins.ledger) as run:
        old = NewEvent(
            event_id=str(uuid.uuid4()),
            aggregate_type="Book",
            event_type="bank.v1.MoneyDeposited",
            schema_version=1,
            payload=bank.MoneyDeposited(amount=7).SerializeToString(),
            timestamp_us=1,
        )
        run.store._append("book-1", [old], 0, (), ())
        run.submit("book-1", bank.Deposit(amount=50))
        assert run.events("book-1") == [bank.MoneyDeposited(amount=700), bank.MoneyDeposited(amount=50)]
        assert run.state("book-1", bank.Account).balance == 750
