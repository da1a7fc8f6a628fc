"""Subscribers never skip when the log goes back: a database restored from an
older copy, or failed over to a standby that lost its last commits, hands
the positions after its end out again, to other events. Through real
servers and the Python client, on SQLite (the file copied with SQLite's
backup API) and PostgreSQL (a database copied as a template, or the newest
rows deleted under a running server):

- a resume after a position whose event the log no longer holds is refused
  with FAILED_PRECONDITION LOG_REWOUND (the client's ``LogRewound``), from
  the position and id a checkpoint kept, after an event or after a
  server checkpoint;
- the same resume on an unchanged log goes on as before;
- a client that sends no id (an older one, a checkpoint saved with the
  position alone) is served as before: unchecked;
- a live stream whose log goes back under it ends with LOG_REWOUND, and
  the server says so once in its log;
- a subscription group's consumer with events in flight across the log
  going back ends with LOG_REWOUND, its checkpoints in memory never
  committed; consuming again goes on from the group's checkpoints as the
  database holds them, and the new events at the reused positions come.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psycopg
import pytest

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import event_service_pb2 as pb
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.client import ChronicleClient, Delivery, Event, FileCheckpoints, LogRewound, RetryPolicy
from service.store.base import StoreAdapter
from service.store.postgres import PostgresStore
from service.store.sqlite import SqliteStore
from tests.support.console import server_sent
from tests.support.grpc_client import Client, connect, details_of, running_server
from tests.support.postgres import Cluster
from tests.support.processes import free_port
from tests.support.waiting import eventually

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)
SUBSCRIPTIONS = "service.processing.subscriptions"  # the logger of what the subscriptions say


@dataclass
class Site:
    """One test's database (``live``), the copies taken of it, and how to
    take and restore them."""

    kind: str
    tmp: Path
    cluster: Cluster | None
    live: str  # the SQLite file's path, or the PostgreSQL database's URL
    copies: list[str] = field(default_factory=list)

    def store(self, where: str | None = None) -> StoreAdapter:
        where = where or self.live
        if self.kind == "sqlite":
            return SqliteStore(Path(where))
        return PostgresStore(where, pool_size=4)

    def backup(self) -> str:
        """A copy of the database as it is now (on PostgreSQL, no server
        may be connected to it: a template is copied alone)."""
        if self.kind == "sqlite":
            copy = self.tmp / f"backup-{uuid.uuid4().hex[:6]}.db"
            with sqlite3.connect(self.live) as source, sqlite3.connect(copy) as target:
                source.backup(target)
            return str(copy)
        assert self.cluster is not None
        name = f"chronicle_copy_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.cluster.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.live.rsplit("/", 1)[1]}"')
        self.copies.append(self.cluster.url_for(name))
        return self.copies[-1]

    def restore(self, copy: str) -> str:
        """The database a restored server runs on: on SQLite the live file
        itself, overwritten with the copy (SQLite's backup API, which a
        running server's connections see at their next read); on
        PostgreSQL the copy's own database, as a restore into a new one."""
        if self.kind == "sqlite":
            with sqlite3.connect(copy) as source, sqlite3.connect(self.live) as target:
                source.backup(target)
            return self.live
        return copy

    async def go_back_to(self, head: int, *, group_checkpoints: int | None = None) -> None:
        """The log cut back to ``head`` under a running server, as a
        failover to a standby that lost the last commits leaves it: the
        events after it gone, their positions handed out again; the groups'
        checkpoints, kept in the same database, back to ``group_checkpoints``."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.live) as db:
                db.execute("DELETE FROM events WHERE position > ?", (head,))
                db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'events'", (head,))
                if group_checkpoints is not None:
                    db.execute("UPDATE group_segments SET position = ?", (group_checkpoints,))
            return
        async with await psycopg.AsyncConnection.connect(self.live, autocommit=True) as conn, conn.transaction():
            await conn.execute("DELETE FROM chronicle.events WHERE position > %s", (head,))
            await conn.execute("UPDATE chronicle.log_head SET last_position = %s", (head,))
            if group_checkpoints is not None:
                await conn.execute("UPDATE chronicle.group_segments SET position = %s", (group_checkpoints,))

    async def go_back_and_write_past(self, head: int, count: int, *, aggregate_id: str) -> None:
        """The log cut back to ``head`` and ``count`` new events written
        after it, all before a running server's next read (one transaction,
        as a restore or a failover followed at once by writes from another
        replica leaves it): copies of the log's first ``count`` events, as
        ``aggregate_id``'s, at the reused positions."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.live) as db:
                db.execute("CREATE TEMP TABLE copied AS SELECT * FROM events WHERE position <= ?", (count,))
                db.execute("UPDATE copied SET position = position + ?, aggregate_id = ?", (head, aggregate_id))
                for position in range(head + 1, head + count + 1):
                    db.execute("UPDATE copied SET event_id = ? WHERE position = ?", (str(uuid.uuid4()), position))
                db.execute("DELETE FROM events WHERE position > ?", (head,))
                db.execute("INSERT INTO events SELECT * FROM copied")
                db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'events'", (head + count,))
                db.execute("DROP TABLE copied")
            return
        async with await psycopg.AsyncConnection.connect(self.live, autocommit=True) as conn, conn.transaction():
            await conn.execute(
                "CREATE TEMP TABLE copied ON COMMIT DROP AS SELECT * FROM chronicle.events WHERE position <= %s",
                (count,),
            )
            await conn.execute(
                "UPDATE copied SET position = position + %s, aggregate_id = %s, event_id = gen_random_uuid()",
                (head, aggregate_id),
            )
            await conn.execute("DELETE FROM chronicle.events WHERE position > %s", (head,))
            await conn.execute("INSERT INTO chronicle.events SELECT * FROM copied")
            await conn.execute("UPDATE chronicle.log_head SET last_position = %s", (head + count,))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    if request.param == "sqlite":
        yield Site("sqlite", tmp_path, None, str(tmp_path / "events.db"))
        return
    cluster: Cluster = request.getfixturevalue("pg_cluster")
    site = Site("postgres", tmp_path, cluster, request.getfixturevalue("postgres_url"))
    yield site
    for copy in site.copies:
        cluster.drop_database(copy)


