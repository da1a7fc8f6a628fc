"""Building store records in tests: the store contract's helpers, and
events of the bank's accounts (which the example plugins read: an import
through a server or the CLI refuses events its plugins cannot read)."""

from dataclasses import replace
from typing import Any

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.store.records import RecordedEvent
from service.store_contract.records import command_record, new_event, recorded_event

__all__ = ["account_event", "command_record", "new_event", "recorded_event"]


def account_event(aggregate_id: str, version: int, **fields: Any) -> RecordedEvent:
    """``recorded_event`` of an Account: opened at version 1, a deposit after."""
    message = bank.AccountOpened(owner="ann") if version == 1 else bank.MoneyDeposited(amount=1)
    event = recorded_event(
        aggregate_id, version, event_type=message.DESCRIPTOR.full_name, payload=message.SerializeToString(), **fields
    )
    return replace(event, aggregate_type="Account")
