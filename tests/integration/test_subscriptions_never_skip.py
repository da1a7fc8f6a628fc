"""The hard part of subscriptions, proved on PostgreSQL: transactions commit
in another order than they start, and a subscriber still never skips."""

from __future__ import annotations

import asyncio
import random
from contextlib import AsyncExitStack, ExitStack
from typing import Any

import psycopg
import pytest

from chronicle.v1 import event_service_pb2 as pb
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.store.postgres import PostgresStore
from service.store.postgres.appends import append_statement
from service.store.postgres.group_commit import Append
from service.store.records import LogFilter, NewEvent
from tests.support.events import new_event
from tests.support.grpc_client import Client, command, connect, running_server, submit_retrying
from tests.support.postgres import schema_on_standby
from tests.support.processes import server_process
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres


async def append_in(
    conn: psycopg.AsyncConnection[Any], aggregate_id: str, events: list[NewEvent], expected: int
) -> None:
    """The store's own append statement, in a transaction the test holds open."""
    statement = append_statement([Append(aggregate_id, events, expected, ())])
    await psycopg.AsyncRawCursor(conn).execute(statement.sql, list(statement.params))


async def collect(store: PostgresStore, after: int = 0) -> list[Any]:
    return list((await store.read_log(after, LogFilter(), 1000)).events)


async def test_a_later_writer_waits_for_an_open_earlier_one_and_readers_see_both_in_order(
    postgres_store: PostgresStore, postgres_url: str
) -> None:
    async with await psycopg.AsyncConnection.connect(postgres_url) as slow:
        # The first writer takes its position and holds its transaction open.
        async with slow.transaction():
            await append_in(slow, "a-1", [new_event()], 0)
            later = asyncio.ensure_future(postgres_store.append("a-2", [new_event()], 0))
            await asyncio.sleep(0.3)
            # The later writer cannot commit first: it waits for a position.
            assert not later.done()
            # And a reader sees nothing yet, so it cannot move past the first.
            page = await postgres_store.read_log(0, LogFilter(), 10)
            assert (page.events, page.scanned_to) == ((), 0)
        (second,) = await asyncio.wait_for(later, timeout=10)
    events = await collect(postgres_store)
    assert [(e.aggregate_id, e.position) for e in events] == [("a-1", 1), ("a-2", 2)]
    assert second.position == 2


async def test_an_aborted_writer_leaves_no_gap_and_no_stall(postgres_store: PostgresStore, postgres_url: str) -> None:
    aborted = await psycopg.AsyncConnection.connect(postgres_url)
    async with aborted, aborted.transaction(force_rollback=True):
        await append_in(aborted, "a-1", [new_event(), new_event()], 0)
        later = asyncio.ensure_future(postgres_store.append("a-2", [new_event()], 0))
        await asyncio.sleep(0.1)
        assert not later.done()
    await asyncio.wait_for(later, timeout=10)
    events = await collect(postgres_store)
    # the aborted positions were given back: the log is 1..n with no hole
    assert [(e.aggregate_id, e.position) for e in events] == [("a-2", 1)]


async def test_interleaved_writers_never_make_a_reader_skip(postgres_store: PostgresStore) -> None:
    """Many concurrent appends while a reader follows the log by position:
    it sees every event exactly once, positions strictly increasing."""
    seen: list[Any] = []
    done = asyncio.Event()

    async def reader() -> None:
        position = 0
        while True:
            page = await postgres_store.read_log(position, LogFilter(), 50)
            seen.extend(page.events)
            position = page.scanned_to
            if done.is_set() and not page.events and position == await postgres_store.log_head():
                return
            await postgres_store.wait_for_commit(position, 0.05)

    async def writer(name: str) -> None:
        for version in range(40):
            await postgres_store.append(name, [new_event()], version)

    follower = asyncio.create_task(reader())
    await asyncio.gather(*(writer(f"w-{i}") for i in range(8)))
    done.set()
    await asyncio.wait_for(follower, timeout=30)
    positions = [e.position for e in seen]
    assert positions == sorted(set(positions))
    assert len(seen) == 8 * 40
    assert {e.event_id for e in seen} == {e.event_id for e in await collect(postgres_store)}


async def subscribe_all(
    client: Client, received: dict[str, Any], *, after: int = 0, stop_after: int | None = None
) -> int:
    """Follow the log, recording events by id; return the last position heard.
    Its assertions fail the task running it, so whoever runs it must await
    it (see ``stop_followers``) for them to count."""
    last = after
    call = client.events.Subscribe(pb.SubscribeRequest(after_position=after))
    count = 0
    async for response in call:
        if response.HasField("event"):
            event = response.event
            assert event.event_id not in received, "an event was delivered twice"
            assert event.position > last, "positions must strictly increase"
            received[event.event_id] = event
            last = int(event.position)
            count += 1
            if stop_after is not None and count >= stop_after:
                call.cancel()
                return last
        elif response.HasField("checkpoint"):
            assert response.checkpoint.position >= last
            last = int(response.checkpoint.position)
    return last


