"""A subscription group's consumers are told when the log went back while
they were away: a failover to an asynchronous standby that lost the last
commits breaks their streams first (the store is gone: UNAVAILABLE), and
they connect again to sessions that start afresh from the group's
checkpoints, which went back with the database. Before, those sessions
delivered the new events at the reused positions as the next ones, attempt
1, with nothing said. Now, through real servers and the Python client, on
SQLite and PostgreSQL (the log cut back under the running server as
``test_log_rewind.py`` does):

- the consumer's next stream ends with LOG_REWOUND (the log's end below what
  the group read, or written past it since: another event there), the server
  logs a WARNING and counts it in ``chronicle_log_rewinds_total``;
- every other consumer the server served the group before is told once too;
- a consumer that connects again after its refusal is served from the
  group's checkpoints as the database holds them, the new events included;
- the server's own look at its log's end warns and counts a rewind once,
  with no reader at all.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AbstractAsyncContextManager

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.client import ChronicleClient, Delivery, LogRewound
from service.errors import StoreUnavailable
from tests.integration.test_log_rewind import FAST, Site, site, write
from tests.support.grpc_client import Client, running_server
from tests.support.metrics import sample, scrape
from tests.support.waiting import eventually

__all__ = ["site"]  # the fixture, shared with test_log_rewind.py

REWINDS = "chronicle_log_rewinds_total"


def serving(site: Site, *, poll_seconds: float = 0.2) -> AbstractAsyncContextManager[tuple[Application, Client]]:
    return running_server(
        site.store(), anonymous_admin=True, poll_seconds=poll_seconds, lease_seconds=1.5, metrics_listen="127.0.0.1:0"
    )


async def take(client: ChronicleClient, consumer: str, count: int) -> list[Delivery]:
    """``count`` deliveries of group ``drgroup`` to ``consumer``, each acked;
    then its stream ends (the session commits them as it ends)."""
    taken = []
    async with client.consume("drgroup", consumer=consumer) as consuming:
        deliveries = aiter(consuming)
        joining = asyncio.ensure_future(anext(deliveries)) if not count else None
        if joining is not None:  # nothing to take: joined, then gone
            await asyncio.wait_for(consuming.joined.wait(), 30)
            joining.cancel()
        for _ in range(count):
            taken.append(await asyncio.wait_for(anext(deliveries), 30))
            await taken[-1].ack()
    return taken


async def refused(client: ChronicleClient, consumer: str) -> LogRewound:
    async with client.consume("drgroup", consumer=consumer) as consuming:
        with pytest.raises(LogRewound) as ended:
            await asyncio.wait_for(anext(aiter(consuming)), 30)
    return ended.value


async def group_at(client: ChronicleClient, position: int) -> None:
    async def there() -> bool:
        return (await client.groups.get("drgroup")).position == position

    await eventually(there, what=f"the group's checkpoint at {position}")


async def rewinds_counted(app: Application) -> float:
    return sample(await scrape(app), REWINDS)


async def test_a_consumer_back_after_the_log_went_back_and_was_written_past_is_told_log_rewound(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(site) as (app, _), ChronicleClient.connect(app.address, retry=FAST) as client:
        await write(app.address, "acc-1", 7, open_it=True)  # 1..8
        await client.groups.create("drgroup", segments=1)
        assert [d.event.position for d in await take(client, "first", 8)] == list(range(1, 9))
        await group_at(client, 8)
        caplog.set_level(logging.WARNING)
        # The failover: the standby had the log up to 5 and the group's
        # checkpoint at 5; writes on it carry the log past 8 at once.
        await site.go_back_to(5, group_checkpoints=5)
        await write(app.address, "acc-9", 4, open_it=True)  # 6..10: other events
        told = await refused(client, "first")  # before: 6..10 delivered as new, attempt 1
        assert told.metadata == {"position": "8", "log_head": "10", "group": "drgroup"}
        assert await rewinds_counted(app) == 1
        # Told once: connecting again, it is served from the group's checkpoint as the database holds it.
        again = await take(client, "first", 5)
        assert [(d.event.position, d.event.aggregate_id, d.attempt) for d in again] == [
            (position, "acc-9", 1) for position in range(6, 11)
        ]
        assert await rewinds_counted(app) == 1
    warnings = [r.getMessage() for r in caplog.records if r.name == "service.groups"]
    assert warnings == [
        "the log went back under 8, which subscription group drgroup had read (its end is 10): restored or failed"
        " over? Consumer first and the group's other consumers served here before are ended with LOG_REWOUND"
        " once each; the group resumes from its checkpoints as the database holds them"
    ]
    said = [r.getMessage() for r in caplog.records if r.name == "service.processing.log_rewinds"]
    assert len(said) == 1 and said[0].startswith("the log went back"), said


async def test_a_stream_broken_by_the_failover_and_reopened_by_the_client_ends_with_log_rewound(site: Site) -> None:
    """As in a failover: the session breaks with the store (UNAVAILABLE)
    before it reads the shorter log (its next look is 30 s away, and nothing
    commits to wake it), the client's loop opens the stream again by itself,
    and the loop raises LogRewound where it waited for 6 as the next event."""
    async with serving(site, poll_seconds=30) as (app, _), ChronicleClient.connect(app.address, retry=FAST) as client:
        await write(app.address, "acc-1", 7, open_it=True)  # 1..8
        await client.groups.create("drgroup", segments=1)
        async with client.consume("drgroup", consumer="first", reconnect_delay=0.01) as consuming:
            deliveries = aiter(consuming)
            for _ in range(8):
                await (await asyncio.wait_for(anext(deliveries), 30)).ack()
            await group_at(client, 8)
            await site.go_back_to(5, group_checkpoints=5)  # no commit to wake the session: it does not read
            (session,) = app.groups._sessions
            session.fail(StoreUnavailable("the store went away (a failover)"))
            # Written on the promoted standby meanwhile (before or after the client is back): 6, acc-9's.
            await write(app.address, "acc-9", 0, open_it=True)
            with pytest.raises(LogRewound) as ended:  # before: acc-9's 6 came, as the event after 5
                await asyncio.wait_for(anext(deliveries), 30)
        assert ended.value.metadata["position"] == "8" and ended.value.metadata["group"] == "drgroup"


async def test_every_consumer_served_before_the_log_went_back_is_told_once(site: Site) -> None:
    async with serving(site) as (app, _), ChronicleClient.connect(app.address, retry=FAST) as client:
        await write(app.address, "acc-1", 7, open_it=True)  # 1..8
        await client.groups.create("drgroup", segments=1)
        await take(client, "first", 8)
        await group_at(client, 8)
        await take(client, "second", 0)  # served too, after the first: nothing left to deliver
        await site.go_back_to(5, group_checkpoints=5)  # the log's end below what the group read
        first = await refused(client, "first")
        assert first.metadata == {"position": "8", "log_head": "5", "group": "drgroup"}
        assert (await refused(client, "second")).metadata == first.metadata
        await write(app.address, "acc-9", 0, open_it=True)  # 6
        assert [d.event.aggregate_id for d in await take(client, "second", 1)] == ["acc-9"]
        # A consumer new to the group read nothing of the old log: nothing to tell it.
        await write(app.address, "acc-8", 0, open_it=True)  # 7
        assert [d.event.aggregate_id for d in await take(client, "third", 1)] == ["acc-8"]
        assert await rewinds_counted(app) == 1


async def test_a_group_whose_log_goes_on_is_served_as_before(site: Site) -> None:
    """The check at a session's start finds the event the group read still
    there: no refusal, nothing counted."""
    async with serving(site) as (app, _), ChronicleClient.connect(app.address, retry=FAST) as client:
        await write(app.address, "acc-1", 4, open_it=True)  # 1..5
        await client.groups.create("drgroup", segments=1)
        await take(client, "first", 5)
        await write(app.address, "acc-1", 2, open_it=False)  # 6, 7
        assert [d.event.position for d in await take(client, "first", 2)] == [6, 7]
        assert await rewinds_counted(app) == 0


async def test_the_server_warns_once_and_counts_when_its_log_goes_back_under_it(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(site) as (app, _):
        await write(app.address, "acc-1", 7, open_it=True)  # 1..8
        assert await app.rewind_watch.look() == 8
        caplog.set_level(logging.WARNING, logger="service.processing.log_rewinds")
        await site.go_back_to(5)

        async def counted() -> bool:
            return await rewinds_counted(app) == 1

        await eventually(counted, what="the rewind counted by the server's own look")
        assert await app.rewind_watch.look() == 5  # looked at again: the same rewind, not counted twice
        assert await rewinds_counted(app) == 1
        async with ChronicleClient.connect(app.address, retry=FAST) as client:
            await client.submit("acc-1", bank.Deposit(amount=1))  # 6
        assert await app.rewind_watch.look() == 6
    warnings = [r.getMessage() for r in caplog.records if r.name == "service.processing.log_rewinds"]
    assert warnings == [
        "the log went back from 8 to 5 (the highest end this server saw of it, and its end now): restored from"
        " an older copy, or failed over to a standby that lost commits? The positions after its end are handed"
        " out again, to other events: subscribers, groups, projections and reactions that read the old log must"
        " re-sync (docs/deployment.md#backups)"
    ]
