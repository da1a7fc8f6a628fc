"""The console's live tail across a stream broken between the pieces of a
split event (docs/console.md, Live): the ledger plugin
(tests/support/plugins.py) splits a stored AccountOpened v2 into
AccountOpened v3 + MoneyDeposited, both at the stored event's position. Each
message of ``/tail/events`` names where the page resumes (its SSE id): past
a position only once all of its events were sent, the pieces of a split
event shown before passed over, so a page reconnecting between two pieces
neither skips the second nor shows the first twice. It resumed after the
last event's position, skipping the second piece. A real server over a real
socket, the stream read as a browser's EventSource reads it."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.console import views
from service.plugins.registry import Registry
from service.store.memory import MemoryStore
from service.store.records import NewEvent
from tests.support import plugins
from tests.support.browser import Browser, start_chromium
from tests.support.console import console, server_sent
from tests.support.events import new_event
from tests.support.grpc_client import running_server
from tests.support.http import request


def opened_at_v2(owner: str) -> NewEvent:
    return new_event(
        "bank.v1.AccountOpened",
        aggregate_type="Book",
        payload=bank.AccountOpened(owner=owner).SerializeToString(),
        schema_version=2,
    )


def deposited_at_v1(amount: int) -> NewEvent:
    return new_event(
        "bank.v1.MoneyDeposited",
        aggregate_type="Book",
        payload=bank.MoneyDeposited(amount=amount).SerializeToString(),
        schema_version=1,
    )


@pytest.fixture
async def ledger() -> AsyncIterator[Application]:
    """Books written years ago: book-1 opened at AccountOpened v2 (position
    1, split in two when read) and a v1 deposit (2), then book-2 opened
    likewise (3), so the log also ends with a split event."""
    store = MemoryStore()
    await store.append("book-1", [opened_at_v2("ann"), deposited_at_v1(3)], 0)
    await store.append("book-2", [opened_at_v2("bob")], 0)
    async with running_server(store, registry=Registry([plugins.ledger]), console_listen="127.0.0.1:0") as (app, _):
        yield app


OPENED = ("event", 1, "book-1", "bank.v1.AccountOpened")
BONUS = ("event", 1, "book-1", "bank.v1.MoneyDeposited")
DEPOSIT = ("event", 2, "book-1", "bank.v1.MoneyDeposited")
BOB_OPENED = ("event", 3, "book-2", "bank.v1.AccountOpened")
BOB_BONUS = ("event", 3, "book-2", "bank.v1.MoneyDeposited")


def shown(messages: list[tuple[str, Any, str]]) -> list[tuple[object, ...]]:
    """Each message as (name, position, aggregate, type) for an event, as
    (name, position) for a checkpoint, with the resume point it names (the
    id of the event it names at ``after`` as ``ID``: a piece's id is made
    when it is read; ``test_the_resume_points_event_is_one_at_its_after``
    resumes with them)."""
    return [
        (
            (name, data["position"], data["aggregate_id"], data["event_type"]) if name == "event" else (name, data),
            re.sub(r"&event=[0-9a-f-]{36}(?=&|$)", "&event=ID", id_),
        )
        for name, data, id_ in messages
    ]


async def test_a_tail_broken_after_the_first_piece_resumes_before_its_position_passing_over_it(
    ledger: Application,
) -> None:
    address = console(ledger)
    first = await server_sent(address, "/tail/events?after=0", 1)
    # The first piece alone: position 1 is not complete, its one piece shown.
    assert shown(first) == [(OPENED, "after=0&shown=1:1")]
    again = await server_sent(address, "/tail/events?" + first[-1][2], 5)
    assert shown(again) == [
        (BONUS, "after=1&event=ID"),  # the second piece, not skipped; the first not shown twice
        (DEPOSIT, "after=2&event=ID"),
        (BOB_OPENED, "after=2&event=ID&shown=3:1"),
        (BOB_BONUS, "after=3&event=ID"),  # the last of the log: the server said it completes its position
        (("checkpoint", 3), "after=3&event=ID"),  # the caught-up mark
    ]


async def test_the_resume_points_event_is_one_at_its_after(ledger: Application) -> None:
    """Each resume point names, with ``event``, an event the tail showed at
    its ``after`` (a split event's piece, a checkpoint's): the stream it
    opens resumes checked (``after_event_id``) and is served; another id
    there is a log that went back (LOG_REWOUND, shown as the refusal), an
    id that is no UUID is refused before streaming."""
    address = console(ledger)
    points = [id_ for _, _, id_ in await server_sent(address, "/tail/events?after=0", 6)]
    assert [point for point in points if "event=" in point] == points[1:]  # all but "after=0&shown=1:1"
    for point in points[1:]:
        (first, *_) = await server_sent(address, "/tail/events?" + point, 1)
        assert first[0] != "refused", (point, first)
    other = f"/tail/events?after=2&event={uuid.uuid4()}"
    [(name, data, _)] = await server_sent(address, other, 1)
    assert name == "refused" and data.startswith("LOG_REWOUND: ")
    for query, reason in [("after=2&event=not-a-uuid", "INVALID_EVENT_ID"), ("event=" + str(uuid.uuid4()), "")]:
        answer = await request(address, "GET", "/tail/events?" + query)
        assert answer.status == 400, query
        assert answer.text.startswith(reason or "INVALID_POSITION: event: "), answer.text


async def test_a_tail_broken_inside_the_last_split_event_shows_only_its_rest(ledger: Application) -> None:
    address = console(ledger)
    messages = await server_sent(address, "/tail/events?after=2&shown=3:1", 2)
    assert shown(messages) == [(BOB_BONUS, "after=3&event=ID"), (("checkpoint", 3), "after=3&event=ID")]


async def test_events_between_after_and_a_partly_shown_position_are_shown_and_its_pieces_still_passed_over(
    ledger: Application,
) -> None:
    """``after=0&shown=3:1``: positions 1 and 2 were never shown, 3's first
    piece was. They are shown, the resume point moving only past complete
    positions and keeping 3 as partly shown; 3's first piece is passed
    over. The resume point jumped to 3 at the first of them (and 3's first
    piece came again)."""
    messages = await server_sent(console(ledger), "/tail/events?after=0&shown=3:1", 5)
    assert shown(messages) == [
        (OPENED, "after=0&shown=3:1"),
        (BONUS, "after=1&event=ID&shown=3:1"),
        (DEPOSIT, "after=2&event=ID&shown=3:1"),
        (BOB_BONUS, "after=3&event=ID"),
        (("checkpoint", 3), "after=3&event=ID"),
    ]


async def test_a_shown_without_the_after_it_was_counted_from_is_refused(ledger: Application) -> None:
    """``after`` defaults to 0 for a fresh tail; a ``shown`` read against
    that default would pass over the wrong pieces and name wrong resume
    points."""
    answer = await request(console(ledger), "GET", "/tail/events?shown=3:1")
    assert answer.status == 400
    assert answer.text.startswith("INVALID_POSITION: shown: ")


@pytest.mark.parametrize("shown_query", ["1:1", "3:0", "3", "3:x", "x:1", ":1", "3:1:1", "4:1000001"])
async def test_a_resume_point_that_is_no_such_thing_is_refused_not_ignored(
    ledger: Application, shown_query: str
) -> None:
    """``shown`` must name a position above ``after`` and at least one piece:
    anything else is refused (ignoring it would show pieces twice)."""
    answer = await request(console(ledger), "GET", f"/tail/events?after=2&shown={shown_query}")
    assert answer.status == 400
    assert answer.text.startswith("INVALID_POSITION: ")


async def test_in_a_browser_a_page_whose_stream_broke_after_a_first_piece_shows_every_event_once(
    ledger: Application, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first stream the console serves ends after one event, the first
    piece of a split one (as a stream cut by a proxy would): the page opens
    the next from the resume point that event named and shows each event
    once, the second piece too."""
    original = views.tail_stream
    opened: list[str] = []

    async def ending_after_one_event(parts: views.Parts, after: int, **options: Any) -> AsyncIterator[bytes]:
        resume = options.get("resume")
        opened.append(resume.query() if resume is not None else f"after={after}")
        stream = original(parts, after, **options)
        try:
            async for chunk in stream:
                yield chunk
                if len(opened) == 1 and b"\nevent: event\n" in chunk:
                    return
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    monkeypatch.setattr(views, "tail_stream", ending_after_one_event)
    driver = await asyncio.to_thread(start_chromium)
    try:
        browser = Browser(driver, f"http://{console(ledger)}")
        await browser.get("/tail")
        rows = "#tail tbody tr[data-position]"
        await browser.wait_until(lambda d: len(d.find_elements(By.CSS_SELECTOR, rows)) >= 5, what="5 rows")
        await asyncio.sleep(0.5)  # time for a row too many to come, were one to
        cells = await browser.run(
            lambda: [
                tuple(cell.text for cell in row.find_elements(By.CSS_SELECTOR, "td")[:4])
                for row in driver.find_elements(By.CSS_SELECTOR, rows)
            ]
        )
        await browser.run(lambda: driver.get("about:blank"))  # closes the stream
    finally:
        await asyncio.to_thread(driver.quit)
    assert opened[:2] == ["after=0", "after=0&shown=1:1"]
    # Newest on top: (position, aggregate, version, type), each event once.
    assert cells == [
        ("3", "book-2", "1", "bank.v1.MoneyDeposited"),
        ("3", "book-2", "1", "bank.v1.AccountOpened"),
        ("2", "book-1", "2", "bank.v1.MoneyDeposited"),
        ("1", "book-1", "1", "bank.v1.MoneyDeposited"),
        ("1", "book-1", "1", "bank.v1.AccountOpened"),
    ]