async def stopped(followers: list[asyncio.Task[Any]]) -> list[BaseException]:
    """Cancel the followers; return what any of them failed with before it
    was cancelled (a task's exception is lost unless someone awaits it)."""
    for task in followers:
        task.cancel()
    outcomes = await asyncio.gather(*followers, return_exceptions=True)
    return [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, asyncio.CancelledError)]


@pytest.fixture(params=["primary", "standby"])
def reads_from(request: pytest.FixtureRequest) -> tuple[str, list[str]]:
    """Where servers read: the primary itself, or (``--read-database-url``)
    a hot standby of it; the database URL and the servers' extra flags."""
    if request.param == "primary":
        return request.getfixturevalue("postgres_url"), []
    primary_url, standby_url = request.getfixturevalue("standby_urls")
    return primary_url, ["--read-database-url", standby_url]


@pytest.mark.slow
async def test_thousands_of_events_from_two_replicas_reach_every_subscriber_exactly_once(
    reads_from: tuple[str, list[str]],
) -> None:
    """Subscribers on the standby too: it replays the primary's commits in
    order, so what it shows is a prefix of the log, never one with a hole."""
    postgres_url, reading = reads_from
    if reading:
        await schema_on_standby(postgres_url, reading[1])
    rng = random.Random(3)
    with ExitStack() as processes:
        servers = [
            processes.enter_context(server_process(postgres_url, extra=["--poll-seconds", "0.5", *reading]))
            for _ in range(2)
        ]
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(connect(s.address)) for s in servers]
            on_first: dict[str, Any] = {}
            on_second: dict[str, Any] = {}
            resumer: dict[str, Any] = {}

            async def resuming_subscriber() -> None:
                # Disconnects every 300 events and resumes where it left off,
                # alternating replicas.
                position, turn = 0, 0
                while True:
                    position = await subscribe_all(clients[turn % 2], resumer, after=position, stop_after=300)
                    turn += 1

            followers: list[asyncio.Task[Any]] = [
                asyncio.create_task(subscribe_all(clients[0], on_first), name="subscriber on the first replica"),
                asyncio.create_task(subscribe_all(clients[1], on_second), name="subscriber on the second replica"),
                asyncio.create_task(resuming_subscriber(), name="resuming subscriber"),
            ]
            try:
                accounts = [f"acc-{i}" for i in range(40)]
                for account in accounts:
                    await submit_retrying(rng.choice(clients), command(account, bank.OpenAccount(owner="o")))

                async def writer(index: int) -> None:
                    for _ in range(75):
                        account = rng.choice(accounts)
                        await submit_retrying(clients[index % 2], command(account, bank.Deposit(amount=1)))

                await asyncio.gather(*(writer(i) for i in range(40)))
                with psycopg.connect(postgres_url) as conn:
                    committed = {str(r[0]) for r in conn.execute("SELECT event_id FROM chronicle.events").fetchall()}
                assert len(committed) == 40 + 40 * 75

                def all_received() -> bool:
                    for task in followers:
                        if task.done():  # a follower ends only by failing: raise what it failed with
                            task.result()
                            raise AssertionError(f"the {task.get_name()} ended")
                    return all(set(r) == committed for r in (on_first, on_second, resumer))

                await eventually(all_received, within=20, what="every subscriber receiving every event")
                if reading:  # and the servers did read from the standby
                    with psycopg.connect(reading[1]) as standby:
                        (readers,) = standby.execute(
                            "SELECT count(*) FROM pg_stat_activity"
                            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        ).fetchone() or (0,)
                    assert readers > 0
            finally:
                failures = await stopped(followers)
            if failures:  # a check that failed after the last event arrived
                raise failures[0]
            for received in (on_first, on_second, resumer):
                assert set(received) == committed
                positions = sorted(e.position for e in received.values())
                assert len(positions) == len(set(positions))


