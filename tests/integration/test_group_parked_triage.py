"""What an operator triages a group's parked events by (subscriptions.md):
each one's event type and when it was parked, kept with the parked row,
shown by ``ListParked`` (the Python client's ``groups.parked``), by
``chronicle group NAME --parked`` and by the console's group page. An
event parked by a server from before they were kept (its row without
them) shows "unknown" (ListParked: an empty type, no time). A real server
on SQLite and on PostgreSQL, over a real socket; the CLI a process of its
own, the console over HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application, start
from service.client import ChronicleClient
from service.store.base import StoreAdapter
from service.store.grouping import GroupParkedEvent
from service.store.postgres import PostgresStore
from service.store.sqlite import SqliteStore
from tests.integration.test_console_group_actions import ROOT_KEY, Operator, park_all, settings
from tests.support.console import console, text_of
from tests.support.grpc_client import command, connect
from tests.support.processes import cli
from tests.support.security import bearer

pytestmark = pytest.mark.slow  # a CLI process

OPENED = "bank.v1.AccountOpened"
# A row as a server from before the type and time were kept left it.
OLD_ROW = GroupParkedEvent(
    event_id="0b5f1a52-3c1e-4c59-9a39-5d1f2a7e0c11",
    position=99,
    segment=0,
    aggregate_id="acc-old",
    attempts=5,
    reason="parked long ago",
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreAdapter]:
    if request.param == "sqlite":
        yield SqliteStore(str(tmp_path / "groups.db"))
    else:
        yield PostgresStore(request.getfixturevalue("postgres_url"), pool_size=4)


@pytest.fixture
async def served(store: StoreAdapter, tmp_path: Path) -> AsyncIterator[tuple[Application, ChronicleClient, int, int]]:
    """Two accounts opened and their events parked, between the two times
    (microseconds) given with them; and one parked row of an older server."""
    app = await start(settings(tmp_path), store=store)
    try:
        async with ChronicleClient.connect(app.address, token=ROOT_KEY) as client:
            await client.groups.create("billing", aggregate_types=["Account"])
            async with connect(app.address, interceptors=bearer(ROOT_KEY)) as root:
                for number in range(2):
                    await root.submit(command(f"acc-{number}", bank.OpenAccount(owner="ann"), user_id="root-actions"))
            before = time.time_ns() // 1000
            await park_all(client, 2)
            after = time.time_ns() // 1000
            await app.store.groups.park("billing", [OLD_ROW])
            yield app, client, before, after
    finally:
        await app.stop(grace=0.5, drain=0)


async def test_parked_events_carry_their_type_and_when_they_were_parked(
    served: tuple[Application, ChronicleClient, int, int],
) -> None:
    _, client, before, after = served
    new_ones = [p for p in await client.groups.parked("billing") if p.event_id != OLD_ROW.event_id]
    assert [p.event_type for p in new_ones] == [OPENED, OPENED]
    for parked in new_ones:
        assert parked.HasField("parked_at")
        assert before <= parked.parked_at.ToMicroseconds() <= after
    (old,) = [p for p in await client.groups.parked("billing") if p.event_id == OLD_ROW.event_id]
    assert (old.event_type, old.HasField("parked_at")) == ("", False)


async def test_the_cli_shows_them_and_unknown_for_an_older_servers_row(
    served: tuple[Application, ChronicleClient, int, int],
) -> None:
    app, _, before, after = served
    result = await asyncio.to_thread(
        cli, "group", "billing", "--parked", server=app.address, env={"CHRONICLE_TOKEN": ROOT_KEY}
    )
    shown = {line["event_id"]: line for line in map(json.loads, result.stdout.splitlines())}
    old = shown.pop(OLD_ROW.event_id)
    assert (old["event_type"], old["parked_at"]) == ("unknown", "unknown")
    assert [line["event_type"] for line in shown.values()] == [OPENED, OPENED]
    for line in shown.values():
        moment = datetime.fromisoformat(str(line["parked_at"]).replace("Z", "+00:00"))
        assert before <= round(moment.timestamp() * 1_000_000) <= after, line


async def test_the_console_shows_them_and_unknown_for_an_older_servers_row(
    served: tuple[Application, ChronicleClient, int, int],
) -> None:
    app, _, before, after = served
    operator = await Operator.log_in(console(app), ROOT_KEY)
    page = (await operator.get("/groups/billing")).text
    table = page[page.index('id="parked"') :]
    rows = [text_of(row) for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]]
    old = [row for row in rows if OLD_ROW.event_id in row]
    assert len(old) == 1 and old[0].count("unknown") == 2, old
    times = re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", table)
    assert len(times) == 2, rows
    for shown in times:  # to the second
        moment = datetime.strptime(shown, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)
        assert before // 1_000_000 <= moment.timestamp() <= after // 1_000_000 + 1
    assert sum(row.count(OPENED) for row in rows) == 2
