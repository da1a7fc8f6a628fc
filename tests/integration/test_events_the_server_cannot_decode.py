"""Events the server cannot decode, on real servers (SQLite and PostgreSQL)
over a real socket with the Python client (docs/subscriptions.md, "Events
the server cannot decode"):

* an event of a type the server does not know (a retired plugin's, or one
  an import let in) travels as stored, its ``Any``'s type URL and bytes
  unchanged, on Subscribe, ReadAggregate and a group's Consume, and the
  stream goes on past it; only rebuilding its aggregate's state is refused,
  FAILED_PRECONDITION naming the event;
* an event of a known type that its upcaster fails on ends a subscription
  and a read FAILED_PRECONDITION naming it, after the events before it; a
  group delivers the events around it and parks it, never delivered, so
  its position moves on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.users.protos.users.v1 import users_pb2 as users
from service.app import Application
from service.client import ChronicleClient, RemoteError
from service.client.results import Event
from service.plugins.registry import Registry
from service.store.base import StoreAdapter
from service.store.encryption import new_master_key
from service.store.records import NewEvent, RecordedEvent
from tests.support import plugins
from tests.support.events import new_event
from tests.support.grpc_client import running_server, with_jwt_auth
from tests.support.processes import cli
from tests.support.security import JwtIssuer, write
from tests.support.waiting import eventually

LEGACY = "legacy.v1.CardIssued"  # no plugin declares it, no upcaster reads it
LEGACY_BYTES = b"\x0a\x04card"
TYPE_URL = "type.googleapis.com/"


@pytest.fixture(params=["sqlite", "postgres"])
def sql_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreAdapter:
    if request.param == "sqlite":
        from service.store.sqlite import SqliteStore

        return SqliteStore(tmp_path / "events.db")
    from service.store.postgres import PostgresStore

    return PostgresStore(request.getfixturevalue("postgres_url"), pool_size=4)


@dataclass
class Retired:
    """A server with only the bank plugin over a log that holds acc-1
    (Account: opened, a deposit, a ``LEGACY`` event, a deposit) and user-1
    (User: the users plugin, retired, registered it)."""

    app: Application
    client: ChronicleClient
    stored: list[RecordedEvent]


async def append_retired_log(app: Application) -> list[RecordedEvent]:
    """Through the server's own store (encryption included), as an import
    and a retired plugin left it."""

    def account_event(event_type: str, payload: bytes) -> NewEvent:
        return new_event(event_type, aggregate_type="Account", payload=payload)

    append = app.store.events.append
    stored = await append(
        "acc-1",
        [
            account_event("bank.v1.AccountOpened", bank.AccountOpened(owner="ann").SerializeToString()),
            account_event("bank.v1.MoneyDeposited", bank.MoneyDeposited(amount=5).SerializeToString()),
            account_event(LEGACY, LEGACY_BYTES),
            account_event("bank.v1.MoneyDeposited", bank.MoneyDeposited(amount=7).SerializeToString()),
        ],
        0,
    )
    registered = users.UserRegistered(email="ann@example.com", name="Ann").SerializeToString()
    stored += await append(
        "user-1", [new_event("users.v1.UserRegistered", aggregate_type="User", payload=registered)], 0
    )
    return stored


@pytest.fixture
async def retired(sql_store: StoreAdapter) -> AsyncIterator[Retired]:
    registry = Registry([bank_account.plugin])
    async with running_server(sql_store, registry=registry, anonymous_admin=True, poll_seconds=0.2) as (app, _):
        stored = await append_retired_log(app)
        async with ChronicleClient.connect(app.address) as client:
            yield Retired(app, client, stored)


async def subscribed(client: ChronicleClient, count: int, **filters: object) -> list[Event]:
    """The first ``count`` events of a subscription from the log's start."""
    received: list[Event] = []
    async with asyncio.timeout(30):
        async for event in client.subscribe(**filters):  # type: ignore[arg-type]
            received.append(event)
            if len(received) == count:
                break
    return received


