"""Reads from a hot standby (``--read-database-url``): a primary and a
streaming-replication standby made with ``pg_basebackup -R``
(tests/support/postgres.py). The standby is only ever behind, never wrong:
a reader following the log there never skips, and a client that must read
its own writes waits for a position. Replay is paused on the standby
(``pg_wal_replay_pause``) to make the lag as long as the test needs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import grpc
import psycopg
import pytest

from chronicle.v1 import event_service_pb2 as pb
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.client import ChronicleClient, RetryPolicy
from service.errors import ChronicleError, StoreUnavailable
from service.store.postgres import PostgresStore
from service.store.postgres.standby import StandbyStore
from service.store.records import LogFilter, RecordedEvent, Snapshot
from tests.support.events import new_event
from tests.support.grpc_client import TEST_SETTINGS, command, details_of, running_server
from tests.support.waiting import eventually

pytestmark = pytest.mark.postgres


@pytest.fixture
async def stores(standby_urls: tuple[str, str]) -> AsyncIterator[tuple[PostgresStore, StandbyStore]]:
    primary_url, standby_url = standby_urls
    primary = PostgresStore(primary_url, pool_size=4)
    await primary.open()
    standby = StandbyStore(standby_url, primary=primary, pool_size=4)
    await standby.open()
    await replicated(standby)
    yield primary, standby
    await standby.close()
    await primary.close()


async def replicated(standby: StandbyStore) -> None:
    """Wait until the schema the primary made has reached the standby
    (until then its reads are UNAVAILABLE, READ_DATABASE_NOT_READY)."""

    async def ready() -> bool:
        try:
            await standby.ping()
            await standby.log_head()
        except StoreUnavailable:
            return False
        return True

    await eventually(ready, within=20, what="the schema replicated to the standby")


@contextmanager
def replay_paused(standby_url: str) -> Iterator[None]:
    """The standby stops applying what the primary sends, until the end."""
    with psycopg.connect(standby_url, autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
        try:
            yield
        finally:
            conn.execute("SELECT pg_wal_replay_resume()")


async def follow(log: StandbyStore, until: int) -> list[RecordedEvent]:
    """Read the standby's log by position up to ``until``, as a subscriber does."""
    seen: list[RecordedEvent] = []
    position = 0
    while position < until:
        page = await log.read_log(position, LogFilter(), 50)
        seen.extend(page.events)
        position = page.scanned_to
        if position < until:
            await log.wait_for_commit(position, 1.0)
    return seen


async def test_the_standby_reads_what_the_primary_wrote(stores: tuple[PostgresStore, StandbyStore]) -> None:
    primary, standby = stores
    # The snapshot first: once the standby shows the events committed after
    # it, it has replayed the snapshot too (it replays commits in order).
    await primary.save_snapshot(Snapshot("a-1", "Thing", 2, "t.State", 1, b"\x01"))
    written = await primary.append("a-1", [new_event(), new_event()], 0)
    await asyncio.wait_for(follow(standby, written[-1].position), 20)
    assert [e.event_id for e in await standby.read_aggregate("a-1")] == [e.event_id for e in written]
    head = await standby.head("a-1")
    assert head is not None and head.version == 2
    assert (await standby.load_snapshot("a-1")) == Snapshot("a-1", "Thing", 2, "t.State", 1, b"\x01")
    with pytest.raises(ChronicleError) as refused:
        await standby.append("a-1", [new_event()], 2)
    assert refused.value.reason == "READ_ONLY_DATABASE"


async def test_interleaved_writers_never_make_a_reader_on_the_standby_skip(
    stores: tuple[PostgresStore, StandbyStore],
) -> None:
    primary, standby = stores

    async def writer(name: str) -> None:
        for version in range(30):
            await primary.append(name, [new_event()], version)

    reader = asyncio.ensure_future(follow(standby, 8 * 30))
    await asyncio.gather(*(writer(f"w-{i}") for i in range(8)))
    seen = await asyncio.wait_for(reader, 30)
    positions = [e.position for e in seen]
    assert positions == list(range(1, 8 * 30 + 1))  # every position once, in order
    on_primary = (await primary.read_log(0, LogFilter(), 1000)).events
    assert [e.event_id for e in seen] == [e.event_id for e in on_primary]


async def test_a_paused_standby_shows_an_older_log_then_all_of_it_in_order(
    stores: tuple[PostgresStore, StandbyStore], standby_urls: tuple[str, str]
) -> None:
    primary, standby = stores
    first = await primary.append("a-1", [new_event()], 0)
    await asyncio.wait_for(follow(standby, first[-1].position), 20)
    with replay_paused(standby_urls[1]):
        for version in range(1, 21):
            await primary.append("a-1", [new_event()], version)
        assert await primary.log_head() == 21
        page = await standby.read_log(0, LogFilter(), 100)
        # Behind, and consistent: the end it reports is the end of what it shows.
        assert (len(page.events), page.scanned_to) == (1, 1)
        assert await standby.log_head() == 1
    seen = await asyncio.wait_for(follow(standby, 21), 20)
    assert [e.position for e in seen] == list(range(1, 22))


