"""A group's consumers as every replica shows them (docs/console.md, the
Group page; ListGroups' GroupConsumer): each one's events in flight, how
long ago it last acked or nacked, the replica it is connected to, and how
long ago its session last reported; one whose replica stopped is shown
silent while its lease still holds its segments, then goes. Real servers
(two replicas on one PostgreSQL, one of them a process of its own that is
stopped with SIGSTOP), real consumers, the console over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.api.group_service import consumer_info
from service.app import Application, start
from service.client import ChronicleClient
from service.store.grouping import ConsumerReport, GroupConsumer
from service.store.memory import MemoryStore
from service.store.postgres import PostgresStore
from tests.support.console import console, text_of
from tests.support.grpc_client import TEST_SETTINGS
from tests.support.http import request
from tests.support.processes import Replica, free_port
from tests.support.waiting import eventually


async def consume_holding(client: ChronicleClient, group: str, name: str, ack_first: int) -> None:
    """Consume ``group`` as ``name``: ack the first ``ack_first`` events
    received, hold every later one (in flight) for as long as it runs."""
    acked = 0
    async with client.consume(group, consumer=name, max_in_flight=100) as deliveries:
        async for delivery in deliveries:
            if acked < ack_first:
                await delivery.ack()
                acked += 1


async def open_accounts(client: ChronicleClient, count: int) -> None:
    for number in range(count):
        await client.submit(f"acc-{number}", bank.OpenAccount(owner="ann"))


def consumers_rows(page: str) -> dict[str, list[str]]:
    """The Consumers table of a group's page: each row's cells as text, by
    the consumer's name as it gave it (before the '#')."""
    body = page.partition('<table id="consumers">')[2].partition("</table>")[0].partition("<tbody>")[2]
    rows = [row.split("</td>") for row in body.split("<tr>")[1:]]
    found = {}
    for cells in rows:
        texts = [text_of(cell).strip() for cell in cells[:-1]]
        if texts and "#" in texts[0]:
            found[texts[0].partition("#")[0]] = texts
    return found


