"""Reading events stored under older schemas: the upcasting chain that every
read path uses, on the ledger test plugin (see tests/support/plugins.py)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from google.protobuf.message import Message

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2
from service.errors import ConfigurationError, EventNotReadable
from service.plugins import OldEvent, Plugin
from service.plugins.registry import Registry
from service.processing.state import AggregateLoader
from service.processing.upcasting import EventReader
from service.store.base import Store
from service.store.memory import MemoryStore
from service.store.records import NewEvent, RecordedEvent
from service.testing import Scenario
from tests.support import plugins
from tests.support.events import new_event

REGISTRY = Registry([plugins.ledger])


def stored(message: Message | bytes, schema_version: int, event_type: str = "") -> NewEvent:
    if isinstance(message, Message):
        event_type = event_type or str(message.DESCRIPTOR.full_name)
        message = message.SerializeToString()
    return new_event(event_type, aggregate_type="Book", payload=message, schema_version=schema_version)


async def load(*events: NewEvent) -> bank.Account:
    store = MemoryStore()
    await store.append("book-1", list(events), 0)
    aggregate = await AggregateLoader(Store.of(store), REGISTRY).load("book-1", plugins.book)
    return aggregate.state  # type: ignore[return-value]


async def read(*events: NewEvent) -> list[RecordedEvent]:
    store = MemoryStore()
    recorded = await store.append("book-1", list(events), 0)
    reader = EventReader(REGISTRY)
    return [current for event in recorded for current in reader.records(event)]


def payload(event: RecordedEvent, message_type: type[Message]) -> Message:
    return message_type.FromString(event.payload)


async def test_events_stored_at_v1_produce_the_v2_state() -> None:
    state = await load(stored(bank.AccountOpened(owner="ann"), 3), stored(bank.MoneyDeposited(amount=7), 1))
    assert state == bank.Account(owner="ann", balance=700)


async def test_events_at_the_current_version_are_read_as_stored() -> None:
    event = (await read(stored(bank.MoneyDeposited(amount=7), 2)))[0]
    assert (event.schema_version, payload(event, bank.MoneyDeposited)) == (2, bank.MoneyDeposited(amount=7))


async def test_the_stored_events_are_never_rewritten() -> None:
    store = MemoryStore()
    await store.append("book-1", [stored(bank.MoneyDeposited(amount=7), 1)], 0)
    await AggregateLoader(Store.of(store), REGISTRY).load("book-1", plugins.book)
    (kept,) = await store.read_aggregate("book-1")
    assert (kept.schema_version, kept.payload) == (1, bank.MoneyDeposited(amount=7).SerializeToString())


async def test_an_event_goes_through_every_step_to_the_current_version() -> None:
    state = await load(stored(bank.AccountOpened(owner="  ann "), 1))
    assert state == bank.Account(owner="ann", balance=plugins.OPENING_BONUS_CENTS)


async def test_an_event_split_into_two_reads_as_two_events_of_the_same_version() -> None:
    original = stored(bank.AccountOpened(owner="ann"), 2)
    opened, bonus = await read(original)
    assert (opened.event_type, opened.schema_version, opened.version) == ("bank.v1.AccountOpened", 3, 1)
    assert (bonus.event_type, bonus.schema_version, bonus.version) == ("bank.v1.MoneyDeposited", 2, 1)
    assert payload(bonus, bank.MoneyDeposited) == bank.MoneyDeposited(amount=plugins.OPENING_BONUS_CENTS)
    assert opened.event_id == original.event_id
    assert bonus.event_id != original.event_id


async def test_the_ids_of_split_events_are_the_same_on_every_read() -> None:
    store = MemoryStore()
    await store.append("book-1", [stored(bank.AccountOpened(owner="ann"), 2)], 0)
    reader = EventReader(REGISTRY)
    (event,) = await store.read_aggregate("book-1")
    assert [e.event_id for e in reader.records(event)] == [e.event_id for e in reader.records(event)]


async def test_an_event_upcast_into_nothing_is_dropped() -> None:
    note = stored(b"\x0a\x02hi", 1, event_type="legacy.v1.AuditNote")
    assert await read(note) == []
    assert await load(stored(bank.AccountOpened(owner="ann"), 3), note) == bank.Account(owner="ann")


async def test_a_retired_type_becomes_another_type() -> None:
    changed = stored(box_pb2.BoxRenamed(name="bob").SerializeToString(), 1, event_type="legacy.v1.OwnerChanged")
    (event,) = await read(changed)
    assert (event.event_type, payload(event, box_pb2.BoxRenamed)) == (
        "box.v1.BoxRenamed",
        box_pb2.BoxRenamed(name="bob"),
    )
    assert (await load(stored(bank.AccountOpened(owner="ann"), 3), changed)).owner == "bob"


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (stored(b"", 1, event_type="legacy.v1.Unknown"), "UNKNOWN_EVENT_TYPE"),
        (stored(bank.AccountClosed(), 1), "UNSUPPORTED_SCHEMA_VERSION"),
        (stored(bank.MoneyDeposited(amount=1), 3), "SCHEMA_VERSION_TOO_NEW"),
        (stored(b"\xff\xff", 2, event_type="bank.v1.MoneyDeposited"), "CORRUPT_EVENT"),
        (stored(b"\xff\xff", 1, event_type="bank.v1.MoneyDeposited"), "UPCAST_FAILED"),
    ],
    ids=["unknown type", "missing step", "newer than the plugin", "corrupt", "upcaster fails"],
)
async def test_an_event_the_plugins_cannot_read_is_a_logged_error_not_a_skip(
    event: NewEvent, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR), pytest.raises(EventNotReadable) as raised:
        await load(stored(bank.AccountOpened(owner="ann"), 3), event)
    assert raised.value.reason == reason
    assert raised.value.metadata["version"] == "2"
    assert raised.value.metadata["event_type"] == event.event_type
    assert any("book-1" in record.getMessage() for record in caplog.records if record.levelno == logging.ERROR)


def test_an_upcaster_returning_a_foreign_event_is_refused_when_read() -> None:
    rogue = Plugin("rogue")
    thing = rogue.aggregate("Thing", state=bank.Account)
    thing.apply(bank.MoneyDeposited, schema_version=2)(lambda state, event: None)
    thing.upcast(bank.MoneyDeposited, from_version=1)(lambda old: box_pb2.BoxArchived())
    event = RecordedEvent.committed(stored(bank.MoneyDeposited(amount=1), 1), aggregate_id="t-1", version=1, position=1)
    with pytest.raises(EventNotReadable) as raised:
        EventReader(Registry([rogue])).decode(event)
    assert raised.value.reason == "UPCAST_FAILED"


def test_an_upcaster_from_the_current_version_is_refused_at_start_up() -> None:
    odd = Plugin("odd")
    thing = odd.aggregate("Thing", state=bank.Account)
    thing.apply(bank.MoneyDeposited, schema_version=2)(lambda state, event: None)
    thing.upcast(bank.MoneyDeposited, from_version=2)(lambda old: None)
    with pytest.raises(ConfigurationError) as raised:
        Registry([odd])
    assert raised.value.reason == "BAD_UPCASTER"


def test_two_plugins_upcasting_one_step_are_refused_naming_both() -> None:
    copycat = Plugin("copycat")
    copycat.aggregate("Copy", state=bank.Account).upcast("legacy.v1.AuditNote", from_version=1)(lambda old: None)
    with pytest.raises(ConfigurationError) as raised:
        Registry([plugins.ledger, copycat])
    assert "ledger" in raised.value.message and "copycat" in raised.value.message


def test_an_upcaster_reads_the_old_payload() -> None:
    old = OldEvent("bank.v1.MoneyDeposited", 1, bank.MoneyDeposited(amount=3).SerializeToString())
    assert old.parse(bank.MoneyDeposited).amount == 3


def test_a_scenario_reads_a_stored_old_event_through_the_upcasters() -> None:
    scenario = Scenario(plugins.ledger, aggregate_id="book-1").given_stored(
        "bank.v1.MoneyDeposited", bank.MoneyDeposited(amount=2), schema_version=1
    )
    scenario.when(bank.Deposit(amount=5)).then(bank.MoneyDeposited(amount=5))
    state = asyncio.run(AggregateLoader(Store.of(scenario.store), REGISTRY).load("book-1", plugins.book)).state
    assert state == bank.Account(balance=205)
