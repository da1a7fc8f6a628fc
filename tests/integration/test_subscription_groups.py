"""Subscription groups on one server, over a real socket with the Python
client: positions kept by the server, one aggregate in order at a time,
nacks and ack timeouts redelivered with backoff, a poison event parked and
replayed, consumers sharing segments, a deleted aggregate's tombstone
delivered (its parked events gone), and every bad request refused with
its reason. (Across replicas on PostgreSQL:
test_subscription_groups_replicas.py.)"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from chronicle.v1 import admin_service_pb2
from chronicle.v1 import subscription_group_service_pb2 as pb
from chronicle.v1 import subscription_group_service_pb2_grpc as pb_grpc
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.client import ChronicleClient, Command, Delivery, GroupConsumer, RemoteError
from service.client.results import Event
from service.groups import shutting_down
from service.store.memory import MemoryStore
from service.store.sqlite import SqliteStore
from tests.support.groups import ConsumerRecord, GroupLedger, by_aggregate, consume_into
from tests.support.grpc_client import details_of, reason_of, running_server
from tests.support.waiting import eventually


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Application]:
    async with running_server(
        SqliteStore(tmp_path / "groups.db"), anonymous_admin=True, poll_seconds=0.2, lease_seconds=1.5
    ) as (app, _):
        yield app


@pytest.fixture
async def client(server: Application) -> AsyncIterator[ChronicleClient]:
    async with ChronicleClient.connect(server.address) as connected:
        yield connected


async def write(client: ChronicleClient, commands: Sequence[Command]) -> None:
    async for result in client.submit_stream(commands):
        result.result()


def accounts(names: Sequence[str], deposits: int = 0) -> list[Command]:
    built = [Command(name, bank.OpenAccount(owner="ann")) for name in names]
    return built + [Command(name, bank.Deposit(amount=n + 1)) for n in range(deposits) for name in names]


async def take(deliveries: AsyncIterator[Delivery], count: int, *, ack: bool = False) -> list[Delivery]:
    """The next ``count`` deliveries (an aggregate's next event comes only
    once the one before is acked: ``ack`` them as they come)."""
    taken = []
    async for delivery in deliveries:
        taken.append(delivery)
        if ack:
            await delivery.ack()
        if len(taken) == count:
            break
    return taken


async def test_a_group_keeps_its_position_between_consumers(client: ChronicleClient) -> None:
    await write(client, accounts(["acc-1", "acc-2", "acc-3"], deposits=4))
    await client.groups.create("billing", segments=4)
    async with client.consume("billing", consumer="first") as consumer:
        first = await take(aiter(consumer), 15, ack=True)
    assert sorted((d.event.aggregate_id, d.event.version) for d in first) == [
        (f"acc-{a}", v) for a in (1, 2, 3) for v in range(1, 6)
    ]
    assert all(d.attempt == 1 and not d.replayed for d in first)

    async def all_counted() -> bool:
        return (await client.groups.get("billing")).acknowledged == 15

    await eventually(all_counted, what="the first consumer's acks counted")
    await write(client, [Command("acc-2", bank.Deposit(amount=9))])
    async with client.consume("billing", consumer="second") as consumer:
        (later,) = await take(aiter(consumer), 1)
        await later.ack()
    assert (later.event.aggregate_id, later.event.version) == ("acc-2", 6)

    async def caught_up() -> bool:
        return (await client.groups.get("billing")).acknowledged == 16

    await eventually(caught_up, what="the second consumer's ack counted")
    group = await client.groups.get("billing")
    assert (group.acknowledged, group.position, group.lag, group.parked) == (16, 16, 0, 0)


async def test_acks_made_before_the_loop_was_left_are_counted_whenever_its_generator_is_closed(
    client: ChronicleClient,
) -> None:
    """Leaving a consumer's loop (a ``break``) leaves its generator to be
    closed when it is collected, before or after the consumer's ``close``.
    Closed first, it used to drop the acks not sent yet and cancel the
    stream under the one being written: those events came again."""
    await write(client, accounts(["acc-1", "acc-2"], deposits=2))
    await client.groups.create("billing", segments=2)
    async with client.consume("billing", consumer="first") as consumer:
        deliveries = aiter(consumer)
        taken = await take(deliveries, 6, ack=True)
        await deliveries.aclose()  # as the collection of the left generator does
    assert len(taken) == 6

    async def all_counted() -> bool:
        return (await client.groups.get("billing")).acknowledged == 6

    await eventually(all_counted, what="every ack counted")
    group = await client.groups.get("billing")
    assert (group.acknowledged, group.lag) == (6, 0)


async def test_an_aggregates_next_event_waits_until_the_one_before_is_acked(client: ChronicleClient) -> None:
    await write(client, accounts(["slow"], deposits=1) + accounts(["quick"], deposits=3))
    await client.groups.create("orders", segments=1)
    async with client.consume("orders", consumer="worker") as consumer:
        deliveries = aiter(consumer)
        seen = []
        async for delivery in deliveries:
            seen.append((delivery.event.aggregate_id, delivery.event.version))
            if delivery.event.aggregate_id == "quick":
                await delivery.ack()
            else:
                held = delivery
            if seen[-1] == ("quick", 4):
                break
        # Every event of "quick" came, written after slow's second one,
        # which waits for the first to be acked.
        assert seen == [("slow", 1), ("quick", 1), ("quick", 2), ("quick", 3), ("quick", 4)]
        await held.ack()
        (after,) = await take(deliveries, 1)
        assert (after.event.aggregate_id, after.event.version) == ("slow", 2)
        await after.ack()


async def test_a_nacked_event_comes_again_after_the_backoff_before_its_aggregates_next(
    client: ChronicleClient,
) -> None:
    await write(client, accounts(["acc-1"], deposits=1))
    await client.groups.create("retry", retry_backoff=0.05, segments=2)
    async with client.consume("retry", consumer="worker") as consumer:
        deliveries = aiter(consumer)
        (first,) = await take(deliveries, 1)
        await first.nack("database down")
        (again,) = await take(deliveries, 1)
        assert (again.event.event_id, again.attempt) == (first.event.event_id, 2)
        await again.ack()
        (second,) = await take(deliveries, 1)
        assert (second.event.version, second.attempt) == (2, 1)
        await second.ack()


async def test_an_event_not_acked_in_time_is_delivered_again(client: ChronicleClient) -> None:
    await write(client, accounts(["acc-1"]))
    await client.groups.create("timeouts", ack_timeout=0.2, retry_backoff=0.01, segments=1)
    async with client.consume("timeouts", consumer="worker") as consumer:
        deliveries = aiter(consumer)
        (first,) = await take(deliveries, 1)
        (again,) = await take(deliveries, 1)  # never acked: it times out
        assert (again.event.event_id, again.attempt) == (first.event.event_id, 2)
        await first.ack()  # a late ack of the first delivery settles it too
    group = await client.groups.get("timeouts")

    async def counted() -> bool:
        return (await client.groups.get("timeouts")).acknowledged == 1

    await eventually(counted, what="the late ack counted")
    assert group.parked == 0


async def test_a_poison_event_is_parked_the_group_moves_on_and_it_is_replayed_once_fixed(
    client: ChronicleClient,
) -> None:
    await write(client, accounts(["acc-1", "acc-2"], deposits=2))
    await client.groups.create("poison", max_delivery_attempts=3, retry_backoff=0.01, segments=2)
    poison = "acc-1", 2
    fixed = asyncio.Event()
    handled: list[tuple[str, int, int, bool]] = []
    parked_seen = asyncio.Event()

    async def handler(delivery: Delivery) -> bool:
        key = delivery.event.aggregate_id, delivery.event.version
        handled.append((*key, delivery.attempt, delivery.replayed))
        if key == poison and not fixed.is_set():
            await delivery.nack("cannot parse the amount")
            return False
        return True

    ledger = GroupLedger()
    record = ledger.consumer("worker")
    task = asyncio.ensure_future(consume_into(client, "poison", record, ledger, handle=handler))
    try:

        async def moved_on() -> bool:
            group = await client.groups.get("poison")
            return group.parked == 1 and group.acknowledged == 5

        await eventually(moved_on, what="the poison event parked and the rest acknowledged")
        assert [h for h in handled if h[:2] == poison] == [(*poison, n, False) for n in (1, 2, 3)]
        # The aggregate went on past its parked event.
        assert ("acc-1", 3, 1, False) in handled
        (parked,) = await client.groups.parked("poison")
        assert (parked.aggregate_id, parked.attempts, parked.reason, parked.replaying) == (
            "acc-1",
            3,
            "cannot parse the amount",
            False,
        )
        fixed.set()
        assert await client.groups.replay("poison") == 1

        async def replayed() -> bool:
            group = await client.groups.get("poison")
            return group.parked == 0 and group.acknowledged == 6  # the replay acknowledged counts too

        await eventually(replayed, what="the parked event replayed and acknowledged")
        assert handled[-1] == (*poison, 1, True)
        assert parked.event_id in record.acked
        assert await client.groups.parked("poison") == []
        parked_seen.set()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_replay_naming_an_event_that_is_not_parked_is_refused_naming_it(client: ChronicleClient) -> None:
    """ReplayParked of an id that was never parked answered replaying=0, in
    silence (with a parked one beside it, replaying=1: which one was
    missing went unsaid). Now NOT_FOUND naming it, and none replayed."""
    await write(client, accounts(["acc-1"]))
    await client.groups.create("typos", max_delivery_attempts=1, segments=1)
    async with client.consume("typos", consumer="worker") as consumer:
        (poison,) = await take(aiter(consumer), 1)
        await poison.nack("cannot parse")

        async def parked() -> bool:
            return (await client.groups.get("typos")).parked == 1

        await eventually(parked, what="the event parked")
    parked_id = poison.event.event_id
    # Event ids (UUIDs) that are not parked: one that is no UUID at all is
    # INVALID_EVENT_ID (test_console_http.py's replay tests).
    never_parked, no_such = str(uuid.uuid4()), str(uuid.uuid4())
    for named in ([never_parked], [parked_id, never_parked, no_such]):
        with pytest.raises(RemoteError) as refused:
            await client.groups.replay("typos", named)
        missing = [event_id for event_id in named if event_id != parked_id]
        assert (refused.value.code, refused.value.reason) == (grpc.StatusCode.NOT_FOUND, "PARKED_EVENT_NOT_FOUND")
        assert refused.value.metadata["event_ids"] == ",".join(missing)
        assert all(repr(event_id) in refused.value.message for event_id in missing)
    (listed,) = await client.groups.parked("typos")
    assert (listed.event_id, listed.replaying) == (parked_id, False)  # none replayed
    assert await client.groups.replay("typos", [parked_id, parked_id]) == 1  # named twice, replayed once
    assert await client.groups.replay("typos") == 1  # none named: all the group's


async def test_an_event_whose_consumers_go_away_without_an_answer_is_parked_after_its_attempts(
    client: ChronicleClient,
) -> None:
    # A poison event that kills every consumer it reaches: each dies holding
    # it (no ack, no nack). The attempts carry over from one consumer's
    # session to the next, so it is parked and its aggregate goes on.
    await write(client, accounts(["acc-1"], deposits=1))
    await client.groups.create("crashy", max_delivery_attempts=2, segments=1)

    async def gone() -> bool:
        return not (await client.groups.get("crashy")).consumers

    seen = []
    for _ in range(2):
        consumer = client.consume("crashy", consumer="worker")
        (delivery,) = await asyncio.wait_for(take(aiter(consumer), 1), 20)
        seen.append((delivery.event.version, delivery.attempt))
        await consumer.close()
        await eventually(gone, what="the consumer gone from the group")
    consumer = client.consume("crashy", consumer="worker")
    (after,) = await asyncio.wait_for(take(aiter(consumer), 1, ack=True), 20)
    await consumer.close()
    assert seen == [(1, 1), (1, 2)]
    assert (after.event.aggregate_id, after.event.version, after.attempt) == ("acc-1", 2, 1)
    (parked,) = await client.groups.parked("crashy")
    assert (parked.aggregate_id, parked.attempts, parked.reason) == ("acc-1", 2, "CONSUMER_LOST")


async def test_consumers_share_the_segments_and_one_that_leaves_hands_its_events_over(
    client: ChronicleClient, server: Application
) -> None:
    names = [f"acc-{n}" for n in range(20)]
    await write(client, accounts(names, deposits=2))
    await client.groups.create("shared", segments=8)
    ledger = GroupLedger()
    async with ChronicleClient.connect(server.address) as other:
        staying = asyncio.ensure_future(consume_into(client, "shared", ledger.consumer("staying"), ledger))
        leaving = other.consume("shared", consumer="leaving")
        record = ledger.consumer("leaving")

        async def both_hold_segments() -> bool:
            group = await client.groups.get("shared")
            return sorted(len(c.segments) for c in group.consumers) == [4, 4]

        got_one = asyncio.Event()

        async def consume_leaving() -> None:
            async for delivery in leaving:
                record.received.append(delivery.event)
                got_one.set()  # and never acked: it leaves with it

        leaving_task = asyncio.ensure_future(consume_leaving())
        await eventually(both_hold_segments, what="two consumers holding four segments each")
        await write(client, [Command(name, bank.Deposit(amount=7)) for name in names])
        await asyncio.wait_for(got_one.wait(), 20)
        await leaving.close()
        leaving_task.cancel()
        await asyncio.gather(leaving_task, return_exceptions=True)

        async def all_acked() -> bool:
            return len(ledger.acked()) == 80

        await eventually(all_acked, what="the staying consumer acking every event")
        ledger.check_order()
        ledger.check_redelivered(record)
        versions = by_aggregate(ledger.consumers["staying"].received)
        assert sorted(versions) == sorted(names)  # every aggregate ended up with the one that stayed
        staying.cancel()
        await asyncio.gather(staying, return_exceptions=True)


async def test_deleting_a_group_ends_its_consumers_streams(client: ChronicleClient) -> None:
    await write(client, accounts(["acc-1"]))
    await client.groups.create("doomed", segments=1)
    async with client.consume("doomed", consumer="worker") as consumer:
        deliveries = aiter(consumer)
        assert len(await take(deliveries, 1)) == 1
        await client.groups.delete("doomed")
        with pytest.raises(RemoteError) as ended:
            await take(deliveries, 1)
    assert (ended.value.code, ended.value.reason) == (grpc.StatusCode.NOT_FOUND, "GROUP_NOT_FOUND")
    assert [g.name for g in await client.groups.list()] == []


async def test_an_ack_made_after_its_stream_broke_is_dropped_and_the_consumer_goes_on(
    client: ChronicleClient, server: Application
) -> None:
    """A handler that answers in its own task (as ``max_in_flight``
    invites) may ack after the stream that delivered its event broke and
    the consumer joined again. The ack was written on the new stream, which
    had not delivered that event (its segment had moved on meanwhile), and
    the server failed the stream (INVALID_ARGUMENT UNKNOWN_EVENT_ID): the
    consumer raised. Now it is dropped: the event was delivered again."""
    await write(client, accounts(["acc-1"]))
    await client.groups.create("late", segments=1)
    slow = client.consume("late", consumer="slow", reconnect_delay=0.05)
    slow_deliveries = aiter(slow)  # not iterated meanwhile: it opens no stream
    (held,) = await take(slow_deliveries, 1)  # its handler is slow: not acked yet
    first_member = slow.member
    (session,) = [s for s in server.groups._sessions if s.member_id == first_member]
    session.fail(shutting_down())  # its stream ends as a stopping server ends it

    async with ChronicleClient.connect(server.address) as other:  # the segment moves on meanwhile
        async with other.consume("late", consumer="other") as taker:
            (again,) = await take(aiter(taker), 1, ack=True)
        assert (again.event.event_id, again.attempt) == (held.event.event_id, 2)

    async def acknowledged() -> bool:
        return (await client.groups.get("late")).acknowledged == 1

    await eventually(acknowledged, what="the other consumer's ack counted")
    going_on = asyncio.ensure_future(take(slow_deliveries, 1, ack=True))
    await eventually(
        lambda: going_on.done() or (slow.joined.is_set() and slow.member != first_member), what="slow joined again"
    )
    await held.ack()  # late: its stream is gone
    await write(client, [Command("acc-1", bank.Deposit(amount=5))])
    (later,) = await asyncio.wait_for(going_on, 20)  # the consumer went on
    assert (later.event.aggregate_id, later.event.version) == ("acc-1", 2)
    await slow.close()


# -- bad requests ------------------------------------------------------------------


async def refused(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(RemoteError) as raised:
        await call
    return raised.value.code, raised.value.reason


async def test_bad_groups_are_refused_with_their_reasons(client: ChronicleClient) -> None:
    await client.groups.create("billing")
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert await refused(client.groups.create("billing")) == (grpc.StatusCode.ALREADY_EXISTS, "GROUP_EXISTS")
    for name in ("", "-dash-first", "has space", "x" * 101, "ünïcode"):
        assert await refused(client.groups.create(name)) == (invalid, "BAD_GROUP_NAME"), name
    assert await refused(client.groups.create("g", aggregate_types=["Nope"])) == (invalid, "INVALID_FILTER")
    assert await refused(client.groups.create("g", event_types=["bank.v1.Nope"])) == (invalid, "INVALID_FILTER")
    for settings in (
        {"segments": 3},
        {"segments": 2048},
        {"max_delivery_attempts": 101},
        {"ack_timeout": 0.001},
        {"retry_backoff": 7200},
        {"retry_backoff": 10, "max_retry_backoff": 5},
    ):
        assert await refused(client.groups.create("g", **settings)) == (invalid, "BAD_GROUP_SETTING"), settings
    assert await refused(client.groups.create("g", after_position=1)) == (invalid, "POSITION_BEYOND_END")
    assert await refused(client.groups.delete("missing")) == (grpc.StatusCode.NOT_FOUND, "GROUP_NOT_FOUND")
    assert await refused(client.groups.parked("missing")) == (grpc.StatusCode.NOT_FOUND, "GROUP_NOT_FOUND")
    assert await refused(client.groups.parked("billing", page_size=1001)) == (invalid, "LIMIT_TOO_LARGE")
    assert await refused(client.groups.replay("missing")) == (grpc.StatusCode.NOT_FOUND, "GROUP_NOT_FOUND")
    assert [g.name for g in await client.groups.list()] == ["billing"]  # nothing half-written


async def test_a_malformed_duration_is_refused_naming_its_field(server: Application) -> None:
    """google.protobuf.Duration's nanos are within ±999,999,999, of the sign
    of seconds. nanos=2e9 was taken as 2 s; seconds=1 with nanos=-5e8 was
    refused as "must not be negative"."""
    malformed = [
        duration_pb2.Duration(nanos=2_000_000_000),
        duration_pb2.Duration(seconds=1, nanos=-500_000_000),
        duration_pb2.Duration(seconds=-1, nanos=500_000_000),
        duration_pb2.Duration(seconds=315_576_000_001),
    ]
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.SubscriptionGroupServiceStub(channel)
        for field in ("retry_backoff", "max_retry_backoff", "ack_timeout"):
            for value in malformed:
                request = pb.CreateGroupRequest(name="g")
                getattr(request, field).CopyFrom(value)
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await stub.CreateGroup(request)
                said = details_of(raised.value)
                assert (said.code, said.reason, said.field_violations) == (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "BAD_GROUP_SETTING",
                    [field],
                ), (field, value)
                assert "is not a valid google.protobuf.Duration" in said.message, said.message
            negative = pb.CreateGroupRequest(name="g")
            getattr(negative, field).CopyFrom(duration_pb2.Duration(seconds=-1, nanos=-5))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.CreateGroup(negative)
            assert details_of(raised.value).message == f"{field}: must not be negative"
        # Well-formed ones still pass: 1.5 s both ways of writing it.
        created = await stub.CreateGroup(
            pb.CreateGroupRequest(name="g", ack_timeout=duration_pb2.Duration(seconds=1, nanos=500_000_000))
        )
        assert created.group.ack_timeout == duration_pb2.Duration(seconds=1, nanos=500_000_000)
        assert [g.name for g in (await stub.ListGroups(pb.ListGroupsRequest())).groups] == ["g"]


async def consume_raw(address: str, requests: Sequence[pb.ConsumeRequest], *, reads: int = 1) -> list[Any]:
    """Send ``requests`` on a Consume stream and read ``reads`` messages."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = pb_grpc.SubscriptionGroupServiceStub(channel).Consume()
        for request in requests:
            await call.write(request)
        return [await call.read() for _ in range(reads)]


