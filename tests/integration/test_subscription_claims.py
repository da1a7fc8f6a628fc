"""Claims of docs/subscriptions.md about subscription groups that no other
test asserted exactly, each over a real socket and a real server: what a
group's filter and start select, the documented defaults and bounds of its
settings, the consumer's window, where the group's position stands while an
event goes unanswered, retries that wait twice as long each time, parking on
ack timeouts, parked events listed in pages and replayed by id (and parked
again), a consumer joining and taking a share of the work, one leaving and
giving its share up at once, a Consume stream counted as a subscription, the
group metrics' names, and a Python consumer going on after a restart."""

from __future__ import annotations

import asyncio
import time
import urllib.request
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message
from prometheus_client.parser import text_string_to_metric_families

from chronicle.v1 import admin_service_pb2, event_service_pb2
from chronicle.v1 import subscription_group_service_pb2 as pb
from chronicle.v1 import subscription_group_service_pb2_grpc as pb_grpc
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.app import Application, start
from service.client import ChronicleClient, GroupInfo, RemoteError
from service.groups import backoff_ms
from service.store.grouping import GroupParkedEvent, GroupSpec
from service.store.memory import MemoryStore
from service.store.sqlite import SqliteStore
from tests.support.grpc_client import (
    TEST_SETTINGS,
    Client,
    ErrorDetails,
    asking_again_if_lost,
    command,
    details_of,
    running_server,
)
from tests.support.processes import free_port
from tests.support.waiting import eventually

READ_TIMEOUT = 20.0


@dataclass
class Served:
    app: Application
    raw: Client  # plain channel: writes, raw Consume streams, audit
    client: ChronicleClient  # the groups' administration


@asynccontextmanager
async def serving(store: MemoryStore | None = None, **overrides: object) -> AsyncIterator[Served]:
    settings = replace(TEST_SETTINGS, anonymous_admin=True, poll_seconds=0.1, lease_seconds=30.0)
    async with (
        running_server(store or MemoryStore(), settings=replace(settings, **overrides)) as (app, raw),  # type: ignore[arg-type]
        ChronicleClient.connect(app.address) as client,
    ):
        yield Served(app, raw, client)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    # Leases of 30 s: no segment changes hands by a lease lapsing here.
    async with serving() as serving_:
        yield serving_


async def write(raw: Client, aggregate_id: str, message: Message, *, origin: str = "tests") -> int:
    """Submit one command; the position of the event it recorded."""
    response = await raw.submit(command(aggregate_id, message, origin=origin))
    (event,) = response.events
    return int(event.position)


def in_segment(segment: int, segments: int, prefix: str) -> str:
    """An aggregate id whose CRC-32, modulo ``segments``, is ``segment``."""
    for n in range(1000):
        candidate = f"{prefix}-{n}"
        if zlib.crc32(candidate.encode()) % segments == segment:
            return candidate
    raise AssertionError("no such id")


class Consumer:
    """One raw Consume stream, joined."""

    def __init__(self, call: grpc.aio.StreamStreamCall[pb.ConsumeRequest, pb.ConsumeResponse], member: str) -> None:
        self.call = call
        self.member = member

    async def batch(self, within: float | None = READ_TIMEOUT) -> list[pb.Delivery]:
        message = await asyncio.wait_for(self.call.read(), within)
        assert message is not grpc.aio.EOF and message.HasField("deliveries"), message
        return list(message.deliveries.deliveries)

    async def take(self, count: int) -> list[pb.Delivery]:
        """The next ``count`` deliveries: more in one message is a failure."""
        taken: list[pb.Delivery] = []
        while len(taken) < count:
            taken += await self.batch()
        return taken

    async def ack(self, *deliveries: pb.Delivery) -> None:
        await self.call.write(pb.ConsumeRequest(ack=pb.Ack(event_ids=[d.event.event_id for d in deliveries])))

    async def nack(self, reason: str, *deliveries: pb.Delivery) -> None:
        ids = [d.event.event_id for d in deliveries]
        await self.call.write(pb.ConsumeRequest(nack=pb.Nack(event_ids=ids, reason=reason)))


def start_request(group: str, consumer: str = "worker", max_in_flight: int = 0) -> pb.ConsumeRequest:
    return pb.ConsumeRequest(start=pb.ConsumeStart(group=group, consumer=consumer, max_in_flight=max_in_flight))


@asynccontextmanager
async def consuming(
    raw: Client, group: str, consumer: str = "worker", *, max_in_flight: int = 0
) -> AsyncIterator[Consumer]:
    """A Consume stream of ``group``, joined; cancelled after."""
    call = pb_grpc.SubscriptionGroupServiceStub(raw.channel).Consume()
    try:
        await call.write(start_request(group, consumer, max_in_flight))
        first = await asyncio.wait_for(call.read(), READ_TIMEOUT)
        assert first is not grpc.aio.EOF and first.HasField("joined"), first
        yield Consumer(call, first.joined.consumer)
    finally:
        call.cancel()