async def write(address: str, aggregate_id: str, deposits: int, *, open_it: bool) -> None:
    async with ChronicleClient.connect(address, retry=FAST) as client:
        if open_it:
            await client.submit(aggregate_id, bank.OpenAccount(owner="ann"))
        for amount in range(1, deposits + 1):
            await client.submit(aggregate_id, bank.Deposit(amount=amount))


async def consume(
    address: str, checkpoints: FileCheckpoints, count: int, *, aggregate_id: str = ""
) -> list[Event] | LogRewound:
    """Resume from ``checkpoints``, process ``count`` events (saving after
    each), stop; or the LogRewound the subscription ended with."""
    async with ChronicleClient.connect(address, retry=FAST) as client:
        subscription = client.subscribe(checkpoints=checkpoints, aggregate_id=aggregate_id)
        events: AsyncGenerator[Event, None] = aiter(subscription)
        taken: list[Event] = []
        try:
            async with asyncio.timeout(30):
                while len(taken) < count:
                    taken.append(await anext(events))
            if taken:
                await subscription.processed(taken[-1])
        except LogRewound as refused:
            return refused
        finally:
            await events.aclose()
        return taken


async def catch_up(address: str, checkpoints: FileCheckpoints, *, aggregate_id: str) -> None:
    """Subscribe until the caught-up mark is saved (a filter matching nothing)."""
    async with ChronicleClient.connect(address, retry=FAST) as client:
        subscription = client.subscribe(checkpoints=checkpoints, aggregate_id=aggregate_id)
        reading = asyncio.ensure_future(anext(aiter(subscription)))

        async def saved() -> bool:
            return (await checkpoints.load_point()) is not None

        await eventually(saved, what="the caught-up mark saved")
        reading.cancel()