@contextlib.asynccontextmanager
async def running(*tasks: asyncio.Future[None]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


async def test_one_replica_shows_each_consumers_in_flight_last_answer_and_replica_through_the_api_and_console() -> None:
    settings = replace(TEST_SETTINGS, console_listen="127.0.0.1:0", lease_seconds=3.0, anonymous_admin=True)
    app = await start(settings, store=MemoryStore())
    try:
        assert app.console is not None
        async with ChronicleClient.connect(app.address) as client:
            await client.groups.create("billing", aggregate_types=["Account"], segments=1, ack_timeout=60)
            await open_accounts(client, 5)
            async with running(asyncio.ensure_future(consume_holding(client, "billing", "worker", ack_first=2))):

                async def holding_three() -> bool:
                    consumers = (await client.groups.get("billing")).consumers
                    return [(c.in_flight, c.HasField("since_last_answer")) for c in consumers] == [(3, True)]

                await eventually(holding_three, what="the consumer's report: three events in flight")
                (consumer,) = (await client.groups.get("billing")).consumers
                page = (await request(app.console.address, "GET", "/groups/billing")).text
                listed = (await client.groups.list())[0].consumers[0]
    finally:
        await app.stop(grace=0.5, drain=0)
    assert (consumer.replica_address, consumer.replica_id) == (app.leases.member.address, app.leases.member_id)
    assert consumer.since_last_answer.ToTimedelta().total_seconds() < 30
    assert consumer.since_last_heard.ToTimedelta().total_seconds() < 3  # it reports every second
    assert (listed.consumer, listed.in_flight) == (consumer.consumer, 3)  # ListGroups carries the same
    row = consumers_rows(page)["worker"]
    assert row[1:3] == ["0", "this replica"] and row[4] == "3" and row[5].endswith("s ago")
    assert row[6].endswith("s ago") and "silent" not in row[6]
    # Connected since: when its session joined (within this test's few seconds), and for how long.
    assert consumer.since_connected.ToTimedelta().total_seconds() < 30
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(for \d+ s\)", row[3]), row[3]


async def test_a_consumer_holding_events_past_the_ack_timeout_is_flagged_not_answering_beside_the_settings() -> None:
    """A consumer whose process is stuck (SIGSTOPped: its connection and
    its replica's heartbeats go on) took its deliveries in and answers
    nothing: it showed healthy. It is flagged once its last answer is older
    than the ack timeout with events in flight, with the rule that cuts it
    (here never: max_unanswered_timeouts 0); the group's settings are shown."""
    settings = replace(TEST_SETTINGS, console_listen="127.0.0.1:0", lease_seconds=3.0, anonymous_admin=True)
    app = await start(settings, store=MemoryStore())
    try:
        assert app.console is not None
        async with ChronicleClient.connect(app.address) as client:
            await client.groups.create(
                "billing",
                aggregate_types=["Account"],
                segments=1,
                ack_timeout=1,
                retry_backoff=0.05,
                max_retry_backoff=0.05,
                max_delivery_attempts=100,
                max_unanswered_timeouts=0,
            )
            await open_accounts(client, 5)
            async with running(asyncio.ensure_future(consume_holding(client, "billing", "stuck", ack_first=2))):
                page = ""

                async def flagged() -> bool:
                    nonlocal page
                    page = (await request(console(app), "GET", "/groups/billing")).text
                    return "not answering" in page

                await eventually(flagged, within=20, what="the stuck consumer flagged")
    finally:
        await app.stop(grace=0.5, drain=0)
    row = consumers_rows(page)["stuck"]
    assert row[5].startswith("not answering: ") and "past the ack timeout (1 s)" in row[5]
    assert "never for not answering (max_unanswered_timeouts 0)" in row[5]
    shown = page.partition('<table id="settings">')[2].partition("</table>")[0]
    settings_rows = {
        text_of(cells[0]): text_of(cells[1]) for cells in re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td>", shown)
    }
    assert settings_rows == {
        "ack timeout": "1 s",
        "max delivery attempts": "100",
        "max unanswered timeouts": "0 (never)",
        "retry backoff": "0.05 s",
        "max retry backoff": "0.05 s",
        "segments": "1",
    }


def test_a_consumer_that_has_not_reported_has_its_report_fields_unset_not_zero() -> None:
    """Before its session's first report (or from an older server that
    writes none) ListGroups leaves since_last_heard unset: no report is
    not a report "heard 0 s ago"; a consumer that never answered has
    since_last_answer unset, not 0 s."""
    unreported = consumer_info(GroupConsumer("worker#1", (0,)))
    never_answered = consumer_info(
        GroupConsumer("worker#2", (1,), ConsumerReport(replica_id="r", replica_address="h:1", in_flight=2))
    )
    assert not unreported.HasField("since_last_heard") and not unreported.HasField("since_last_answer")
    assert never_answered.HasField("since_last_heard") and not never_answered.HasField("since_last_answer")
    assert (never_answered.replica_address, never_answered.in_flight) == ("h:1", 2)


@pytest.mark.postgres
async def test_every_replica_shows_every_consumer_and_a_stopped_replicas_consumer_as_silent_until_its_lease_lapses(
    postgres_url: str, tmp_path: Path
) -> None:
    lease = 6.0  # a report every 2 s; silent after 4 s; its lease lapses 6 s after its last heartbeat
    frozen_console = f"127.0.0.1:{free_port()}"
    frozen = Replica(
        postgres_url,
        log_path=tmp_path / "frozen.log",
        extra=["--lease-seconds", str(lease), "--poll-seconds", "0.2", "--console-listen", frozen_console],
    )
    frozen.start()
    settings = replace(
        TEST_SETTINGS,
        database_url=postgres_url,
        lease_seconds=lease,
        poll_seconds=0.2,
        console_listen="127.0.0.1:0",
        anonymous_admin=True,
    )
    app: Application | None = None
    try:
        app = await start(settings, store=PostgresStore(postgres_url, pool_size=4))
        assert app.console is not None
        console = app.console.address
        async with (
            ChronicleClient.connect(app.address) as here,
            ChronicleClient.connect(frozen.address) as there,
        ):
            await here.groups.create("billing", aggregate_types=["Account"], segments=4, ack_timeout=120)
            steady = asyncio.ensure_future(consume_holding(here, "billing", "steady", ack_first=1_000_000))
            holding = asyncio.ensure_future(consume_holding(there, "billing", "holding", ack_first=1))
            async with running(steady, holding):

                async def shared() -> bool:
                    consumers = (await here.groups.get("billing")).consumers
                    return sorted(len(c.segments) for c in consumers) == [2, 2]

                # The events come once both hold their share: the steady one
                # would otherwise have acked them all before the other joined.
                await eventually(shared, within=30, what="two consumers holding two segments each")
                await open_accounts(here, 40)

                async def both_reported_holding_some() -> bool:
                    rows = consumers_rows((await request(console, "GET", "/groups/billing")).text)
                    return (
                        set(rows) == {"steady", "holding"}
                        and rows["holding"][4] not in ("", "0")
                        and rows["steady"][1] != ""
                        and rows["holding"][1] != ""
                    )

                await eventually(both_reported_holding_some, within=30, what="both consumers reported, one holding")
                here_page = consumers_rows((await request(console, "GET", "/groups/billing")).text)
                there_page = consumers_rows((await request(frozen_console, "GET", "/groups/billing")).text)
                in_flight = int(here_page["holding"][4])

                frozen.process.send_signal(signal.SIGSTOP)  # its replica hangs: no heartbeat, no report
                try:
                    silent_row: list[str] = []

                    async def shown_silent() -> bool:
                        nonlocal silent_row
                        rows = consumers_rows((await request(console, "GET", "/groups/billing")).text)
                        silent_row = rows.get("holding", [])
                        return bool(silent_row) and "silent" in silent_row[6]

                    await eventually(shown_silent, within=20, what="the stopped replica's consumer shown silent")
                    api_view = {c.consumer.partition("#")[0]: c for c in (await here.groups.get("billing")).consumers}
                    groups_list = (await request(console, "GET", "/groups")).text

                    async def gone() -> bool:
                        rows = consumers_rows((await request(console, "GET", "/groups/billing")).text)
                        return set(rows) == {"steady"} and rows["steady"][1] == "0, 1, 2, 3"

                    await eventually(gone, within=30, what="its lease lapsed: its segments with the other")
                finally:
                    frozen.process.send_signal(signal.SIGKILL)
    finally:
        if app is not None:
            await app.stop(grace=0.5, drain=0)
        with contextlib.suppress(Exception):
            frozen.stop(signal.SIGKILL)
    here_address, frozen_address = app.leases.member.address, frozen.address
    # Every replica shows both consumers, each connected where it is.
    assert here_page["steady"][2] == "this replica" and here_page["holding"][2].startswith(frozen_address + " (")
    assert there_page["holding"][2] == "this replica" and there_page["steady"][2].startswith(here_address + " (")
    assert there_page["holding"][4] == here_page["holding"][4]  # the same report, read from the store
    # When it joined: the same on both (its first report's, read from the store), to the page's second.
    joined = [datetime.fromisoformat(page["holding"][3].partition(" UTC")[0]) for page in (here_page, there_page)]
    assert abs((joined[0] - joined[1]).total_seconds()) <= 2
    assert in_flight > 0 and here_page["holding"][5].endswith("s ago")  # it acked one, holds the rest
    # Stopped: still holding its segments and its events, shown silent, not healthy.
    assert silent_row[1] != "" and silent_row[4] == str(in_flight)
    assert "silent: last heard" in silent_row[6] and "holds its segments until its lease lapses" in silent_row[6]
    holding_api = api_view["holding"]
    assert holding_api.since_last_heard.ToTimedelta().total_seconds() > 2 * lease / 3
    assert holding_api.replica_address == frozen_address and list(holding_api.segments)
    assert "holding#" in groups_list and ", silent)" in groups_list