def versions(deliveries: Sequence[pb.Delivery]) -> list[tuple[str, int]]:
    return sorted((d.event.aggregate_id, d.event.version) for d in deliveries)


async def drain(served: Served, group: str) -> list[pb.Delivery]:
    """Consume ``group``, acking each delivery as it comes, until the group
    stands at the log's head with every delivery counted: what it delivered.
    (Its position reaches the head only once every event it read was
    settled, so nothing it would deliver is left out.)"""
    received: list[pb.Delivery] = []
    async with consuming(served.raw, group) as consumer:

        async def ack_all() -> None:
            while True:
                batch = await consumer.batch(within=None)
                received.extend(batch)
                await consumer.ack(*batch)

        acking = asyncio.ensure_future(ack_all())
        try:

            async def caught_up() -> bool:
                info = await served.client.groups.get(group)
                return info.lag == 0 and info.acknowledged == len(received)

            await eventually(caught_up, what=f"{group} caught up with the log")
        finally:
            acking.cancel()
            await asyncio.gather(acking, return_exceptions=True)
    return received


async def parked_count(served: Served, group: str) -> int:
    return int((await served.client.groups.get(group)).parked)


def has_parked(served: Served, group: str, count: int = 1) -> Callable[[], Awaitable[bool]]:
    """For ``eventually``: whether ``group`` has ``count`` parked events."""

    async def check() -> bool:
        return await parked_count(served, group) == count

    return check


# -- what a group reads ----------------------------------------------------------


async def test_a_group_reads_the_log_through_its_filter_and_passes_what_it_does_not_read(served: Served) -> None:
    """ "a filter like Subscribe's (aggregate types, event types, origin)":
    the three combine with AND, a list's entries with OR; and a segment with
    nothing pending checkpoints "how far the log was read for it"."""
    raw, groups = served.raw, served.client.groups
    await write(raw, "acc-1", bank.OpenAccount(owner="ann"), origin="shop")
    await write(raw, "acc-1", bank.Deposit(amount=1), origin="shop")
    await write(raw, "acc-1", bank.Deposit(amount=2), origin="bank")
    await write(raw, "box-1", box.CreateBox(name="tools"), origin="shop")
    head = await write(raw, "box-1", box.RenameBox(name="spares"), origin="shop")
    await groups.create(
        "shop-deposits", aggregate_types=["Account"], event_types=["bank.v1.MoneyDeposited"], origin="shop"
    )
    await groups.create("boxes", aggregate_types=["Box"])
    await groups.create("creations", event_types=["bank.v1.AccountOpened", "box.v1.BoxCreated"])
    await groups.create("closings", event_types=["bank.v1.AccountClosed"])  # nothing matches

    listed = await groups.get("shop-deposits")
    assert listed.filter == pb.GroupFilter(
        aggregate_types=["Account"], event_types=["bank.v1.MoneyDeposited"], origin="shop"
    )
    assert versions(await drain(served, "shop-deposits")) == [("acc-1", 2)]
    assert versions(await drain(served, "boxes")) == [("box-1", 1), ("box-1", 2)]
    assert versions(await drain(served, "creations")) == [("acc-1", 1), ("box-1", 1)]
    assert await drain(served, "closings") == []
    closings = await groups.get("closings")
    assert (closings.position, closings.log_head, closings.acknowledged) == (head, head, 0)


async def test_a_group_starts_after_a_position_or_at_the_end_of_the_log(served: Served) -> None:
    raw, groups = served.raw, served.client.groups
    positions = [await write(raw, "acc-1", bank.OpenAccount(owner="ann"))]
    positions += [await write(raw, "acc-1", bank.Deposit(amount=n)) for n in (1, 2)]
    after = await groups.create("after", after_position=positions[1])
    assert after.position == positions[1]
    assert versions(await drain(served, "after")) == [("acc-1", 3)]

    end = await groups.create("end", from_end=True, after_position=positions[0])  # after_position then ignored
    assert end.position == end.log_head == positions[2]
    await write(raw, "acc-2", bank.OpenAccount(owner="bo"))
    assert versions(await drain(served, "end")) == [("acc-2", 1)]


# -- settings ------------------------------------------------------------------------


def settings_of(group: GroupInfo) -> tuple[int, float, float, float, int]:
    return (
        group.max_delivery_attempts,
        group.retry_backoff.ToTimedelta().total_seconds(),
        group.max_retry_backoff.ToTimedelta().total_seconds(),
        group.ack_timeout.ToTimedelta().total_seconds(),
        group.segments,
    )