@pytest.mark.parametrize("pages", [False, True], ids=["events", "pages"])
async def test_a_slow_subscriber_reads_ahead_one_page_and_slows_no_one(postgres_url: str, pages: bool) -> None:
    # Messages of at most 1 MiB make pages of about 256 KiB (a quarter).
    page_bytes = 256 * 1024
    store = PostgresStore(postgres_url, pool_size=8)
    observed: Any = ObservedReads(store)
    settings = {"poll_seconds": 0.2, "max_message_bytes": 4 * page_bytes, "max_event_bytes": page_bytes}
    # The slow client's flow-control window stays at its initial 64 KiB
    # (gRPC would otherwise grow it to megabytes for a fast link): what the
    # transport holds for it is then small and known.
    small_window = [("grpc.http2.bdp_probe", 0)]
    async with (
        running_server(observed, **settings) as (app, client),  # type: ignore[arg-type]
        connect(app.address, options=small_window) as slow_client,
    ):
        slow = slow_client.events.Subscribe(pb.SubscribeRequest(aggregate_types=["Account"], pages=pages))
        first = await slow.read()  # then it stops reading
        assert first.HasField("caught_up")
        fast_seen: list[Any] = []

        async def fast() -> None:
            async for response in client.events.Subscribe(pb.SubscribeRequest(pages=True)):
                fast_seen.extend(response.page.events)

        fast_task = asyncio.create_task(fast())
        accounts = [f"acc-{i}" for i in range(50)]
        # Events of ~8 KiB (metadata is copied to every event): 16 MiB in all,
        # far more than a page, the transport's window and socket buffers hold.
        padding = {"pad1": "x" * 4000, "pad2": "y" * 4000}
        await asyncio.gather(
            *(client.submit(command(a, bank.OpenAccount(owner="o"), metadata=padding)) for a in accounts)
        )
        for round_ in range(40):
            await asyncio.gather(
                *(client.submit(command(a, bank.Deposit(amount=round_ + 1), metadata=padding)) for a in accounts)
            )
        total = 50 * 41
        for _ in range(400):
            if len(fast_seen) >= total:
                break
            await asyncio.sleep(0.05)
        assert len(fast_seen) == total  # the fast subscriber was not held back
        # The slow one stopped reading after its first message: the server
        # read for it the page it is sending and one more, and the transport
        # took what the client's window and the sockets hold (a few hundred
        # kilobytes here). Without flow control it would read all 16 MiB.
        event_bytes = 8 * 1024 + 300
        slow_reads = observed.events_read_for(LogFilter(aggregate_types=frozenset({"Account"})))
        bound = (2 * page_bytes + 256 * 1024) // event_bytes
        assert slow_reads <= bound, f"read {slow_reads} events (bound {bound}) for a subscriber that took none"
        slow.cancel()
        fast_task.cancel()


@pytest.mark.parametrize("pages", [False, True], ids=["events", "pages"])
async def test_a_stopped_subscriber_holds_at_most_two_pages_then_nothing_and_misses_nothing(
    postgres_url: str, pages: bool
) -> None:
    """What the server holds for a client that stops reading, by its own
    count (``chronicle_subscription_held_bytes``): the page being sent and
    one read ahead while the stream moves, nothing once it has waited in the
    same write for two sweeps; and the client that reads again gets every
    event once, in order."""
    store = PostgresStore(postgres_url, pool_size=8)
    small_window = [("grpc.http2.bdp_probe", 0)]  # its window stays at 64 KiB
    async with (
        running_server(store, poll_seconds=0.2, subscription_stall_seconds=0.2) as (app, client),
        connect(app.address, options=small_window) as slow_client,
    ):
        # Events of ~8 KiB: 4 MiB in all, far more than two pages of 1 MiB,
        # the client's window and the sockets' buffers.
        padding = {"pad1": "x" * 4000, "pad2": "y" * 4000}
        accounts = [f"acc-{i}" for i in range(25)]
        for round_ in range(21):
            message = bank.OpenAccount(owner="o") if round_ == 0 else bank.Deposit(amount=round_)
            await asyncio.gather(*(client.submit(command(a, message, metadata=padding)) for a in accounts))
        total = 25 * 21
        held = app.subscriptions.held
        slow = slow_client.events.Subscribe(pb.SubscribeRequest(pages=pages))
        first = await slow.read()  # then it stops reading
        most = 0

        def let_go() -> bool:
            nonlocal most
            most = max(most, held.bytes)
            return held.let_go >= 1 and held.bytes == 0

        await eventually(let_go, what="the stalled stream letting go of its pages")
        page = 1024 * 1024 + 8 * 1024 + 300  # a store read ends with the event that reaches 1 MiB
        assert 0 < most <= 2 * page
        received = list(first.page.events) if pages else [first.event]
        while len(received) < total:
            response = await slow.read()
            received += list(response.page.events) if pages else [response.event] if response.HasField("event") else []
        assert [event.position for event in received] == list(range(1, total + 1))
        slow.cancel()


class ObservedReads:
    """Counts the events read from the log, per filter."""

    def __init__(self, inner: PostgresStore) -> None:
        self.inner = inner
        self.reads: dict[LogFilter, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def read_log(self, after_position: int, log_filter: LogFilter, limit: int, **options: Any) -> Any:
        page = await self.inner.read_log(after_position, log_filter, limit, **options)
        self.reads[log_filter] = self.reads.get(log_filter, 0) + len(page.events)
        return page

    def events_read_for(self, log_filter: LogFilter) -> int:
        return self.reads.get(log_filter, 0)


@pytest.mark.slow
async def test_events_written_through_one_replica_wake_subscribers_on_another(postgres_url: str) -> None:
    """The subscriber's replica polls only once a minute here: the event can
    only arrive in time through LISTEN/NOTIFY."""
    with (
        server_process(postgres_url, extra=["--poll-seconds", "60"]) as reader,
        server_process(postgres_url) as writer,
    ):
        async with connect(reader.address) as subscriber, connect(writer.address) as client:
            stream = subscriber.events.Subscribe(pb.SubscribeRequest(from_end=True))
            first = await stream.read()
            assert first.HasField("caught_up")
            await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
            live = await asyncio.wait_for(stream.read(), timeout=20)
            assert live.event.aggregate_id == "acc-1"
            stream.cancel()