async def first_positions(address: str, request: pb.SubscribeRequest, count: int) -> list[int]:
    """The positions of the first ``count`` events of a raw Subscribe."""
    async with connect(address) as raw:
        positions: list[int] = []
        call = raw.events.Subscribe(request)
        async with asyncio.timeout(30):
            async for message in call:
                positions += [e.position for e in message.page.events] or (
                    [message.event.position] if message.HasField("event") else []
                )
                if len(positions) >= count:
                    break
        call.cancel()
        return positions[:count]


async def test_a_resume_after_a_restore_written_on_since_is_refused_with_log_rewound(site: Site) -> None:
    sub_file, mark_file = FileCheckpoints(site.tmp / "sub.pos"), FileCheckpoints(site.tmp / "mark.pos")
    async with running_server(site.store()) as (app, _):
        await write(app.address, "acc-1", 4, open_it=True)  # positions 1..5
    copy = site.backup()  # the backup: the log up to 5
    async with running_server(site.store()) as (app, _):
        await write(app.address, "acc-1", 5, open_it=False)  # 6..10: lost in the restore
        taken = await consume(app.address, sub_file, 10)
        # A filter that matches nothing: the caught-up mark, at 10, is the checkpoint.
        await catch_up(app.address, mark_file, aggregate_id="nobody")
    assert isinstance(taken, list) and [e.position for e in taken] == list(range(1, 11))
    saved, mark = await sub_file.load_point(), await mark_file.load_point()
    assert saved is not None and (saved.position, saved.event_id) == (10, taken[-1].event_id)
    assert mark is not None and (mark.position, mark.event_id) == (10, taken[-1].event_id)

    async with running_server(site.store(site.restore(copy))) as (app, _):
        # The restored log (head 5) is written on: 6..12 are other events now.
        await write(app.address, "acc-2", 6, open_it=True)
        refused = await consume(app.address, sub_file, 1)
        assert isinstance(refused, LogRewound)
        assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LOG_REWOUND")
        assert refused.metadata == {"position": "10", "log_head": "12"}
        # So is a position and id kept by the subscriber itself.
        async with ChronicleClient.connect(app.address, retry=FAST) as client:
            kept = client.subscribe(after_position=saved.position, after_event_id=saved.event_id)
            with pytest.raises(LogRewound):
                await asyncio.wait_for(anext(aiter(kept)), 30)
        # Resuming after the caught-up mark is checked alike.
        assert isinstance(await consume(app.address, mark_file, 1, aggregate_id="acc-2"), LogRewound)
        # The checkpoints are left as they were: nothing was skipped over.
        assert await sub_file.load_point() == saved

        # A client that sends no id (an older one) is served as before, unchecked.
        old = pb.SubscribeRequest(after_position=10, pages=True)
        assert await first_positions(app.address, old, 2) == [11, 12]
        # And so is a checkpoint file of an older client (the position alone).
        (site.tmp / "old.pos").write_text("10\n")
        old_file = await consume(app.address, FileCheckpoints(site.tmp / "old.pos"), 2)
        assert isinstance(old_file, list) and [e.position for e in old_file] == [11, 12]

        # The raw refusal: FAILED_PRECONDITION, ErrorInfo LOG_REWOUND.
        async with connect(app.address) as raw:
            call = raw.events.Subscribe(pb.SubscribeRequest(after_position=10, after_event_id=saved.event_id))
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                async for _ in call:
                    pass
        assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = details_of(failed.value)
        assert details.reason == "LOG_REWOUND" and details.metadata["position"] == "10"