async def refusal(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(RemoteError) as raised:
        await call
    return raised.value.code, raised.value.reason


async def test_group_settings_default_and_are_bounded_as_documented(served: Served) -> None:
    """`max_delivery_attempts` (5), `retry_backoff` (1 s),
    `max_retry_backoff` (60 s, or `retry_backoff` if longer), `ack_timeout`
    (30 s), `segments` (16); a power of two up to 1,024, up to 100 attempts,
    durations up to an hour, an ack timeout from 10 ms; a replay naming an
    empty or unprintable id is INVALID_EVENT_ID."""
    groups = served.client.groups
    created = await groups.create("defaults")
    assert settings_of(created) == (5, 1.0, 60.0, 30.0, 16)
    assert settings_of(await groups.get("defaults")) == (5, 1.0, 60.0, 30.0, 16)
    longest = await groups.create(
        "longest",
        segments=1024,
        max_delivery_attempts=100,
        retry_backoff=3600,
        max_retry_backoff=3600,
        ack_timeout=3600,
    )
    assert settings_of(longest) == (100, 3600.0, 3600.0, 3600.0, 1024)
    shortest = await groups.create("shortest", segments=1, max_delivery_attempts=1, ack_timeout=0.01)
    assert settings_of(shortest) == (1, 1.0, 60.0, 0.01, 1)
    long_first = await groups.create("long-first", retry_backoff=120)
    assert settings_of(long_first)[1:3] == (120.0, 120.0)
    invalid = (grpc.StatusCode.INVALID_ARGUMENT, "BAD_GROUP_SETTING")
    for settings in ({"ack_timeout": 0.009}, {"ack_timeout": 3601}, {"max_retry_backoff": 3601}, {"segments": 1536}):
        assert await refusal(groups.create("refused", **settings)) == invalid, settings
    unprintable = (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_EVENT_ID")
    for event_id in ("", "a\x00b"):
        assert await refusal(groups.replay("defaults", [event_id])) == unprintable, event_id


# -- delivering --------------------------------------------------------------------------


async def test_different_aggregates_go_out_together_up_to_max_in_flight_100_unless_set(served: Served) -> None:
    raw, groups = served.raw, served.client.groups
    await asyncio.gather(*(write(raw, f"acc-{n}", bank.OpenAccount(owner="ann")) for n in range(150)))
    await groups.create("wide", segments=1)
    await groups.create("narrow", segments=1)
    for group, window in (("wide", 0), ("narrow", 3)):
        expected = window or 100
        async with consuming(raw, group, max_in_flight=window) as consumer:
            out = await consumer.take(expected)
            assert len(out) == expected, group  # and none beyond the window...
            assert len({d.event.aggregate_id for d in out}) == expected
            await consumer.ack(out[0])
            assert len(await consumer.batch()) == 1, group  # ...until one is acked: then one more


async def test_the_group_s_position_is_its_lowest_segment_checkpoint_before_its_oldest_unanswered_event(
    served: Served,
) -> None:
    """ "position (lowest segment checkpoint)"; a segment's checkpoint is "the
    position before its oldest event not yet acknowledged or parked"; the
    acks it passed are counted, those after it not yet."""
    raw, groups = served.raw, served.client.groups
    a, b, c = in_segment(0, 2, "a"), in_segment(1, 2, "b"), in_segment(1, 2, "c")
    p_a = await write(raw, a, bank.OpenAccount(owner="ann"))
    p_b = await write(raw, b, bank.OpenAccount(owner="bo"))
    p_c = await write(raw, c, bank.OpenAccount(owner="cy"))
    assert p_a < p_b < p_c
    await groups.create("ledger", segments=2)
    async with consuming(raw, "ledger") as consumer:
        out = {d.event.aggregate_id: d for d in await consumer.take(3)}
        await consumer.ack(out[a], out[c])  # b's goes unanswered

        async def held_at_b() -> bool:
            group = await groups.get("ledger")
            return group.position == p_b - 1 and group.acknowledged >= 1

        await eventually(held_at_b, what="the position held before b's event")
        group = await groups.get("ledger")
        # Segment 0 stands at the head, segment 1 before b's event; a's ack
        # is counted, c's (after b's, in b's segment) not yet.
        assert (group.position, group.log_head, group.lag, group.acknowledged) == (p_b - 1, p_c, p_c - p_b + 1, 1)

        await consumer.ack(out[b])

        async def at_head() -> bool:
            return (await groups.get("ledger")).position == p_c

        await eventually(at_head, what="the position at the head")
        group = await groups.get("ledger")
        assert (group.lag, group.acknowledged) == (0, 3)


# -- retries and parking --------------------------------------------------------------


async def test_a_nacked_event_waits_the_backoff_doubling_each_attempt_then_is_parked(served: Served) -> None:
    raw, groups = served.raw, served.client.groups
    await write(raw, "acc-1", bank.OpenAccount(owner="ann"))
    await groups.create("backoff", retry_backoff=0.1, max_retry_backoff=0.2, max_delivery_attempts=4, segments=1)
    waits = []
    async with consuming(raw, "backoff") as consumer:
        (delivery,) = await consumer.take(1)
        assert delivery.attempt == 1
        for attempt in (2, 3, 4):
            nacked = time.monotonic()
            await consumer.nack("database down", delivery)
            (again,) = await consumer.take(1)
            waits.append(time.monotonic() - nacked)
            assert (again.event.event_id, again.attempt) == (delivery.event.event_id, attempt)
            delivery = again
        reason = "still down: " + "." * 1200
        await consumer.nack(reason, delivery)
        await eventually(has_parked(served, "backoff"), what="the event parked after four deliveries")
    (parked,) = await groups.parked("backoff")
    # Parked with the last nack's reason (cut to 1,000 characters).
    assert (parked.event_id, parked.attempts, parked.reason) == (delivery.event.event_id, 4, reason[:1000])
    # Never sooner than the backoff, doubled each attempt (a lower bound:
    # how much later is the machine's business).
    assert waits[0] >= 0.1 and waits[1] >= 0.2 and waits[2] >= 0.2, waits
    # ...up to max_retry_backoff.
    spec = GroupSpec(name="g", retry_backoff_ms=100, max_retry_backoff_ms=250)
    assert [backoff_ms(spec, attempt) for attempt in range(1, 6)] == [100, 200, 250, 250, 250]


async def test_an_event_never_answered_is_parked_with_ack_timeout_and_its_aggregate_goes_on(served: Served) -> None:
    raw, groups = served.raw, served.client.groups
    opened = await write(raw, "acc-1", bank.OpenAccount(owner="ann"))
    await write(raw, "acc-1", bank.Deposit(amount=1))
    await groups.create("timeouts", ack_timeout=0.05, retry_backoff=0.01, max_delivery_attempts=2, segments=1)
    async with consuming(raw, "timeouts") as consumer:
        (first,) = await consumer.take(1)
        (second,) = await consumer.take(1)  # the first never answered
        assert [(d.event.version, d.attempt) for d in (first, second)] == [(1, 1), (1, 2)]
        (after,) = await consumer.take(1)  # the second neither: parked, and the aggregate goes on
        assert (after.event.version, after.attempt, after.replayed) == (2, 1, False)
        await consumer.ack(after)
        await eventually(has_parked(served, "timeouts"), what="the event parked")
    (parked,) = await groups.parked("timeouts")
    assert (parked.event_id, parked.position, parked.attempts, parked.reason) == (
        first.event.event_id,
        opened,
        2,
        "ACK_TIMEOUT",
    )


async def test_parked_events_are_listed_in_pages_and_replayed_by_id_parked_again_or_settled(served: Served) -> None:
    """`ListParked` by position in pages; `ReplayParked` of the ones named,
    delivered `replayed` with attempts counted afresh; "failed again to the
    maximum, it is parked again", acknowledged it leaves the list; each
    replay audited."""
    raw, groups = served.raw, served.client.groups
    positions = [await write(raw, f"acc-{n}", bank.OpenAccount(owner="ann")) for n in range(3)]
    await groups.create("pages", max_delivery_attempts=2, retry_backoff=0.01, segments=1)
    async with consuming(raw, "pages") as consumer:
        for _ in range(2):
            await consumer.nack("cannot parse", *await consumer.take(3))

        async def all_parked() -> bool:
            return await parked_count(served, "pages") == 3

        await eventually(all_parked, what="three events parked")
        page = await groups.parked("pages", limit=2)
        assert [p.position for p in page] == positions[:2]
        rest = await groups.parked("pages", after_position=page[-1].position, limit=2)
        assert [p.position for p in rest] == positions[2:]
        middle = page[1].event_id

        assert await groups.replay("pages", [middle]) == 1
        listed = await groups.parked("pages")
        assert [(p.position, p.replaying) for p in listed] == [
            (positions[0], False),
            (positions[1], True),
            (positions[2], False),
        ]
        replayed = []
        for _ in range(2):
            (delivery,) = await consumer.take(1)
            replayed.append((delivery.event.event_id, delivery.attempt, delivery.replayed))
            await consumer.nack("cannot parse either", delivery)
        assert replayed == [(middle, 1, True), (middle, 2, True)]

        async def parked_again() -> bool:
            (entry,) = [p for p in await groups.parked("pages") if p.event_id == middle]
            return not entry.replaying

        await eventually(parked_again, what="the replayed event parked again")
        (entry,) = [p for p in await groups.parked("pages") if p.event_id == middle]
        assert (entry.attempts, entry.reason, await parked_count(served, "pages")) == (2, "cannot parse either", 3)

        assert await groups.replay("pages", [middle]) == 1
        (fixed,) = await consumer.take(1)
        assert (fixed.event.event_id, fixed.attempt, fixed.replayed) == (middle, 1, True)  # counted afresh
        await consumer.ack(fixed)

        async def settled() -> bool:
            return await parked_count(served, "pages") == 2

        await eventually(settled, what="the acknowledged replay gone from the parked events")
        assert [p.position for p in await groups.parked("pages")] == [positions[0], positions[2]]
    audit = await raw.admin.QueryAudit(admin_service_pb2.QueryAuditRequest())
    replays = [(e.aggregate_id, e.reason) for e in audit.entries if e.command_type.endswith("/ReplayParked")]
    assert replays == [("group:pages", "")] * 2


class HeldParks(MemoryStore):
    """Holds the writing of replayed events parked again while ``release``
    is clear; counts the sessions' looks for events to replay."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.release.set()
        self.parking = asyncio.Event()
        self.looked = 0

    async def repark(self, name: str, events: Sequence[GroupParkedEvent]) -> None:
        self.parking.set()
        await self.release.wait()
        await super().repark(name, events)

    async def parked_to_replay(self, name: str, segments: Sequence[int], limit: int) -> list[GroupParkedEvent]:
        self.looked += 1
        return await super().parked_to_replay(name, segments, limit)


async def test_a_replay_that_fails_to_the_maximum_is_parked_not_replayed_again_while_its_park_is_written() -> None:
    """ "failed again to the maximum, it is parked again". Seen before the
    fix: a session that looked for replays while the park was being written
    found the event still marked for replay (and no longer in flight) and
    delivered it again, a fresh replay."""
    store = HeldParks()
    async with serving(store, poll_seconds=0.05) as served:
        raw, groups = served.raw, served.client.groups
        await write(raw, "acc-1", bank.OpenAccount(owner="ann"))
        await groups.create("again", max_delivery_attempts=1, segments=1)
        async with consuming(raw, "again") as consumer:
            (first,) = await consumer.take(1)
            await consumer.nack("cannot parse", first)
            await eventually(has_parked(served, "again"), what="the event parked")
            store.release.clear()
            assert await groups.replay("again") == 1
            (replayed,) = await consumer.take(1)
            assert (replayed.event.event_id, replayed.attempt, replayed.replayed) == (first.event.event_id, 1, True)
            await consumer.nack("cannot parse either", replayed)
            await asyncio.wait_for(store.parking.wait(), READ_TIMEOUT)
            looked = store.looked
            await eventually(lambda: store.looked >= looked + 3, what="the session looking for replays meanwhile")
            store.release.set()

            async def parked_again() -> bool:
                (entry,) = await groups.parked("again")
                return not entry.replaying and entry.reason == "cannot parse either"

            await eventually(parked_again, what="the replay parked again")
            await write(raw, "acc-2", bank.OpenAccount(owner="bo"))
            (after,) = await consumer.take(1)  # not the parked event once more
            assert (after.event.aggregate_id, after.replayed) == ("acc-2", False)


async def test_an_acknowledged_replay_leaves_the_parked_events_and_counts_as_acknowledged_once(
    served: Served,
) -> None:
    """ "acknowledged, it leaves the parked list" and the group's
    `acknowledged` counts it, once. Before, an acknowledged replay left the
    parked count and was never counted as acknowledged: the event dropped
    out of the group's figures (acknowledged + parked one short)."""
    raw, groups = served.raw, served.client.groups
    await write(raw, "acc-1", bank.OpenAccount(owner="ann"))
    await write(raw, "acc-2", bank.OpenAccount(owner="bo"))
    await groups.create("counted", max_delivery_attempts=1, segments=1)
    async with consuming(raw, "counted") as consumer:
        first, second = sorted(await consumer.take(2), key=lambda d: d.event.position)
        await consumer.nack("cannot parse", first)
        await consumer.ack(second)

        async def settled() -> bool:
            info = await groups.get("counted")
            return (info.lag, info.acknowledged, info.parked) == (0, 1, 1)

        await eventually(settled, what="one acknowledged, one parked")
        assert await groups.replay("counted") == 1
        (replayed,) = await consumer.take(1)
        assert (replayed.event.event_id, replayed.replayed) == (first.event.event_id, True)
        await consumer.ack(replayed)
        await consumer.ack(replayed)  # a consumer that retries its ack: still once

        async def counted() -> bool:
            info = await groups.get("counted")
            return (info.acknowledged, info.parked) == (2, 0)

        await eventually(counted, what="the replay acknowledged, counted, gone from the parked events")
        await asyncio.sleep(0.3)  # a few commit rounds more: nothing counted twice
        info = await groups.get("counted")
        assert (info.acknowledged, info.parked) == (2, 0)


async def test_a_replay_whose_consumers_go_away_without_an_answer_is_parked_again_after_its_attempts(
    served: Served,
) -> None:
    """A replayed poison event that kills every consumer it reaches is
    parked again (`CONSUMER_LOST`) after `max_delivery_attempts`, as a
    first delivery is. Before, a replay's attempts were not carried from
    one consumer's session to the next: it went to every new consumer as
    attempt 1, for good."""
    raw, groups = served.raw, served.client.groups
    await write(raw, "acc-1", bank.OpenAccount(owner="ann"))
    await groups.create("poison", max_delivery_attempts=2, retry_backoff=0.01, segments=1)

    async def gone() -> bool:
        return not (await groups.get("poison")).consumers

    async with consuming(raw, "poison") as consumer:
        for _ in range(2):
            await consumer.nack("cannot parse", *await consumer.take(1))
        await eventually(has_parked(served, "poison"), what="the event parked")
    await eventually(gone, what="the consumer gone")
    assert await groups.replay("poison") == 1
    attempts = []
    for n in range(2):
        async with consuming(raw, "poison", f"doomed-{n}") as consumer:
            (delivery,) = await consumer.take(1)  # it dies holding the replay
            attempts.append((delivery.replayed, delivery.attempt))
        await eventually(gone, what="the consumer gone")
    assert attempts == [(True, 1), (True, 2)]

    async def parked_again() -> bool:
        (entry,) = await groups.parked("poison")
        return not entry.replaying

    async with consuming(raw, "poison", "next") as consumer:
        await eventually(parked_again, what="the replay parked again")
        (entry,) = await groups.parked("poison")
        assert (entry.attempts, entry.reason) == (2, "CONSUMER_LOST")
        with pytest.raises(TimeoutError):  # not delivered to the next consumer
            await consumer.batch(within=0.5)
    assert await groups.replay("poison") == 1  # replayed again on request, its attempts counted afresh
    async with consuming(raw, "poison", "fixed") as consumer:
        (delivery,) = await consumer.take(1)
        assert (delivery.replayed, delivery.attempt) == (True, 1)
        await consumer.ack(delivery)
        await eventually(has_parked(served, "poison", 0), what="the replay acknowledged")


# -- consumers sharing a group ----------------------------------------------------------


async def test_a_consumer_that_joins_takes_a_share_with_the_events_in_flight_there_as_a_further_attempt() -> None:
    """ "when one joins, the shares are evened out and some aggregates move
    to it (the events their previous consumer had in flight may then reach
    both ...)"; "A segment handed to another consumer while an event is in
    flight (a consumer joined) counts that delivery too"; the late ack of
    the one it lost is no error, and each event is counted once."""
    async with serving(lease_seconds=1.5) as served:
        raw, groups = served.raw, served.client.groups
        x, y = in_segment(0, 2, "x"), in_segment(1, 2, "y")
        for aggregate in (x, y):
            await write(raw, aggregate, bank.OpenAccount(owner="ann"))
            await write(raw, aggregate, bank.Deposit(amount=1))
        await groups.create("joining", segments=2)
        async with consuming(raw, "joining", "first") as first:
            held = {d.event.aggregate_id: d for d in await first.take(2)}  # held, unanswered
            assert sorted((a, d.event.version, d.attempt) for a, d in held.items()) == [(x, 1, 1), (y, 1, 1)]
            group = await groups.get("joining")
            assert [(c.consumer, list(c.segments)) for c in group.consumers] == [(first.member, [0, 1])]
            async with consuming(raw, "joining", "second") as second:

                async def evened() -> bool:
                    return sorted(len(c.segments) for c in (await groups.get("joining")).consumers) == [1, 1]

                await eventually(evened, what="the segments shared one each")
                group = await groups.get("joining")
                ((taken,),) = [list(c.segments) for c in group.consumers if c.consumer == second.member]
                moved, kept = (x, y) if taken == 0 else (y, x)  # CRC-32 of the id, modulo the segment count
                (again,) = await second.take(1)
                assert (again.event.aggregate_id, again.event.version, again.attempt) == (moved, 1, 2)
                await second.ack(again)
                (later,) = await second.take(1)
                assert (later.event.aggregate_id, later.event.version, later.attempt) == (moved, 2, 1)
                await second.ack(later)
                await first.ack(held[moved], held[kept])  # the moved one's ack comes late: no error
                (kept_next,) = await first.take(1)
                assert (kept_next.event.aggregate_id, kept_next.event.version) == (kept, 2)
                await first.ack(kept_next)

                async def all_counted() -> bool:
                    group = await groups.get("joining")
                    return group.lag == 0 and group.acknowledged == 4

                await eventually(all_counted, what="four events acknowledged, each counted once")
                assert (await groups.get("joining")).acknowledged == 4


async def test_a_consumer_that_leaves_gives_its_segments_up_at_once(served: Served) -> None:
    """ "A stream that ends gives its segments up at once": with leases of
    30 s, not by their lapse."""
    raw, groups = served.raw, served.client.groups
    await groups.create("leaving", segments=4)
    async with consuming(raw, "leaving", "first") as first:
        group = await groups.get("leaving")
        assert [(c.consumer, list(c.segments)) for c in group.consumers] == [(first.member, [0, 1, 2, 3])]

    async def gone() -> bool:
        return not (await groups.get("leaving")).consumers

    await eventually(gone, within=10, what="the consumer gone, its leases with it")
    async with consuming(raw, "leaving", "second") as second:
        group = await groups.get("leaving")
        assert [(c.consumer, list(c.segments)) for c in group.consumers] == [(second.member, [0, 1, 2, 3])]


async def test_a_segment_given_up_in_order_delivers_again_only_what_was_unsettled(
    served: Served,
) -> None:
    """ "What a move delivers again": the checkpoint is the contiguous
    settled prefix, so it stays before the oldest unsettled event; a holder
    that gives the segment up in order (its stream ends) hands the events
    it acknowledged after that one over with it, and the next holder gets
    the held event alone (before the fix it got the acknowledged ones
    again too)."""
    raw, groups = served.raw, served.client.groups
    for name in ("acc-1", "acc-2", "acc-3"):
        await write(raw, name, bank.OpenAccount(owner="ann"))
    await groups.create("moving", segments=1)
    async with consuming(raw, "moving", "first") as first:
        delivered = await first.take(3)
        held, *done = sorted(delivered, key=lambda d: d.event.position)
        await first.ack(*done)  # the oldest goes unanswered: the checkpoint stays before it

        async def counted() -> bool:
            return (await groups.get("moving")).position == held.event.position - 1

        await eventually(counted, what="the acks taken, the checkpoint before the held event")
    async with consuming(raw, "moving", "second") as second:
        again = await second.take(1)
        await second.ack(*again)

        async def acknowledged() -> bool:
            group = await groups.get("moving")
            return group.acknowledged == 3 and group.lag == 0

        await eventually(acknowledged, what="each event counted once")
        with pytest.raises(TimeoutError):  # the acknowledged ones do not come again
            await second.batch(within=1)
    assert versions(again) == versions([held])
    assert [d.attempt for d in again] == [2]


async def test_a_group_deleted_and_created_again_with_the_same_settings_counts_attempts_afresh(
    served: Served,
) -> None:
    """ "A group deleted and created again ... starts with none" of the
    attempt counts the replica kept. They were kept per group settings, so
    the same settings again took the old counts over: the new group's first
    delivery of an event came as attempt 2 (and with one attempt allowed,
    the event was parked CONSUMER_LOST before it was ever delivered)."""
    raw, groups = served.raw, served.client.groups
    await write(raw, "acc-1", bank.OpenAccount(owner="ann"))
    for round_ in range(2):
        await groups.create("again", max_delivery_attempts=2, segments=1)
        async with consuming(raw, "again", f"worker-{round_}") as consumer:
            (delivery,) = await consumer.take(1)  # left unanswered: the stream goes
            assert (delivery.event.aggregate_id, delivery.attempt) == ("acc-1", 1)

        async def left() -> bool:
            return not (await groups.get("again")).consumers

        await eventually(left, what="the consumer gone")
        await groups.delete("again")


# -- limits, metrics, restarts --------------------------------------------------------------


async def refused_stream(open_stream: Callable[[], Awaitable[object]]) -> ErrorDetails:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await asking_again_if_lost(open_stream)
    return details_of(raised.value)


async def test_a_consume_stream_counts_as_a_subscription() -> None:
    """ "A `Consume` stream counts as a subscription (`--max-subscriptions`)"."""
    async with serving(max_subscriptions=1) as served:
        raw = served.raw
        await served.client.groups.create("billing")
        stub = pb_grpc.SubscriptionGroupServiceStub(raw.channel)

        async def subscribe_once() -> object:
            call = raw.events.Subscribe(event_service_pb2.SubscribeRequest())
            try:
                return await call.read()
            finally:
                call.cancel()

        async def consume_once() -> object:
            call = stub.Consume()
            try:
                await call.write(start_request("billing"))
                return await call.read()
            finally:
                call.cancel()

        async with consuming(raw, "billing"):
            subscribe_refused = await refused_stream(subscribe_once)
        gate = served.app.gate
        assert gate is not None
        await eventually(lambda: gate.subscriptions == 0, what="the consumer counted out")
        subscription = raw.events.Subscribe(event_service_pb2.SubscribeRequest())
        try:
            while not (await asyncio.wait_for(subscription.read(), READ_TIMEOUT)).HasField("caught_up"):
                pass
            consume_refused = await refused_stream(consume_once)
        finally:
            subscription.cancel()
    for refused in (subscribe_refused, consume_refused):
        assert (refused.code, refused.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_SUBSCRIPTIONS")


async def test_a_python_consumer_refused_for_want_of_subscriptions_waits_for_room_as_a_subscriber_does() -> None:
    """A server at its --max-subscriptions refuses a Consume with
    RESOURCE_EXHAUSTED TOO_MANY_SUBSCRIPTIONS and a RetryInfo, as it does a
    Subscribe; the Python client's subscribe waits for room, and so does
    its group consumer now (it raised at once)."""
    async with serving(max_subscriptions=1) as served:
        await write(served.raw, "acc-1", bank.OpenAccount(owner="ann"))
        await served.client.groups.create("billing")
        subscription = served.raw.events.Subscribe(event_service_pb2.SubscribeRequest())
        try:
            while not (await asyncio.wait_for(subscription.read(), READ_TIMEOUT)).HasField("caught_up"):
                pass
            consumer = served.client.consume("billing", consumer="worker", reconnect_delay=0.05)
            first = asyncio.ensure_future(anext(aiter(consumer)))
            ended, _ = await asyncio.wait({first}, timeout=1.0)  # refused again and again meanwhile
            assert not ended, first.exception()
        finally:
            subscription.cancel()
        delivery = await asyncio.wait_for(first, READ_TIMEOUT)  # room now
        await delivery.ack()
        await consumer.close()
    assert (delivery.event.aggregate_id, delivery.event.version) == ("acc-1", 1)


def metric(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


async def test_group_lag_and_parked_events_are_exported_under_the_documented_names() -> None:
    """`chronicle_group_lag_positions{group}` and
    `chronicle_group_parked_events{group}` "show the same" as ListGroups; so
    do `chronicle_group_skipped_events{group}` and
    `chronicle_group_dismissed_events{group}`."""
    async with serving(metrics_listen="127.0.0.1:0") as served:
        raw, groups = served.raw, served.client.groups
        head = await write(raw, "acc-1", bank.OpenAccount(owner="ann"))
        await groups.create("idle")
        await groups.create("failing", max_delivery_attempts=1, segments=1)
        head = await write(raw, "acc-2", bank.OpenAccount(owner="bob"))
        async with consuming(raw, "failing") as consumer:
            first, second = await consumer.take(2)
            await consumer.nack("cannot parse", first)
            await consumer.call.write(
                pb.ConsumeRequest(nack=pb.Nack(event_ids=[second.event.event_id], action=pb.NACK_ACTION_SKIP))
            )

            async def parked_and_passed() -> bool:
                group = await groups.get("failing")
                return group.parked == 1 and group.skipped == 1 and group.lag == 0

            await eventually(parked_and_passed, what="the event parked and passed")
        sampler, server = served.app.group_sampler, served.app.metrics_server
        assert sampler is not None and server is not None
        await sampler.sample()  # as its loop does every few seconds
        text = await asyncio.to_thread(fetch, f"http://{server.address}/metrics")
        listed = {g.name: (g.lag, g.parked, g.skipped, g.dismissed) for g in await groups.list()}
    assert listed == {"failing": (0, 1, 1, 0), "idle": (head, 0, 0, 0)}
    for name, (lag, parked, skipped, dismissed) in listed.items():
        assert metric(text, "chronicle_group_lag_positions", group=name) == lag, name
        assert metric(text, "chronicle_group_parked_events", group=name) == parked, name
        assert metric(text, "chronicle_group_skipped_events", group=name) == skipped, name
        assert metric(text, "chronicle_group_dismissed_events", group=name) == dismissed, name


async def test_a_python_consumer_connects_again_after_a_restart_and_goes_on_where_the_group_stands(
    tmp_path: Path,
) -> None:
    """ "ends with `UNAVAILABLE SHUTTING_DOWN` when its server stops: the
    Python client connects again (to the address it was given)"; "The
    position is the server's": the group's checkpoints are in the store."""
    settings = replace(
        TEST_SETTINGS, listen=f"127.0.0.1:{free_port()}", anonymous_admin=True, poll_seconds=0.1, lease_seconds=30.0
    )
    database = tmp_path / "groups.db"
    app = await start(settings, store=SqliteStore(database))
    seen: list[tuple[int, int]] = []
    try:
        async with ChronicleClient.connect(app.address) as client:
            await client.submit("acc-1", bank.OpenAccount(owner="ann"))
            for amount in (1, 2):
                await client.submit("acc-1", bank.Deposit(amount=amount))
            await client.groups.create("billing", segments=1)
            async with client.consume("billing", consumer="worker", reconnect_delay=0.05) as consumer:
                deliveries = aiter(consumer)
                for _ in range(3):
                    delivery = await asyncio.wait_for(anext(deliveries), READ_TIMEOUT)
                    seen.append((delivery.event.version, delivery.attempt))
                    if delivery.event.version < 3:
                        await delivery.ack()  # the third goes unanswered

                async def two_counted() -> bool:
                    return (await client.groups.get("billing")).acknowledged == 2

                await eventually(two_counted, what="two acks counted")
                waiting = asyncio.ensure_future(anext(deliveries))
                await app.stop(grace=1.0)
                app = await start(settings, store=SqliteStore(database))
                again = await asyncio.wait_for(waiting, 30)
                seen.append((again.event.version, again.attempt))
                await again.ack()
                await client.submit("acc-1", bank.Deposit(amount=3))
                last = await asyncio.wait_for(anext(deliveries), READ_TIMEOUT)
                seen.append((last.event.version, last.attempt))
                await last.ack()

                async def all_counted() -> bool:
                    return (await client.groups.get("billing")).acknowledged == 4

                await eventually(all_counted, what="four acks counted")
                await deliveries.aclose()
    finally:
        await app.stop(grace=1.0)
    # The unanswered third came again after the restart (its attempts counted
    # afresh: they are in the memory of the process), the first two did not.
    assert seen == [(1, 1), (2, 1), (3, 1), (3, 1), (4, 1)]