def start(group: str = "billing", consumer: str = "worker", **fields: Any) -> pb.ConsumeRequest:
    return pb.ConsumeRequest(start=pb.ConsumeStart(group=group, consumer=consumer, **fields))


async def test_bad_consume_streams_are_refused_with_their_reasons(client: ChronicleClient, server: Application) -> None:
    await write(client, accounts(["acc-1"]))
    await client.groups.create("billing")
    ack = pb.ConsumeRequest(ack=pb.Ack(event_ids=["not-delivered"]))
    cases = [
        ([start(group="missing")], 1, grpc.StatusCode.NOT_FOUND, "GROUP_NOT_FOUND"),
        ([start(group="bad name")], 1, grpc.StatusCode.INVALID_ARGUMENT, "BAD_GROUP_NAME"),
        ([start(consumer="")], 1, grpc.StatusCode.INVALID_ARGUMENT, "BAD_CONSUMER_NAME"),
        ([start(max_in_flight=10_001)], 1, grpc.StatusCode.INVALID_ARGUMENT, "BAD_GROUP_SETTING"),
        ([ack], 1, grpc.StatusCode.INVALID_ARGUMENT, "START_EXPECTED"),
        ([start(), start()], 3, grpc.StatusCode.INVALID_ARGUMENT, "START_EXPECTED"),
        ([start(), pb.ConsumeRequest()], 3, grpc.StatusCode.INVALID_ARGUMENT, "ACK_OR_NACK_EXPECTED"),
        ([start(), ack], 3, grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_EVENT_ID"),
    ]
    for requests, reads, code, reason in cases:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await consume_raw(server.address, requests, reads=reads)
        assert (raised.value.code(), reason_of(raised.value)) == (code, reason), requests


async def test_acks_and_nacks_take_an_event_id_in_any_form_of_a_uuid(
    client: ChronicleClient, server: Application
) -> None:
    """Upper case, braces, urn:uuid:, no hyphens: the delivered event, as
    ReplayParked and DismissParked take them (an upper-case id ended the
    stream INVALID_ARGUMENT UNKNOWN_EVENT_ID)."""
    await write(client, accounts(["acc-1", "acc-2", "acc-3"]))
    await client.groups.create("billing", max_delivery_attempts=1, segments=1)
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = pb_grpc.SubscriptionGroupServiceStub(channel).Consume()
        await call.write(start())
        delivered: list[str] = []
        while len(delivered) < 3:
            message = await asyncio.wait_for(call.read(), 20)
            assert message is not grpc.aio.EOF, "the stream ended"
            delivered += [d.event.event_id for d in message.deliveries.deliveries]
        first, second, third = delivered
        await call.write(pb.ConsumeRequest(ack=pb.Ack(event_ids=[first.upper(), "{" + second + "}"])))
        nack = pb.Nack(event_ids=["urn:uuid:" + third.replace("-", "")], action=pb.NACK_ACTION_PARK, reason="p")
        await call.write(pb.ConsumeRequest(nack=nack))

        async def settled() -> bool:
            group = await client.groups.get("billing")
            return (group.acknowledged, group.parked) == (2, 1)

        await eventually(settled, what="two acknowledged, one parked")
        assert [p.event_id for p in await client.groups.parked("billing")] == [third]
        call.cancel()


async def test_administering_groups_needs_the_admin_grant_and_is_audited(tmp_path: Path) -> None:
    async with running_server(MemoryStore()) as (app, _), ChronicleClient.connect(app.address) as client:
        denied = (grpc.StatusCode.PERMISSION_DENIED, "ANONYMOUS_ADMIN_DENIED")
        assert await refused(client.groups.create("billing")) == denied
        assert await refused(client.groups.delete("billing")) == denied
        assert await refused(client.groups.replay("billing")) == denied
    async with (
        running_server(MemoryStore(), anonymous_admin=True) as (app, raw),
        ChronicleClient.connect(app.address) as client,
    ):
        await client.groups.create("billing")
        await client.groups.delete("billing")
        with pytest.raises(RemoteError):
            await client.groups.delete("billing")
        audit = await raw.admin.QueryAudit(admin_service_pb2.QueryAuditRequest())
        entries = [(e.command_type.rsplit("/", 1)[1], e.aggregate_id, e.reason) for e in audit.entries]
        assert entries == [
            ("DeleteGroup", "group:billing", "GROUP_NOT_FOUND"),
            ("DeleteGroup", "group:billing", ""),
            ("CreateGroup", "group:billing", ""),
        ]


async def test_a_consumer_that_closes_its_side_ends_the_stream_cleanly(client: ChronicleClient) -> None:
    await client.groups.create("billing")
    consumer: GroupConsumer = client.consume("billing", consumer="worker")
    deliveries = aiter(consumer)
    waiting = asyncio.ensure_future(take(deliveries, 1))
    await asyncio.wait_for(consumer.joined.wait(), 20)
    group = await client.groups.get("billing")
    assert [c.consumer for c in group.consumers] == [consumer.member]
    await consumer.close()
    assert await asyncio.wait_for(waiting, 20) == []

    async def gone() -> bool:
        return not (await client.groups.get("billing")).consumers

    await eventually(gone, what="the consumer gone from the group")


async def test_a_consumer_beyond_the_segment_count_waits_and_takes_over_when_the_holder_leaves(
    client: ChronicleClient, server: Application
) -> None:
    await write(client, accounts(["acc-1", "acc-2"]))
    await client.groups.create("single", segments=1)
    async with ChronicleClient.connect(server.address) as other:
        holder = client.consume("single", consumer="holder")
        waiter = other.consume("single", consumer="waiter")
        holding = aiter(holder)  # the stream lives as long as its iterator
        held = await take(holding, 2, ack=True)
        waiting = asyncio.ensure_future(take(aiter(waiter), 1, ack=True))
        await asyncio.wait_for(waiter.joined.wait(), 20)
        group = await client.groups.get("single")
        assert sorted(len(c.segments) for c in group.consumers) == [0, 1]
        assert not waiting.done()
        await holder.close()
        await write(client, [Command("acc-1", bank.Deposit(amount=3))])
        (taken_over,) = await asyncio.wait_for(waiting, 20)
        await waiter.close()
    assert sorted(d.event.aggregate_id for d in held) == ["acc-1", "acc-2"]
    assert (taken_over.event.aggregate_id, taken_over.event.version) == ("acc-1", 2)


async def test_a_stopping_server_ends_consumers_streams_with_unavailable(tmp_path: Path) -> None:
    async with running_server(MemoryStore(), anonymous_admin=True) as (app, _):
        async with ChronicleClient.connect(app.address) as client:
            await client.groups.create("billing")
        async with grpc.aio.insecure_channel(app.address) as channel:
            call = pb_grpc.SubscriptionGroupServiceStub(channel).Consume()
            await call.write(start())
            assert (await call.read()).HasField("joined")
            stopping = asyncio.ensure_future(app.stop(grace=1.0, drain=0.0))
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await call.read()
            await stopping
    assert (ended.value.code(), reason_of(ended.value)) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")


def delivered(record: ConsumerRecord) -> list[Event]:
    return [e for e in record.received if isinstance(e, Event)]


async def test_a_deleted_aggregate_s_tombstone_is_delivered_and_its_parked_events_go(tmp_path: Path) -> None:
    async with (
        running_server(
            SqliteStore(tmp_path / "groups.db"), anonymous_admin=True, poll_seconds=0.2, lease_seconds=1.5
        ) as (app, raw),
        ChronicleClient.connect(app.address) as client,
    ):
        await write(client, accounts(["acc-1", "acc-2"], deposits=1))
        await client.groups.create("erasing", max_delivery_attempts=2, retry_backoff=0.01, segments=2)

        async def handler(delivery: Delivery) -> bool:
            if (delivery.event.aggregate_id, delivery.event.version) == ("acc-1", 2):
                await delivery.nack("cannot parse the amount")  # parked after two attempts
                return False
            return True

        ledger = GroupLedger()
        record = ledger.consumer("worker")
        task = asyncio.ensure_future(consume_into(client, "erasing", record, ledger, handle=handler))
        try:

            async def parked() -> bool:
                group = await client.groups.get("erasing")
                return group.parked == 1 and group.acknowledged == 3

            await eventually(parked, what="acc-1's deposit parked, the rest acknowledged")
            await raw.admin.DeleteAggregate(admin_service_pb2.DeleteAggregateRequest(aggregate_id="acc-1"))

            async def tombstone_acknowledged() -> bool:
                return (
                    any(e.aggregate_id == "acc-1" and e.deleted for e in delivered(record))
                    and (await client.groups.get("erasing")).acknowledged == 4
                )

            await eventually(tombstone_acknowledged, what="the tombstone delivered and acknowledged")
            (tombstone,) = [e for e in delivered(record) if e.deleted]
            assert (tombstone.aggregate_id, tombstone.version) == ("acc-1", 3)
            # What the group parked of the deleted events went with them.
            assert (await client.groups.get("erasing")).parked == 0
            assert await client.groups.parked("erasing") == []
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_a_consumer_whose_stream_ends_under_an_ack_being_written_closes_quietly(
    client: ChronicleClient, server: Application
) -> None:
    await write(client, accounts(["acc-1"]))
    await client.groups.create("quiet", segments=1)
    consumer = client.consume("quiet", consumer="c")
    deliveries = aiter(consumer)
    (delivery,) = await take(deliveries, 1)
    await delivery.ack()  # the ack's write is scheduled...
    await asyncio.sleep(0)  # ...and under way
    await deliveries.aclose()  # the stream ends under it (what dropping the iterator does, later)
    await consumer.close()  # the ack went with the stream, as a broken one's do: nothing raised
    assert consumer._call is None