def as_stored(event: Event) -> tuple[str, str, int, bytes]:
    envelope = event.envelope
    return (envelope.event_type, envelope.payload.type_url, envelope.schema_version, envelope.payload.value)


async def test_an_unfiltered_subscriber_gets_unknown_types_as_stored_and_goes_on(retired: Retired) -> None:
    received = await subscribed(retired.client, 5)
    assert [event.position for event in received] == [event.position for event in retired.stored]
    assert as_stored(received[2]) == (LEGACY, TYPE_URL + LEGACY, 1, LEGACY_BYTES)
    assert received[2].payload == received[2].envelope.payload  # no class for it here: the packed Any
    registered = retired.stored[4]
    assert as_stored(received[4]) == (
        "users.v1.UserRegistered",
        TYPE_URL + "users.v1.UserRegistered",
        1,
        registered.payload,
    )
    assert received[3].payload_as(bank.MoneyDeposited).amount == 7  # the stream went on past both


async def test_a_read_of_an_aggregate_hands_over_unknown_types_as_stored(retired: Retired) -> None:
    account = [event async for event in retired.client.read("acc-1")]
    user = [event async for event in retired.client.read("user-1")]
    assert [event.version for event in account] == [1, 2, 3, 4]
    assert as_stored(account[2]) == (LEGACY, TYPE_URL + LEGACY, 1, LEGACY_BYTES)
    assert [as_stored(event)[0] for event in user] == ["users.v1.UserRegistered"]


async def test_rebuilding_an_aggregate_holding_an_unknown_event_is_refused_naming_it(retired: Retired) -> None:
    legacy = retired.stored[2]
    refusals = []
    with pytest.raises(RemoteError) as got:
        await retired.client.get_aggregate("acc-1", bank.Account)
    refusals.append(got.value)
    with pytest.raises(RemoteError) as submitted:
        await retired.client.submit("acc-1", bank.Deposit(amount=1))
    refusals.append(submitted.value)
    for refused in refusals:
        assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "UNKNOWN_EVENT_TYPE")
        assert {key: refused.metadata[key] for key in ("aggregate_id", "version", "event_type", "event_id")} == {
            "aggregate_id": "acc-1",
            "version": "3",
            "event_type": LEGACY,
            "event_id": legacy.event_id,
        }
        assert "declare an upcaster" in refused.message
    with pytest.raises(RemoteError) as retired_type:
        await retired.client.get_aggregate("user-1", users.User)
    assert (retired_type.value.code, retired_type.value.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "UNKNOWN_AGGREGATE_TYPE",
    )
    assert retired_type.value.metadata["aggregate_id"] == "user-1"


async def test_a_group_delivers_an_unknown_event_with_those_around_it_and_moves_on(retired: Retired) -> None:
    client = retired.client
    await client.groups.create("billing", aggregate_types=["Account"])
    received: list[Event] = []
    async with asyncio.timeout(30), client.consume("billing", consumer="w") as deliveries:
        async for delivery in deliveries:
            received.append(delivery.event)
            await delivery.ack()
            if len(received) == 4:
                break
    assert [event.version for event in received] == [1, 2, 3, 4]
    assert as_stored(received[2]) == (LEGACY, TYPE_URL + LEGACY, 1, LEGACY_BYTES)
    last = retired.stored[3].position

    async def settled() -> bool:
        info = await client.groups.get("billing")
        return info.position >= last and info.acknowledged == 4 and info.parked == 0

    await eventually(settled, what="the group past the unknown event, nothing parked")


# -- an upcaster that fails ---------------------------------------------------------


@dataclass
class Broken:
    """A server with the ledger plugin over book-1: opened (v3), a v1
    deposit whose bytes its upcaster cannot parse, a current deposit."""

    client: ChronicleClient
    stored: list[RecordedEvent]


