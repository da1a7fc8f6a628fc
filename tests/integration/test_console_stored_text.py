"""Stored text on the console's pages (docs/console.md, "Stored text is
shown as text"): a bidirectional control (U+202E RIGHT-TO-LEFT OVERRIDE and
its kin) in an aggregate id would reorder what the operator reads, so the
HTML layer shows it as its escape in a marked span, never as itself. The
API refuses such an aggregate id now; one stored before (or imported) is
written to the store directly. A real server, a real HTTP client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import grpc
import pytest
from selenium.webdriver.common.by import By

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application, start
from service.store.memory import MemoryStore
from tests.support.browser import Browser, start_chromium
from tests.support.console import console, text_of
from tests.support.events import new_event
from tests.support.grpc_client import TEST_SETTINGS, command, connect
from tests.support.http import request

SPOOFED = "acc-\u202egpj.exe"  # reads "acc-exe.jpg" when the override is applied


@asynccontextmanager
async def served() -> AsyncIterator[Application]:
    store = MemoryStore()
    opened = bank.AccountOpened(owner="mallory")
    await store.append(
        SPOOFED,
        [new_event("bank.v1.AccountOpened", aggregate_type="Account", payload=opened.SerializeToString())],
        0,
    )
    app = await start(replace(TEST_SETTINGS, console_listen="127.0.0.1:0"), store=store)
    try:
        yield app
    finally:
        await app.stop(grace=0.5, drain=0)


async def test_a_bidirectional_control_in_an_aggregate_id_is_shown_escaped_and_marked() -> None:
    async with served() as app:
        log = await request(console(app), "GET", "/log")
    assert log.status == 200, log.text
    assert "\u202e" not in log.text
    assert 'acc-<span class="ctl">\\u202e</span>gpj.exe' in log.text
    assert "acc-\\u202egpj.exe" in text_of(log.text)
    # The link still names the aggregate itself (percent-encoded), not its escape.
    assert 'href="/aggregates/acc-%E2%80%AEgpj.exe"' in log.text


async def test_in_a_browser_the_live_tail_shows_a_bidirectional_control_escaped_and_marked() -> None:
    """The live tail builds its rows in the page's script: the same rule."""
    async with served() as app:
        driver = await asyncio.to_thread(start_chromium)
        try:
            browser = Browser(driver, f"http://{console(app)}")
            await browser.get("/tail")
            rows = "#tail tbody tr[data-position]"
            await browser.wait_until(lambda d: len(d.find_elements(By.CSS_SELECTOR, rows)) >= 1, what="a row")
            shown, marked = await browser.run(
                lambda: (
                    driver.find_element(By.CSS_SELECTOR, rows + " td:nth-child(2)").text,
                    [mark.text for mark in driver.find_elements(By.CSS_SELECTOR, rows + " td:nth-child(2) span.ctl")],
                )
            )
            await browser.run(lambda: driver.get("about:blank"))  # closes the stream
        finally:
            await asyncio.to_thread(driver.quit)
    assert shown == "acc-\\u202egpj.exe" and marked == ["\\u202e"]


async def test_a_refused_commands_bidirectional_controls_are_shown_escaped_on_the_audit_page() -> None:
    """A command refused for the control characters in its ids is audited
    with them (what was sent): the audit page shows them escaped."""
    settings = replace(TEST_SETTINGS, console_listen="127.0.0.1:0", anonymous_admin=True)
    app = await start(settings, store=MemoryStore())
    try:
        async with connect(app.address) as client:
            with pytest.raises(grpc.aio.AioRpcError):
                await client.submit(command("acc-1", bank.OpenAccount(owner="ann"), origin="web\u202eppa"))
        audit = await request(console(app), "GET", "/audit")
    finally:
        await app.stop(grace=0.5, drain=0)
    assert audit.status == 200, audit.text
    assert "\u202e" not in audit.text
    assert 'web<span class="ctl">\\u202e</span>ppa' in audit.text
