"""A bank written with the Python ``eventsourcing`` library (PyPI), as a team
adopting Chronicle has it, and the mapping that turns its events into the
bank plugin's (docs/migration.md shows the same)."""

from __future__ import annotations

from urllib.parse import urlsplit
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.transfer.eventsourcing import ChronicleEvent, EventsourcingEvent


class Account(Aggregate):
    @event("Opened")
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.balance = 0

    @event("Deposited")
    def deposit(self, amount: int) -> None:
        self.balance += amount

    @event("Withdrawn")
    def withdraw(self, amount: int) -> None:
        self.balance -= amount

    @event("Noted")
    def note(self, text: str) -> None:
        """An event the bank plugin has no type for: the mapping leaves it out."""


class Bank(Application[UUID]):
    name = "Bank"  # its table: bank_events

    def open_account(self, owner: str) -> UUID:
        account = Account(owner)
        self.save(account)
        return account.id

    def act(self, account_id: UUID, action: str, *args: object) -> None:
        account: Account = self.repository.get(account_id)
        getattr(account, action)(*args)
        self.save(account)


def environment(database_url: str, schema: str) -> dict[str, str]:
    parts = urlsplit(database_url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": parts.path.lstrip("/"),
        "POSTGRES_HOST": parts.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(parts.port or 5432),
        "POSTGRES_USER": parts.username or "postgres",
        "POSTGRES_PASSWORD": parts.password or "",
        "POSTGRES_SCHEMA": schema,
    }


def to_chronicle(event: EventsourcingEvent) -> ChronicleEvent | None:
    """The mapping: the library's Account events as the bank plugin's."""
    kind = event.topic.rpartition(".")[2]  # "tests.support.eventsourcing_bank:Account.Deposited"
    if kind == "Opened":
        return ChronicleEvent("Account", bank.AccountOpened(owner=event.state["owner"]))
    if kind == "Deposited":
        return ChronicleEvent("Account", bank.MoneyDeposited(amount=event.state["amount"]))
    if kind == "Withdrawn":
        return ChronicleEvent("Account", bank.MoneyWithdrawn(amount=event.state["amount"]))
    return None