@pytest.fixture
async def broken(sql_store: StoreAdapter) -> AsyncIterator[Broken]:
    registry = Registry([plugins.ledger])
    async with running_server(sql_store, registry=registry, anonymous_admin=True, poll_seconds=0.2) as (app, _):
        opened = bank.AccountOpened(owner="ann").SerializeToString()
        stored = await app.store.events.append(
            "book-1",
            [
                new_event("bank.v1.AccountOpened", aggregate_type="Book", payload=opened, schema_version=3),
                new_event("bank.v1.MoneyDeposited", aggregate_type="Book", payload=b"\xff\xff", schema_version=1),
                new_event(
                    "bank.v1.MoneyDeposited",
                    aggregate_type="Book",
                    payload=bank.MoneyDeposited(amount=7).SerializeToString(),
                    schema_version=2,
                ),
            ],
            0,
        )
        async with ChronicleClient.connect(app.address) as client:
            yield Broken(client, stored)


async def test_a_failing_upcaster_ends_a_subscription_after_the_events_before_it_naming_the_event(
    broken: Broken,
) -> None:
    received: list[Event] = []

    async def follow() -> None:
        async with asyncio.timeout(30):
            async for event in broken.client.subscribe():
                received.append(event)

    with pytest.raises(RemoteError) as ended:
        await follow()
    bad = broken.stored[1]
    assert [event.version for event in received] == [1]
    assert (ended.value.code, ended.value.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "UPCAST_FAILED")
    assert (ended.value.metadata["event_id"], ended.value.metadata["position"]) == (bad.event_id, str(bad.position))


async def test_a_failing_upcaster_ends_a_read_of_its_aggregate_after_the_events_before_it(broken: Broken) -> None:
    received: list[Event] = []

    async def read() -> None:
        async for event in broken.client.read("book-1"):
            received.append(event)

    with pytest.raises(RemoteError) as ended:
        await read()
    assert [event.version for event in received] == [1]
    assert (ended.value.code, ended.value.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "UPCAST_FAILED")


async def test_a_group_parks_an_event_its_upcaster_fails_on_and_delivers_those_around_it(broken: Broken) -> None:
    client = broken.client
    await client.groups.create("ledger", aggregate_types=["Book"])
    received: list[Event] = []
    async with asyncio.timeout(30), client.consume("ledger", consumer="w") as deliveries:
        async for delivery in deliveries:
            received.append(delivery.event)
            await delivery.ack()
            if len(received) == 2:
                break
    assert [event.version for event in received] == [1, 3]
    bad, last = broken.stored[1], broken.stored[2]

    async def parked_and_past() -> bool:
        info = await client.groups.get("ledger")
        return info.position >= last.position and info.parked == 1

    await eventually(parked_and_past, what="the group past the bad event, which is parked")
    (parked,) = await client.groups.parked("ledger")
    assert (parked.event_id, parked.position, parked.attempts) == (bad.event_id, bad.position, 0)
    assert parked.reason.startswith("UPCAST_FAILED: ")
    # Its stored type (never delivered: no other), and a time.
    assert (parked.event_type, parked.HasField("parked_at")) == (bad.event_type, True)


async def test_a_replay_of_an_event_its_upcaster_still_fails_on_parks_it_again(broken: Broken) -> None:
    client = broken.client
    await client.groups.create("ledger", aggregate_types=["Book"])
    bad = broken.stored[1]
    received: list[Event] = []

    async def consume() -> None:
        async with client.consume("ledger", consumer="w") as deliveries:
            async for delivery in deliveries:
                received.append(delivery.event)
                await delivery.ack()

    async def parked(replaying: bool) -> bool:
        listed = await client.groups.parked("ledger")
        return [(p.event_id, p.replaying) for p in listed] == [(bad.event_id, replaying)]

    consumer = asyncio.ensure_future(consume())
    try:
        await eventually(lambda: parked(False), what="the bad event parked")
        (first,) = await client.groups.parked("ledger")
        await asyncio.sleep(0.01)  # a later parking time, to the microsecond
        assert await client.groups.replay("ledger", [bad.event_id]) == 1
        assert await parked(True)
        # The consumer's session finds the replay, cannot read the event
        # again, and parks it again: nothing delivered, the stream goes on.
        await eventually(lambda: parked(False), what="the replay parked again")
    finally:
        consumer.cancel()
    assert [event.version for event in received] == [1, 3]
    (again,) = await client.groups.parked("ledger")
    assert again.reason.startswith("UPCAST_FAILED: ")
    # Parked again: when it was, now; of the same type.
    assert again.event_type == first.event_type == bad.event_type
    assert again.parked_at.ToMicroseconds() > first.parked_at.ToMicroseconds()


