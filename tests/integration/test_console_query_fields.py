"""docs/console.md, "Bad input is refused, not guessed at": a query field
a page does not read (a misspelled audit filter, ``?command_id=`` for
``?command=``) is refused ``400`` (``UNKNOWN_QUERY_FIELD``), not ignored:
ignoring it showed the unfiltered audit log as if it were the filtered one.
Every page's own fields are still read. A real server, a real HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application, start
from service.client import ChronicleClient
from service.store.memory import MemoryStore
from tests.support.console import console, text_of
from tests.support.grpc_client import TEST_SETTINGS
from tests.support.http import request


@pytest.fixture
async def app() -> AsyncIterator[Application]:
    settings = replace(TEST_SETTINGS, console_listen="127.0.0.1:0", anonymous_admin=True)
    served = await start(settings, store=MemoryStore())
    try:
        async with ChronicleClient.connect(served.address) as client:
            await client.submit("acc-1", bank.OpenAccount(owner="ann"))
            await client.groups.create("billing", aggregate_types=["Account"])
        yield served
    finally:
        await served.stop(grace=0.5, drain=0)


MISSPELLED = [
    "/audit?command_id=c-1",
    "/audit?command_type=Deposit",
    "/audit?aggregate_id=acc-1",
    "/log?prefix=acc",
    "/aggregates/acc-1?versions=1",
    "/groups/billing?position=3",
    "/groups/billing/confirm?action=replay-all&all=yes",
    "/projections/bank.transfers?from=3",
    "/cluster?member=x",
    "/load?window=60",
    "/projections?name=x",
]


@pytest.mark.parametrize("path", MISSPELLED)
async def test_a_query_field_the_page_does_not_read_is_refused_not_ignored(app: Application, path: str) -> None:
    answer = await request(console(app), "GET", path)
    assert answer.status == 400, answer.text
    assert "UNKNOWN_QUERY_FIELD" in answer.text and "this page reads no query field" in text_of(answer.text)


async def test_the_tail_stream_refuses_a_field_it_does_not_read(app: Application) -> None:
    answer = await request(console(app), "GET", "/tail/events?from=3")
    assert answer.status == 400 and answer.text.startswith("UNKNOWN_QUERY_FIELD: ")


@pytest.mark.parametrize(
    "path",
    [
        "/audit?principal=&action=&aggregate=acc-1&command=&outcome=&since=&until=",
        "/log?q=acc",
        "/aggregates/acc-1?version=1&from=1",
        "/groups/billing?after=0",
        "/groups/billing/confirm?action=replay-all",
        "/reactions",
        "/cluster",
    ],
)
async def test_the_fields_a_page_reads_are_still_read(app: Application, path: str) -> None:
    answer = await request(console(app), "GET", path)
    assert answer.status == 200, answer.text