@pytest.fixture
async def standby_server(
    standby_urls: tuple[str, str],
) -> AsyncIterator[tuple[Any, Any, str]]:
    primary_url, standby_url = standby_urls
    settings = replace(
        TEST_SETTINGS, database_url=primary_url, read_database_url=standby_url, read_wait_seconds=0.5, poll_seconds=0.2
    )
    async with running_server(PostgresStore(primary_url, pool_size=4), settings=settings) as (app, client):
        assert app.standby is not None
        await replicated(app.standby)
        yield app, client, standby_url


async def test_reads_come_from_the_standby_and_min_position_reads_your_writes(
    standby_server: tuple[Any, Any, str],
) -> None:
    app, client, standby_url = standby_server
    opened = await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    opened_at = opened.events[0].position
    current = await client.events.GetAggregate(pb.GetAggregateRequest(aggregate_id="acc-1", min_position=opened_at))
    assert current.version == 1
    retrying = RetryPolicy(initial_backoff=0.05, max_backoff=0.2, max_attempts=50)
    async with ChronicleClient.connect(app.address, retry=retrying) as typed:
        with replay_paused(standby_url):
            deposited = await client.submit(command("acc-1", bank.Deposit(amount=5)))
            position = deposited.events[0].position
            # Without min_position: the standby's state, behind the write.
            stale = await client.events.GetAggregate(pb.GetAggregateRequest(aggregate_id="acc-1"))
            assert stale.version == 1
            events = [e async for e in client.events.ReadAggregate(pb.ReadAggregateRequest(aggregate_id="acc-1"))]
            assert [e.version for e in events] == [1]
            # With it: the server waits for the standby, then says it is behind.
            get = client.events.GetAggregate(pb.GetAggregateRequest(aggregate_id="acc-1", min_position=position))
            read = _read_all(
                client.events.ReadAggregate(pb.ReadAggregateRequest(aggregate_id="acc-1", min_position=position))
            )
            for call in (get, read):
                with pytest.raises(grpc.aio.AioRpcError) as behind:
                    await call
                details = details_of(behind.value)
                assert (details.code, details.reason, details.retry) == (
                    grpc.StatusCode.UNAVAILABLE,
                    "READS_BEHIND",
                    True,
                )
                assert details.metadata == {"position": str(opened_at), "min_position": str(position)}
            # The Python client retries READS_BEHIND until replay resumes.
            fresh = asyncio.ensure_future(typed.get_aggregate("acc-1", bank.Account, min_position=position))
            await asyncio.sleep(0.3)
            assert not fresh.done()  # still waiting while the standby is paused
        account = await asyncio.wait_for(fresh, 20)
    assert (account.version, account.state.balance) == (2, 5)


async def _read_all(stream: Any) -> list[Any]:
    return [item async for item in stream]


async def test_a_position_beyond_the_end_of_the_log_is_refused_at_once(
    standby_server: tuple[Any, Any, str],
) -> None:
    _, client, _ = standby_server
    await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.events.GetAggregate(pb.GetAggregateRequest(aggregate_id="acc-1", min_position=10**9))
    details = details_of(refused.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "POSITION_BEYOND_END")
    assert details.metadata == {"min_position": str(10**9), "log_head": "1"}


async def test_a_subscriber_resuming_after_a_position_the_standby_lacks_waits_for_it(
    standby_server: tuple[Any, Any, str],
) -> None:
    _, client, standby_url = standby_server
    first = await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    with replay_paused(standby_url):
        second = await client.submit(command("acc-1", bank.Deposit(amount=1)))
        third = await client.submit(command("acc-1", bank.Deposit(amount=2)))
        # It heard of the second event from another replica, which reads the
        # primary; the standby has only the first. Not beyond the end: wait.
        stream = client.events.Subscribe(pb.SubscribeRequest(after_position=second.events[0].position))
        opened = await asyncio.wait_for(stream.read(), 10)
        assert opened.HasField("caught_up") and opened.caught_up.position == second.events[0].position
    live = await asyncio.wait_for(stream.read(), 10)
    assert live.event.event_id == third.events[0].event_id
    assert first.events[0].position < second.events[0].position
    stream.cancel()


async def test_a_standby_without_the_schema_yet_is_unavailable_not_wrong(standby_urls: tuple[str, str]) -> None:
    primary_url, standby_url = standby_urls
    primary = PostgresStore(primary_url, pool_size=1)  # never opened: no schema on either side
    standby = StandbyStore(standby_url, primary=primary, pool_size=1)
    await standby.open()  # starts all the same, as a server does
    try:
        with pytest.raises(StoreUnavailable) as unavailable:
            await standby.read_log(0, LogFilter(), 10)
        assert unavailable.value.reason == "READ_DATABASE_NOT_READY"
    finally:
        await standby.close()
        await primary.close()