async def test_a_resume_beyond_the_end_of_a_restored_log_with_its_event_id_is_log_rewound(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    """A subscriber read to 10; the log is restored to a copy that ends at
    5 and not written on since. Its checkpoint names the event it read at
    10: it read that position from a log, so this one went back under it
    (LOG_REWOUND, and the server's WARNING). Before, it was refused
    INVALID_ARGUMENT POSITION_BEYOND_END, no WARNING, and once the log was
    written past 10 the same resume was LOG_REWOUND. A position alone,
    without an id, beyond the end is still POSITION_BEYOND_END: nothing says
    it ever came from a log."""
    sub_file, mark_file = FileCheckpoints(site.tmp / "sub.pos"), FileCheckpoints(site.tmp / "mark.pos")
    async with running_server(site.store()) as (app, _):
        await write(app.address, "acc-1", 4, open_it=True)  # positions 1..5
    copy = site.backup()  # the backup: the log up to 5
    async with running_server(site.store()) as (app, _):
        await write(app.address, "acc-1", 5, open_it=False)  # 6..10: lost in the restore
        taken = await consume(app.address, sub_file, 10)
        await catch_up(app.address, mark_file, aggregate_id="nobody")  # the caught-up mark, at 10
    assert isinstance(taken, list) and [e.position for e in taken] == list(range(1, 11))
    saved = await sub_file.load_point()
    assert saved is not None and (saved.position, saved.event_id) == (10, taken[-1].event_id)

    caplog.set_level(logging.DEBUG, logger="service.processing.subscriptions")
    async with running_server(site.store(site.restore(copy))) as (app, _):  # its end: 5
        refused = await consume(app.address, sub_file, 1)
        assert isinstance(refused, LogRewound)
        assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LOG_REWOUND")
        assert refused.metadata == {"position": "10", "log_head": "5"}
        # After the caught-up mark alike (a filter that matched nothing).
        assert isinstance(await consume(app.address, mark_file, 1, aggregate_id="acc-1"), LogRewound)
        # The checkpoint is left where it was: nothing was skipped over.
        assert await sub_file.load_point() == saved

        async with connect(app.address) as raw:
            # Without an id: a position from nowhere, bad input as before.
            call = raw.events.Subscribe(pb.SubscribeRequest(after_position=10, pages=True))
            with pytest.raises(grpc.aio.AioRpcError) as beyond:
                async for _ in call:
                    pass
            assert beyond.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert details_of(beyond.value).reason == "POSITION_BEYOND_END"
            assert dict(details_of(beyond.value).metadata) == {"after_position": "10", "log_head": "5"}
            # A malformed id is still INVALID_EVENT_ID, never taken for a rewind.
            call = raw.events.Subscribe(pb.SubscribeRequest(after_position=10, after_event_id="not-a-uuid"))
            with pytest.raises(grpc.aio.AioRpcError) as malformed:
                async for _ in call:
                    pass
            assert details_of(malformed.value).reason == "INVALID_EVENT_ID"
    said = [r for r in caplog.records if r.name == SUBSCRIPTIONS and "the log went back" in r.getMessage()]
    # One WARNING for the log's new end, the second subscriber meeting it at DEBUG.
    assert [(r.levelno, r.getMessage()) for r in said] == [
        (
            logging.WARNING,
            "the log went back from 10 to 5: restored or failed over? A subscriber resuming after 10, where it"
            " read an event, is refused with LOG_REWOUND",
        ),
        (
            logging.DEBUG,
            "the log went back from 10 to 5: restored or failed over? A subscriber resuming after 10, where it"
            " read an event, is refused with LOG_REWOUND",
        ),
    ]


async def test_a_live_subscriber_reopening_on_a_failed_over_log_behind_it_gets_log_rewound(site: Site) -> None:
    """The DR walkthrough's live streams: a subscriber caught up at 10, its
    server gone (the stream broken: the client reopens, with the position
    and id it has), and the server back at the same address on a database
    that ends at 5 (failed over to a standby that lost 6..10, or restored).
    Its reopening is refused LOG_REWOUND, never retried, where it died with
    POSITION_BEYOND_END."""
    listen = f"127.0.0.1:{free_port()}"
    async with running_server(site.store(), listen=listen) as (app, _):
        await write(app.address, "acc-1", 4, open_it=True)  # 1..5
    copy = site.backup()  # the standby's copy: the log up to 5
    async with ChronicleClient.connect(listen, retry=FAST) as client:
        subscription = client.subscribe()
        events = aiter(subscription)
        async with running_server(site.store(), listen=listen) as (app, _):
            await write(app.address, "acc-1", 5, open_it=False)  # 6..10: lost in the failover
            async with asyncio.timeout(30):
                assert [(await anext(events)).position for _ in range(10)] == list(range(1, 11))
            following = asyncio.ensure_future(anext(events))  # caught up, then live
            await asyncio.wait_for(subscription.caught_up.wait(), 30)
        # The server is gone: the client tries to reopen after 10 meanwhile.
        async with running_server(site.store(site.restore(copy)), listen=listen):
            with pytest.raises(LogRewound) as ended:
                await asyncio.wait_for(following, 30)
        await events.aclose()
    assert ended.value.metadata == {"position": "10", "log_head": "5"}


async def test_a_resume_on_an_unchanged_log_goes_on_checked(site: Site) -> None:
    sub_file, mark_file = FileCheckpoints(site.tmp / "sub.pos"), FileCheckpoints(site.tmp / "mark.pos")
    async with running_server(site.store()) as (app, _):
        await write(app.address, "acc-1", 4, open_it=True)
        first = await consume(app.address, sub_file, 5)
        await catch_up(app.address, mark_file, aggregate_id="nobody")
    assert isinstance(first, list)
    async with running_server(site.store()) as (app, _):  # a restart: the same log
        await write(app.address, "acc-1", 2, open_it=False)
        rest = await consume(app.address, sub_file, 2)
        assert isinstance(rest, list) and [(e.position, e.version) for e in rest] == [(6, 6), (7, 7)]
        await write(app.address, "acc-2", 0, open_it=True)
        after_mark = await consume(app.address, mark_file, 1, aggregate_id="acc-2")
        assert isinstance(after_mark, list) and [e.position for e in after_mark] == [8]


async def test_a_resume_after_an_event_of_an_aggregate_deleted_since_goes_on(site: Site) -> None:
    """Deleting (or archiving) an aggregate removes its events and leaves
    their positions empty, never handed out again: a checkpoint on one of
    them is no sign that the log went back, for a subscriber of every type
    or of others (a checkpoint names the event at its position, whatever
    its type: the caught-up mark of a filter matching nothing here)."""
    sub_file, mark_file = FileCheckpoints(site.tmp / "sub.pos"), FileCheckpoints(site.tmp / "mark.pos")
    async with running_server(site.store(), anonymous_admin=True) as (app, client):
        await write(app.address, "acc-1", 0, open_it=True)  # 1
        await write(app.address, "acc-2", 1, open_it=True)  # 2, 3
        taken = await consume(app.address, sub_file, 3)
        await catch_up(app.address, mark_file, aggregate_id="nobody")
        assert isinstance(taken, list) and [e.aggregate_id for e in taken][-1] == "acc-2"
        saved = await sub_file.load_point()
        assert saved is not None and saved.position == 3
        await client.admin.DeleteAggregate(admin.DeleteAggregateRequest(aggregate_id="acc-2"), timeout=10)  # 4
        await write(app.address, "acc-1", 1, open_it=False)  # 5
        # Nothing is stored at 3 now: the raw resume after it streams on.
        resumed = pb.SubscribeRequest(after_position=3, after_event_id=saved.event_id, pages=True)
        assert await first_positions(app.address, resumed, 2) == [4, 5]
        rest = await consume(app.address, sub_file, 2)
        assert isinstance(rest, list), rest
        assert [(e.position, e.aggregate_id) for e in rest] == [(4, "acc-2"), (5, "acc-1")]
        after_mark = await consume(app.address, mark_file, 1, aggregate_id="acc-1")
        assert isinstance(after_mark, list) and [e.position for e in after_mark] == [5]


async def resume_refusal(client: Client, after_event_id: str) -> tuple[grpc.StatusCode, str] | None:
    """How a raw Subscribe after position 1 with ``after_event_id`` is
    refused (its code and ErrorInfo reason), None when it streams."""
    call = client.events.Subscribe(pb.SubscribeRequest(after_position=1, after_event_id=after_event_id))
    try:
        async with asyncio.timeout(30):
            await anext(aiter(call))
    except grpc.aio.AioRpcError as refused:
        return refused.code(), details_of(refused).reason
    finally:
        call.cancel()
    return None


@pytest.mark.parametrize("malformed", ["bad\nid", "not-a-uuid", "xyz", "12345678-1234-1234-1234-12345678901"])
async def test_a_malformed_event_id_is_invalid_not_a_rewind(site: Site, malformed: str) -> None:
    async with running_server(site.store()) as (app, client):
        await write(app.address, "acc-1", 1, open_it=True)
        assert await resume_refusal(client, malformed) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_EVENT_ID")


async def test_an_event_id_in_any_form_of_its_uuid_is_the_same_event(site: Site) -> None:
    """Upper case, no hyphens, braces: the event stored there, resumed
    after (as group acks take any form); another UUID in those forms is a
    rewind still."""
    async with running_server(site.store()) as (app, client):
        await write(app.address, "acc-1", 1, open_it=True)
        taken = await consume(app.address, FileCheckpoints(site.tmp / "first.pos"), 1)
        assert isinstance(taken, list)
        first = uuid.UUID(taken[0].event_id)
        for form in (str(first), str(first).upper(), first.hex, first.hex.upper(), f"{{{first}}}", first.urn):
            assert await resume_refusal(client, form) is None, form
        other = uuid.uuid4()
        for form in (str(other), str(other).upper(), other.hex):
            assert await resume_refusal(client, form) == (grpc.StatusCode.FAILED_PRECONDITION, "LOG_REWOUND"), form


async def test_a_live_subscription_ends_with_log_rewound_when_the_log_goes_back_under_it(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    sub_file = FileCheckpoints(site.tmp / "sub.pos")
    async with running_server(site.store(), poll_seconds=0.2) as (app, _):
        await write(app.address, "acc-1", 4, open_it=True)  # 1..5
        copy = site.backup() if site.kind == "sqlite" else ""
        await write(app.address, "acc-1", 5, open_it=False)  # 6..10
        async with ChronicleClient.connect(app.address, retry=FAST) as client:
            subscription = client.subscribe(checkpoints=sub_file)
            events = aiter(subscription)
            async with asyncio.timeout(30):
                taken = [await anext(events) for _ in range(10)]
            assert [e.position for e in taken] == list(range(1, 11))
            following = asyncio.ensure_future(anext(events))  # caught up, then live
            await asyncio.wait_for(subscription.caught_up.wait(), 30)
            # A second subscriber, of acc-1 alone, live too: the log going back is one WARNING, not one per stream.
            other = client.subscribe(aggregate_id="acc-1")
            other_events = aiter(other)
            async with asyncio.timeout(30):
                assert len([await anext(other_events) for _ in range(10)]) == 10
            other_following = asyncio.ensure_future(anext(other_events))
            await asyncio.wait_for(other.caught_up.wait(), 30)
            caplog.set_level(logging.WARNING, logger="service.processing.subscriptions")
            if site.kind == "sqlite":
                site.restore(copy)  # the file overwritten under the running server
            else:
                await site.go_back_to(5)
            with pytest.raises(LogRewound) as ended:
                await asyncio.wait_for(following, 30)
            with pytest.raises(LogRewound):
                await asyncio.wait_for(other_following, 30)
            await events.aclose()
            await other_events.aclose()
    assert ended.value.metadata == {"position": "10", "log_head": "5"}
    warnings = [
        r.getMessage() for r in caplog.records if r.name == SUBSCRIPTIONS and "the log went back" in r.getMessage()
    ]
    assert warnings == [
        "the log went back from 10 to 5: restored or failed over?"
        " A subscription that had read up to 10 is ended with LOG_REWOUND"
    ]
    saved = await sub_file.load_point()
    assert saved is not None and saved.position == 10  # not moved: the client re-syncs deliberately


async def test_a_live_subscription_ends_with_log_rewound_when_new_writes_carried_the_log_back_past_it(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    """The log goes back from 10 to 5 and seven new events are written
    before the stream reads again: its end (12) is above what the stream
    read, but position 10 holds another event now. Before, the stream went
    on with 11 and 12 as if nothing had happened (6 to 10 never came)."""
    async with running_server(site.store(), poll_seconds=0.2) as (app, _):
        await write(app.address, "acc-1", 9, open_it=True)  # 1..10
        async with ChronicleClient.connect(app.address, retry=FAST) as client:
            streams = [client.subscribe(), client.subscribe(aggregate_id="acc-1")]
            followers = []
            for subscription in streams:
                events = aiter(subscription)
                async with asyncio.timeout(30):
                    assert [(await anext(events)).position for _ in range(10)] == list(range(1, 11))
                followers.append((events, asyncio.ensure_future(anext(events))))  # caught up, then live
                await asyncio.wait_for(subscription.caught_up.wait(), 30)
            caplog.set_level(logging.WARNING, logger="service.processing.subscriptions")
            await site.go_back_and_write_past(5, 7, aggregate_id="acc-9")  # 6..12: acc-9's
            for events, following in followers:
                with pytest.raises(LogRewound) as ended:
                    await asyncio.wait_for(following, 30)
                assert ended.value.metadata == {"position": "10", "log_head": "12"}
                await events.aclose()
    warnings = [
        r.getMessage() for r in caplog.records if r.name == SUBSCRIPTIONS and "the log went back" in r.getMessage()
    ]
    assert warnings == [
        "the log went back under 10 and was written past it since (another event is stored at that position"
        " now; the log's end is 12): restored or failed over? A subscription that had read up to 10 is ended"
        " with LOG_REWOUND"
    ]


async def test_a_group_consumer_ends_when_new_writes_carried_the_log_back_past_what_it_read(site: Site) -> None:
    async with running_server(site.store(), anonymous_admin=True, poll_seconds=0.2, lease_seconds=1.5) as (app, _):
        await write(app.address, "acc-1", 4, open_it=True)  # 1..5
        async with ChronicleClient.connect(app.address, retry=FAST) as client:
            await client.groups.create("billing", segments=1)
            async with client.consume("billing", consumer="first") as consumer:
                deliveries = aiter(consumer)
                for _ in range(4):
                    await (await asyncio.wait_for(anext(deliveries), 30)).ack()
                last = await asyncio.wait_for(anext(deliveries), 30)  # 5, in flight: nothing past 4 committed
                assert last.event.position == 5
                await site.go_back_and_write_past(3, 4, aggregate_id="acc-9")  # 4..7: acc-9's
                with pytest.raises(LogRewound) as ended:
                    await asyncio.wait_for(ack_all(deliveries), 30)  # before: 6 and 7 came, 4 and 5 never
                assert ended.value.metadata == {"position": "5", "log_head": "7", "group": "billing"}


async def ack_all(deliveries: AsyncIterator[Delivery]) -> None:
    async for delivery in deliveries:
        await delivery.ack()


async def test_a_group_consumer_across_the_log_going_back_ends_and_the_group_skips_nothing(site: Site) -> None:
    async with running_server(site.store(), anonymous_admin=True, poll_seconds=0.2, lease_seconds=1.5) as (app, _):
        await write(app.address, "acc-1", 4, open_it=True)  # 1..5
        async with ChronicleClient.connect(app.address, retry=FAST) as client:
            await client.groups.create("billing", segments=1)
            async with client.consume("billing", consumer="first") as consumer:
                deliveries = aiter(consumer)
                for _ in range(5):
                    await (await asyncio.wait_for(anext(deliveries), 30)).ack()

                async def group_at(position: int) -> bool:
                    return (await client.groups.get("billing")).position == position

                await eventually(lambda: group_at(5), what="the group's checkpoint at 5")
                for name in ("acc-2", "acc-3", "acc-4"):  # 6..8, one event each: all in flight at once
                    await write(app.address, name, 0, open_it=True)
                in_flight = [await asyncio.wait_for(anext(deliveries), 30) for _ in range(3)]
                assert [d.event.position for d in in_flight] == [6, 7, 8]
                await in_flight[0].ack()
                await eventually(lambda: group_at(6), what="the group's checkpoint at 6")
                # The database goes back to a copy of when the log ended at 5
                # and the group's checkpoint was 5.
                await site.go_back_to(5, group_checkpoints=5)
                with pytest.raises(LogRewound) as ended:
                    await asyncio.wait_for(ack_all(deliveries), 30)  # acks of events the log no longer holds
                assert ended.value.reason == "LOG_REWOUND" and ended.value.metadata["log_head"] == "5"
            # Nothing of the session's positions was committed: the group is where the database says.
            assert (await client.groups.get("billing")).position == 5
            await write(app.address, "acc-9", 2, open_it=True)  # 6..8 again: other events
            async with client.consume("billing", consumer="second") as consumer:
                deliveries = aiter(consumer)
                again = []
                for _ in range(3):
                    again.append(await asyncio.wait_for(anext(deliveries), 30))
                    await again[-1].ack()
            assert [(d.event.position, d.event.aggregate_id) for d in again] == [
                (6, "acc-9"),
                (7, "acc-9"),
                (8, "acc-9"),
            ]


async def test_the_consoles_live_tail_ends_with_the_refusal_when_the_log_goes_back(tmp_path: Path) -> None:
    """The console's tail reads through Subscribe: it shows the refusal and
    ends, read as a browser's EventSource reads it."""
    site = Site("sqlite", tmp_path, None, str(tmp_path / "events.db"))
    async with running_server(site.store(), console_listen="127.0.0.1:0", poll_seconds=0.2) as (app, _):
        await write(app.address, "acc-1", 9, open_it=True)  # 1..10
        assert app.console is not None
        host, _, port = app.console.address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        seen: list[tuple[str, str]] = []
        try:
            writer.write(f"GET /tail/events?after=10 HTTP/1.1\r\nHost: {app.console.address}\r\n\r\n".encode())
            await writer.drain()
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
            async with asyncio.timeout(30):
                while not seen or seen[-1][0] != "refused":
                    raw = (await reader.readuntil(b"\n\n")).decode()
                    fields = dict(line.partition(": ")[::2] for line in raw.strip().split("\n"))
                    if "event" in fields:
                        seen.append((fields["event"], fields["data"]))
                        if fields["event"] == "checkpoint":  # caught up at 10: now the log goes back
                            await site.go_back_to(5)
        finally:
            writer.close()
    assert seen[0] == ("checkpoint", "10")
    assert seen[-1][0] == "refused" and json.loads(seen[-1][1]).startswith("LOG_REWOUND: ")


async def test_the_consoles_live_tail_reconnecting_after_the_log_went_back_and_on_is_refused(site: Site) -> None:
    """A page whose stream broke reconnects from the resume point of its
    last message, which names the event the tail saw there: the log went
    back and was written past that point meanwhile, so the new stream is
    refused (LOG_REWOUND) where it showed the new events after it (11 and
    12: 6 to 10, at reused positions, never shown)."""
    async with running_server(site.store(), console_listen="127.0.0.1:0", poll_seconds=0.2) as (app, _):
        await write(app.address, "acc-1", 9, open_it=True)  # 1..10
        assert app.console is not None
        seen = await server_sent(app.console.address, "/tail/events?after=0", 11)
        assert seen[-1][:2] == ("checkpoint", 10)  # caught up, then the stream breaks
        resume = seen[-1][2]
        assert resume.startswith("after=10&event=")
        await site.go_back_and_write_past(5, 7, aggregate_id="acc-9")  # 6..12: acc-9's
        [(name, data, _)] = await server_sent(app.console.address, "/tail/events?" + resume, 1)
    assert name == "refused" and data.startswith("LOG_REWOUND: ")
