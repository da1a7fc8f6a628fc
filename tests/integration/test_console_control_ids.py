"""Aggregate ids with control characters, bidirectional controls and URL
metacharacters open from the console (docs/console.md, "Stored text cannot
reorder what is read"). No write takes an id with a control character (the
API, reactions and imports refuse it: ``values.id_problem``), but imports
took them before they held ids to that rule, so a store may hold one: it is
written to the store directly here. Its link is the id percent-encoded,
which the page decodes back to the id itself (a round trip); the page
shows it escaped; reading it finds it rather than refusing its id. A real
server on memory and on SQLite, a real HTTP client, a real gRPC client."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import grpc
import pytest
from selenium.webdriver.common.by import By

from chronicle.v1 import event_service_pb2 as events_pb
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application, start
from service.store.base import StoreAdapter
from service.store.memory import MemoryStore
from service.store.sqlite import SqliteStore
from tests.support.browser import Browser, start_chromium
from tests.support.console import console, text_of
from tests.support.events import new_event
from tests.support.grpc_client import TEST_SETTINGS, command, connect
from tests.support.http import request

# Each id, and how the page shows it (its escapes, each in a marked span).
IDS = {
    "line\nbreak": "line\\nbreak",
    "tab\there": "tab\\there",
    "esc\x1b[31mred": "esc\\x1b[31mred",
    "nul\x00byte": "nul\\x00byte",
    "del\x7fc1\x85": "del\\x7fc1\\x85",
    "acc-\u202egpj.exe": "acc-\\u202egpj.exe",
    "iso\u2066late\u2069": "iso\\u2066late\\u2069",
    "zero\u200bwidth\u00a0nbsp": "zero\\u200bwidth\\xa0nbsp",
    "slash/in/id": "slash/in/id",
    "ask?version=9": "ask?version=9",
    "hash#frag": "hash#frag",
    "per%cent%2F": "per%cent%2F",
}


@asynccontextmanager
async def served(store: StoreAdapter) -> AsyncIterator[Application]:
    for aggregate_id in IDS:
        opened = bank.AccountOpened(owner="mallory").SerializeToString()
        await store.append(
            aggregate_id, [new_event("bank.v1.AccountOpened", aggregate_type="Account", payload=opened)], 0
        )
    app = await start(replace(TEST_SETTINGS, console_listen="127.0.0.1:0"), store=store)
    try:
        yield app
    finally:
        await app.stop(grace=0.5, drain=0)


@pytest.fixture(params=["memory", "sqlite"])
async def app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Application]:
    store: StoreAdapter = MemoryStore() if request.param == "memory" else SqliteStore(str(tmp_path / "ids.db"))
    await store.open()
    async with served(store) as started:
        yield started


def heading(page: str) -> str:
    found = re.search(r"<h1>(.*?)</h1>", page, re.S)
    assert found is not None
    return found.group(1)


async def test_every_stored_id_is_linked_percent_encoded_and_its_page_opens_showing_it_escaped(
    app: Application,
) -> None:
    log = await request(console(app), "GET", "/log")
    assert log.status == 200, log.text
    links = dict(re.findall(r'<a href="(/aggregates/[^"]*)">(.*?)</a>', log.text, re.S))
    opened = {}
    for aggregate_id, shown in IDS.items():
        href = "/aggregates/" + quote(aggregate_id, safe="")
        assert href in links, aggregate_id  # the link is the id, percent-encoded: no "/", "?", "#" of its own
        assert text_of(links[href]) == shown  # the listing shows it escaped
        page = await request(console(app), "GET", href)
        at_version = await request(console(app), "GET", href + "?version=1")
        opened[aggregate_id] = (page.status, text_of(heading(page.text)), 'id="state"' in at_version.text)
    assert opened == {aggregate_id: (200, shown, True) for aggregate_id, shown in IDS.items()}


async def test_a_control_character_is_shown_marked_never_as_itself(app: Application) -> None:
    page = await request(console(app), "GET", "/aggregates/" + quote("esc\x1b[31mred", safe=""))
    title = re.search(r"<title>(.*?)</title>", page.text, re.S)
    assert page.status == 200
    assert "\x1b" not in page.text and "\x00" not in page.text
    assert '<h1>esc<span class="ctl">\\x1b</span>[31mred</h1>' in page.text
    assert title is not None and title.group(1).startswith("esc\\x1b[31mred ")  # unmarked in the title
    # The page's own form goes back to the same aggregate.
    assert 'action="/aggregates/esc%1B%5B31mred"' in page.text
    breaking = await request(console(app), "GET", "/aggregates/" + quote("line\nbreak", safe=""))
    assert "line\nbreak" not in breaking.text and '<h1>line<span class="ctl">\\n</span>break</h1>' in breaking.text


async def test_reading_finds_an_aggregate_stored_under_a_control_character_but_no_write_takes_one(
    app: Application,
) -> None:
    async with connect(app.address) as client:
        read = [
            event
            async for event in client.events.ReadAggregate(events_pb.ReadAggregateRequest(aggregate_id="nul\x00byte"))
        ]
        state = await client.events.GetAggregate(events_pb.GetAggregateRequest(aggregate_id="line\nbreak"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.submit(command("line\nbreak", bank.Deposit(amount=1)))
        with pytest.raises(grpc.aio.AioRpcError) as blank:
            await client.events.GetAggregate(events_pb.GetAggregateRequest(aggregate_id=" \t "))
    assert [event.event_type for event in read] == ["bank.v1.AccountOpened"]
    assert (state.aggregate_id, state.version) == ("line\nbreak", 1)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert blank.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # only whitespace: still no id


async def test_in_a_browser_the_live_tail_shows_an_ids_control_characters_escaped_and_marked() -> None:
    """The live tail builds its rows in the page's script: the same rule,
    and its links the same percent-encoding."""
    store = MemoryStore()
    await store.open()
    async with served(store) as started:
        driver = await asyncio.to_thread(start_chromium)
        try:
            browser = Browser(driver, f"http://{console(started)}")
            await browser.get("/tail")
            rows = "#tail tbody tr[data-position] td:nth-child(2)"
            await browser.wait_until(lambda d: len(d.find_elements(By.CSS_SELECTOR, rows)) >= len(IDS), what="rows")
            shown = await browser.run(
                lambda: {
                    cell.text: (
                        [mark.text for mark in cell.find_elements(By.CSS_SELECTOR, "span.ctl")],
                        cell.find_element(By.TAG_NAME, "a").get_attribute("href"),
                    )
                    for cell in driver.find_elements(By.CSS_SELECTOR, rows)
                }
            )
            await browser.run(lambda: driver.get("about:blank"))  # closes the stream
        finally:
            await asyncio.to_thread(driver.quit)
    base = f"http://{console(started)}/aggregates/"
    assert shown["line\\nbreak"] == (["\\n"], base + "line%0Abreak")
    assert shown["esc\\x1b[31mred"] == (["\\x1b"], base + "esc%1B%5B31mred")
    assert shown["nul\\x00byte"] == (["\\x00"], base + "nul%00byte")
    assert shown["iso\\u2066late\\u2069"] == (["\\u2066", "\\u2069"], base + "iso%E2%81%A6late%E2%81%A9")
    assert shown["zero\\u200bwidth\\xa0nbsp"] == (["\\u200b", "\\xa0"], base + "zero%E2%80%8Bwidth%C2%A0nbsp")
    assert shown["hash#frag"] == ([], base + "hash%23frag")