# -- who receives them, with --auth ----------------------------------------------------

READERS = """
[roles.teller]
read = ["Account"]
subscribe = ["Account"]

[roles.auditor]
read = ["*"]
subscribe = ["*"]

[principals."alice"]
roles = ["teller"]

[principals."root"]
roles = ["auditor"]
"""


async def test_grants_scope_unknown_types_by_aggregate_type_and_star_takes_retired_ones(
    sql_store: StoreAdapter, tmp_path: Path
) -> None:
    issuer = JwtIssuer()
    settings = with_jwt_auth(tmp_path, issuer, READERS)
    registry = Registry([bank_account.plugin])
    async with running_server(sql_store, settings=settings, registry=registry, poll_seconds=0.2) as (app, _):
        stored = await append_retired_log(app)
        opened = bank.AccountOpened(owner="bo").SerializeToString()
        stored += await app.store.events.append(
            "acc-2", [new_event("bank.v1.AccountOpened", aggregate_type="Account", payload=opened)], 0
        )
        seen = {}
        for who, count in (("alice", 5), ("root", 6)):
            async with ChronicleClient.connect(app.address, token=issuer.token(who)) as client:
                seen[who] = [(event.aggregate_id, event.version) for event in await subscribed(client, count)]
    everything = [(event.aggregate_id, event.version) for event in stored]
    # alice may read Account: its event of an unknown type too, never the retired User's.
    assert seen["alice"] == [key for key in everything if key[0] != "user-1"]
    # "*" is every type the log holds, a type no loaded plugin declares included.
    assert seen["root"] == everything


# -- forgetting, and the CLI ---------------------------------------------------------


async def test_a_forgotten_aggregate_s_unknown_event_reaches_readers_redacted(
    sql_store: StoreAdapter, tmp_path: Path
) -> None:
    keys = write(tmp_path / "master.keys", f"k1:{new_master_key()}\n")
    registry = Registry([bank_account.plugin])
    async with running_server(
        sql_store, registry=registry, master_key_file=keys, anonymous_admin=True, poll_seconds=0.2
    ) as (app, raw):
        stored = await append_retired_log(app)
        await raw.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id="acc-1"))
        async with ChronicleClient.connect(app.address) as client:
            received = await subscribed(client, 5)
            read = [event async for event in client.read("acc-1")]
    legacy = received[2]
    assert (legacy.event_id, legacy.redacted, legacy.envelope.payload.value) == (stored[2].event_id, True, b"")
    assert [event.redacted for event in read] == [True] * 4
    assert not received[4].redacted  # user-1 was not forgotten: as stored


async def test_tail_prints_an_unknown_event_as_stored_and_goes_on(retired: Retired) -> None:
    printed = await asyncio.to_thread(
        cli, "tail", "--from", "0", "--until-caught-up", server=retired.app.address, check=False
    )
    assert printed.returncode == 0, printed.stderr
    lines = [json.loads(line) for line in printed.stdout.splitlines()]
    assert [line["position"] for line in lines] == [str(event.position) for event in retired.stored]
    assert lines[2]["payload"] == {"@type": TYPE_URL + LEGACY, "hex": LEGACY_BYTES.hex()}
    assert lines[4]["event_type"] == "users.v1.UserRegistered"
