"""A snapshot taken under another state layout is not used
(service/plugins/fingerprint.py): a state field whose type changed without a
``state_schema_version`` bump parses without error from the old bytes and
silently loses the field, so parsing is no test of a snapshot."""

from __future__ import annotations

import time
import uuid
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins import Plugin
from service.plugins.registry import Registry
from service.processing.state import AggregateLoader
from service.store.base import Store
from service.store.memory import MemoryStore
from service.store.records import NewEvent, Snapshot

Field = descriptor_pb2.FieldDescriptorProto


def state_class(balance: int, *, nested_amount: int = Field.TYPE_INT64) -> type[Message]:
    """``fp.v1.Wallet`` (owner, balance of type ``balance``, and a nested
    ``Entry`` whose amount is ``nested_amount``), in a pool of its own: the
    same full name, as a plugin's next release would have it."""
    file = descriptor_pb2.FileDescriptorProto(name="fp/v1/wallet.proto", package="fp.v1", syntax="proto3")
    entry = file.message_type.add(name="Entry")
    entry.field.add(name="amount", number=1, type=nested_amount, label=Field.LABEL_OPTIONAL)
    wallet = file.message_type.add(name="Wallet")
    wallet.field.add(name="owner", number=1, type=Field.TYPE_STRING, label=Field.LABEL_OPTIONAL)
    wallet.field.add(name="balance", number=2, type=balance, label=Field.LABEL_OPTIONAL)
    wallet.field.add(
        name="last", number=3, type=Field.TYPE_MESSAGE, type_name=".fp.v1.Entry", label=Field.LABEL_OPTIONAL
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("fp.v1.Wallet"))


def wallet_plugin(state: type[Message]) -> Registry:
    plugin = Plugin("wallets")
    wallet = plugin.aggregate("Wallet", state=state, snapshot_every=2)
    as_text = state.DESCRIPTOR.fields_by_name["balance"].type == Field.TYPE_STRING

    @wallet.apply(bank.AccountOpened)
    def _opened(state: Any, event: bank.AccountOpened) -> None:
        state.owner = event.owner

    @wallet.apply(bank.MoneyDeposited)
    def _deposited(state: Any, event: bank.MoneyDeposited) -> None:
        if as_text:
            state.balance = str(int(state.balance or "0") + event.amount)
        else:
            state.balance += event.amount

    return Registry([plugin])


def event(message: Message) -> NewEvent:
    return NewEvent(
        event_id=str(uuid.uuid4()),
        aggregate_type="Wallet",
        event_type=message.DESCRIPTOR.full_name,
        schema_version=1,
        payload=message.SerializeToString(),
        timestamp_us=time.time_ns() // 1000,
    )


async def test_a_snapshot_taken_before_a_state_field_changed_type_is_not_used() -> None:
    as_number, as_text = state_class(Field.TYPE_INT64), state_class(Field.TYPE_STRING)
    before, after = wallet_plugin(as_number), wallet_plugin(as_text)
    old_type, new_type = before.aggregate("Wallet"), after.aggregate("Wallet")
    assert old_type is not None and new_type is not None
    store = MemoryStore()
    await store.append("w-1", [event(bank.AccountOpened(owner="ann")), event(bank.MoneyDeposited(amount=10))], 0)
    await store.append("w-1", [event(bank.MoneyDeposited(amount=5))], 2)
    taken = await AggregateLoader(Store.of(store), before).load("w-1", old_type, to_version=2)
    old_bytes = taken.state.SerializeToString()
    await store.save_snapshot(
        Snapshot("w-1", "Wallet", 2, old_type.snapshot_state_type, old_type.state_schema_version, old_bytes)
    )
    # What made the old loader's safety net miss it: the old bytes parse as
    # the new type, the balance gone.
    assert as_text.FromString(old_bytes).balance == ""  # type: ignore[attr-defined]
    assert old_type.snapshot_state_type != new_type.snapshot_state_type
    assert old_type.state_schema_version == new_type.state_schema_version

    loaded = await AggregateLoader(Store.of(store), after).load("w-1", new_type)
    assert (loaded.version, loaded.state.balance) == (3, "15")  # type: ignore[attr-defined]
    # The code that took it still uses it (a state that differs from the
    # events' shows that it did).
    await store.save_snapshot(
        Snapshot(
            "w-1", "Wallet", 2, old_type.snapshot_state_type, 1, as_number(owner="ann", balance=99).SerializeToString()
        )
    )
    reloaded = await AggregateLoader(Store.of(store), before).load("w-1", old_type)
    assert reloaded.state.balance == 104  # type: ignore[attr-defined]


def test_the_fingerprint_sees_a_nested_messages_layout_and_nothing_else_changes_it() -> None:
    first = wallet_plugin(state_class(Field.TYPE_INT64)).aggregate("Wallet")
    again = wallet_plugin(state_class(Field.TYPE_INT64)).aggregate("Wallet")
    nested = wallet_plugin(state_class(Field.TYPE_INT64, nested_amount=Field.TYPE_STRING)).aggregate("Wallet")
    assert first is not None and again is not None and nested is not None
    assert first.snapshot_state_type == again.snapshot_state_type
    assert first.snapshot_state_type.startswith("fp.v1.Wallet#")
    assert nested.snapshot_state_type != first.snapshot_state_type


def test_an_upcaster_or_an_event_version_registered_after_changes_the_fingerprint() -> None:
    registry = wallet_plugin(state_class(Field.TYPE_INT64))
    wallet = registry.aggregate("Wallet")
    assert wallet is not None
    at_load = wallet.snapshot_state_type

    @wallet.apply(bank.MoneyWithdrawn, schema_version=2)
    def _withdrawn(state: Any, event: bank.MoneyWithdrawn) -> None:
        state.balance -= event.amount

    with_event = wallet.snapshot_state_type
    wallet.upcast(bank.MoneyWithdrawn, from_version=1)(lambda old: old.parse(bank.MoneyWithdrawn))
    assert len({at_load, with_event, wallet.snapshot_state_type}) == 3
