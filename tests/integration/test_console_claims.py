"""docs/console.md, claim by claim: each claim the console's other tests
(test_console_http.py, test_console_browser.py, the console's part of
test_authorization_audit.py and test_observability_claims.py,
tests/unit/test_console_parts.py) left unasserted, or asserted only in
part, checked over real sockets (the live tail's reconnection in a headless
chromium):

- the console is off by default; the load page samples every 5 s, keeps 15
  minutes and reloads at each sample;
- pages are plain HTML: one stylesheet, no inline script or style, a script
  only on the live tail, the load's charts inline SVG;
- with ``--auth`` every page and form but the login needs a session, and the
  credential never comes back to the browser;
- an aggregate's events 100 a page, each with its envelope (ids, user,
  origin, correlation and causation) beside its payload;
- projections: parked events and the last error (escaped), refreshed every
  two seconds; a read model of every type is listed to administrators only;
- groups: the events acknowledged, each live consumer with how many
  segments it holds, refreshed every two seconds; a group of every type is
  listed only to who may subscribe to every type;
- a group's page and a live tail refused for want of a grant are audited
  with the page's path (the tail was not: fixed);
- the live tail carries only the aggregate types the principal may
  subscribe to, starts 50 events back and resumes after ``?after=``; in a
  browser it reconnects from the last event it showed, newest on top, a
  hostile payload shown as text;
- the cluster page: when the store was last heard from, when this replica's
  leases lapse, who runs each projection; neither it nor the load page
  names an aggregate;
- the load counts conflicts and RPCs refused before their request was read;
- without ``--auth``: anonymous reads everything and administers nothing
  unless ``--anonymous-admin``; ``[::1]`` is a loopback host name, a
  request naming no host is refused 421;
- sessions end when the server stops, after an hour without a request (a
  live tail is not a request);
- refused logins are sampled as the API's unauthenticated calls are;
- a form must come from the console's own origin: one with no ``Origin``
  is refused even with the session's CSRF token (it was not: fixed);
- one request per connection, 16 KiB of head, 64 KiB of body, 10 s to send
  them; every kind of answer carries the security headers; beyond loopback
  over plaintext the server warns.

Where a test waits, it waits for an outcome (``eventually``); the bounds
only make a broken build fail rather than hang."""

from __future__ import annotations

import asyncio
import contextlib
import html
import inspect
import json
import logging
import re
import time
import types
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import grpc
import pytest
from selenium.webdriver.common.by import By

import service.audit
from domain_plugins import bank_account
from domain_plugins import box as box_plugin
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.app import Application, start
from service.client import ChronicleClient
from service.console import http as console_http
from service.console import views
from service.console.load import LoadSampler
from service.console.server import Console
from service.console.sessions import Sessions
from service.observability.metrics import Metrics
from service.plugins import Documents, Plugin, ProjectedEvent
from service.plugins.registry import Registry
from service.security.credentials import ApiKeyEntry, ApiKeys, Authenticator, hash_api_key
from service.settings import Settings
from service.store.base import AuditQuery, StoreAdapter
from service.store.memory import MemoryStore
from service.store.records import REFUSED
from tests.support.browser import Browser, start_chromium
from tests.support.console import FORM, log_in, session_cookie
from tests.support.grpc_client import TEST_SETTINGS, command, connect
from tests.support.http import Answer, request, send_raw
from tests.support.plugins import openings
from tests.support.security import POLICY, api_key_file, bearer, write
from tests.support.waiting import eventually

ROOT_KEY = "claims-root-key-0123456789"  # root: an operator (reads and subscribes to everything, administers)
ALICE_KEY = "claims-alice-key-0123456789"  # alice: a teller (reads and subscribes to accounts)
BOB_KEY = "claims-bob-key-0123456789"  # bob: a boxer (reads boxes, subscribes to nothing)
# The tests' policy, and a role that may subscribe to every aggregate type.
CLAIMS_POLICY = (
    POLICY
    + """
[roles.watcher]
subscribe = ["*"]
"""
)
HOSTILE = "<script>window.pwned = 1</script><img src=x onerror='window.pwned=2'>"

# A read model that parks the deposits it cannot take, and one that stops at
# them, reporting an error that holds markup.
claims = Plugin("claims")
parking = claims.projection(
    "claims.parking", aggregate_types=["Account"], on_failure="park", max_attempts=1, retry_seconds=0.01
)
stuck = claims.projection("claims.stuck", aggregate_types=["Account"], retry_seconds=0.05)


@parking.on(bank.MoneyDeposited)
def _park(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Documents) -> None:
    raise ValueError("no deposits here")


@stuck.on(bank.MoneyDeposited)
def _stop(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Documents) -> None:
    raise RuntimeError(HOSTILE)


def with_auth(tmp_path: Path, **overrides: Any) -> Settings:
    return replace(
        TEST_SETTINGS,
        auth=True,
        policy_file=write(tmp_path / "policy.toml", CLAIMS_POLICY),
        api_keys_file=api_key_file(
            tmp_path / "keys.toml",
            [
                (ROOT_KEY, "root", ["watcher", "teller", "boxer"]),
                (ALICE_KEY, "alice", ["teller"]),
                (BOB_KEY, "bob", []),
            ],
        ),
        **{"console_listen": "127.0.0.1:0", **overrides},
    )


def without_auth(**overrides: Any) -> Settings:
    return replace(TEST_SETTINGS, console_listen="127.0.0.1:0", **overrides)


@asynccontextmanager
async def served(
    settings: Settings, *, store: StoreAdapter | None = None, registry: Registry | None = None
) -> AsyncIterator[Application]:
    app = await start(settings, store=store if store is not None else MemoryStore(), registry=registry)
    try:
        yield app
    finally:
        await app.stop(grace=0.5, drain=0)


def address_of(app: Application) -> str:
    assert app.console is not None
    return app.console.address


async def cookie_of(address: str, key: str) -> str:
    answer = await log_in(address, key)
    assert answer.status == 303, answer.text
    return session_cookie(answer)


async def get(address: str, path: str, cookie: str = "") -> Answer:
    return await request(address, "GET", path, headers={"Cookie": cookie} if cookie else None)


def rows(page: str, table_id: str) -> list[list[str]]:
    """The body rows of the table ``table_id``, each cell as raw markup."""
    found = re.search(rf'<table id="{table_id}">(.*?)</table>', page, re.S)
    assert found is not None, f"no table {table_id}"
    body = found.group(1).partition("<tbody>")[2]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


def text_of(markup: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def row_named(page: str, table_id: str, name: str) -> list[str]:
    (found,) = [row for row in rows(page, table_id) if row and text_of(row[0]) == name]
    return found


def first_column(page: str, table_id: str) -> list[str]:
    return [text_of(row[0]) for row in rows(page, table_id)]


async def audited_refusals(app: Application) -> list[tuple[str, str, str, str]]:
    return [
        (e.command_type, e.aggregate_id, e.principal, e.reason)
        for e in await app.store.audit.read_audit(AuditQuery())
        if e.outcome == REFUSED
    ]


# -- the live tail's stream, read as a browser's EventSource reads it --------------------


async def open_stream(
    address: str, path: str, cookie: str = ""
) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    extra = f"Cookie: {cookie}\r\n" if cookie else ""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {address}\r\n{extra}\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    return head, reader, writer


async def messages_until(reader: asyncio.StreamReader, wanted: Callable[[str, Any], bool]) -> list[tuple[str, Any]]:
    """The stream's messages (event name, data) up to the first ``wanted``
    one, or to the end of the stream."""
    seen: list[tuple[str, Any]] = []
    async with asyncio.timeout(20):
        while True:
            try:
                raw = (await reader.readuntil(b"\n\n")).decode()
            except asyncio.IncompleteReadError:
                return seen
            fields = dict(line.partition(": ")[::2] for line in raw.strip().split("\n") if not line.startswith(":"))
            if "event" not in fields:
                continue  # retry: and keep-alive comments
            message = (fields["event"], json.loads(fields["data"]))
            seen.append(message)
            if wanted(*message):
                return seen


def positions(messages: list[tuple[str, Any]]) -> list[int]:
    return [data["position"] for name, data in messages if name == "event"]


# -- defaults ---------------------------------------------------------------------------------


async def test_the_console_is_off_by_default_and_samples_the_load_every_five_seconds_for_fifteen_minutes() -> None:
    assert (Settings().console_listen, Settings().console_sample_seconds) == ("", 5.0)
    async with served(TEST_SETTINGS) as quiet:
        assert quiet.console is None
    async with served(without_auth()) as app:
        load = await get(address_of(app), "/load")
    assert load.status == 200
    assert "Up to the last 15 minutes, one sample every 5 s" in load.text
    assert '<meta http-equiv="refresh" content="5">' in load.text  # reloaded at each sample


# -- what a page is made of -----------------------------------------------------------------


async def test_pages_are_plain_html_with_one_stylesheet_and_a_script_only_on_the_live_tail() -> None:
    async with served(without_auth(anonymous_admin=True)) as app:
        async with connect(app.address) as client:
            await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        async with ChronicleClient.connect(app.address) as admin:
            await admin.groups.create("billing", aggregate_types=["Account"])
        address = address_of(app)
        pages = ["/log", "/aggregates/acc-1", "/tail", "/projections", "/groups", "/groups/billing", "/load"]
        answers = {path: await get(address, path) for path in [*pages, "/cluster"]}
        script = await get(address, "/static/console.js")
    for path, answer in answers.items():
        assert (answer.status, answer.header("content-type")) == (200, "text/html; charset=utf-8"), path
        assert answer.text.startswith("<!doctype html>")
        assert re.findall(r"<link[^>]*>", answer.text) == ['<link rel="stylesheet" href="/static/console.css">']
        scripts = re.findall(r"<script[^>]*>", answer.text)
        assert scripts == (['<script src="/static/console.js" defer="">'] if path == "/tail" else []), path
        assert " style=" not in answer.text and "<style" not in answer.text, path
    assert answers["/load"].text.count("<svg") == 3  # the charts, drawn by the server
    assert (script.status, script.header("content-type")) == (200, "text/javascript; charset=utf-8")


# -- who sees what ----------------------------------------------------------------------------


async def test_with_auth_every_page_and_form_but_the_login_needs_a_session(tmp_path: Path) -> None:
    async with served(with_auth(tmp_path)) as app:
        address = address_of(app)
        origin = {**FORM, "Origin": f"http://{address}"}
        gets = ["/", "/log", "/aggregates/acc-1", "/tail", "/tail/events", "/projections", "/groups"]
        gets += ["/groups/billing", "/load", "/cluster", "/nowhere"]
        posts = ["/logout", "/projections/bank.balances_by_owner/rebuild", "/groups/billing/replay"]
        for cookie in ("", "chronicle_console=made-up"):
            for path in gets:
                answer = await get(address, path, cookie)
                assert (answer.status, answer.header("location")) == (303, "/login"), path
            for path in posts:
                headers = {**origin, **({"Cookie": cookie} if cookie else {})}
                answer = await request(address, "POST", path, headers=headers, body=b"csrf_token=x")
                assert (answer.status, answer.header("location")) == (303, "/login"), path
        assert (await get(address, "/login")).status == 200


async def test_the_credential_never_comes_back_to_the_browser(tmp_path: Path) -> None:
    async with served(with_auth(tmp_path)) as app:
        address = address_of(app)
        guessed = "chr_a-guessed-key-0123456789"
        refused = await log_in(address, guessed)
        assert refused.status == 401 and guessed not in refused.text
        cookie = await cookie_of(address, ROOT_KEY)
        for path in ("/log", "/tail", "/projections", "/groups", "/load", "/cluster"):
            answer = await get(address, path, cookie)
            assert answer.status == 200 and ROOT_KEY not in answer.text, path
            assert all(ROOT_KEY not in value for _, value in answer.headers), path


async def test_with_auth_the_load_page_is_an_administrators_and_refused_to_others_audited(tmp_path: Path) -> None:
    """Every principal's commands, latency and refusals by reason, server-wide:
    no read grant covers them, so only an administrator sees the page (and
    its link); alice (a teller) and bob are refused ADMIN_DENIED."""
    async with served(with_auth(tmp_path)) as app:
        address = address_of(app)
        answers = {key: await get(address, "/load", await cookie_of(address, key)) for key in (ROOT_KEY, ALICE_KEY)}
        bobs_log = await get(address, "/log", await cookie_of(address, BOB_KEY))
        bobs_load = await get(address, "/load", await cookie_of(address, BOB_KEY))
        audited = await audited_refusals(app)
    assert answers[ROOT_KEY].status == 200 and "Up to the last 15 minutes" in answers[ROOT_KEY].text
    assert 'href="/load"' in answers[ROOT_KEY].text
    for refused in (answers[ALICE_KEY], bobs_load):
        assert refused.status == 403 and "ADMIN_DENIED" in refused.text
        assert "Up to the last" not in refused.text and "refusals" not in refused.text.lower()
    assert 'href="/load"' not in bobs_log.text  # no link to a page refused
    assert sorted(audited) == [
        ("console/load", "", "alice", "ADMIN_DENIED"),
        ("console/load", "", "bob", "ADMIN_DENIED"),
    ]


# -- the aggregate page ----------------------------------------------------------------------


def _payloads(page: str) -> list[str]:
    return re.findall(r'<pre class="json payload">', page)


def _envelopes(page: str) -> list[dict[str, Any]]:
    found = re.findall(r'<summary>envelope</summary><pre class="json">(.*?)</pre>', page, re.S)
    return [json.loads(html.unescape(one)) for one in found]


async def test_an_aggregates_events_come_a_hundred_a_page_each_with_its_envelope_beside_its_payload() -> None:
    async with served(without_auth()) as app:
        async with connect(app.address) as client:
            opened = command("acc-1", bank.OpenAccount(owner="ann"), origin="teller-app", user_id="ann")
            opened.correlation_id, opened.causation_id = "corr-1", "cause-1"
            opened_id = (await client.submit(opened)).events[0].event_id
            for _ in range(104):
                await client.submit(command("acc-1", bank.Deposit(amount=1)))
        address = address_of(app)
        first = await get(address, "/aggregates/acc-1")
        later = re.search(r'<a href="(/aggregates/acc-1\?from=\d+)" class="next">Later events', first.text)
        assert later is not None
        rest = await get(address, later.group(1))
    assert len(_payloads(first.text)) == 100
    assert later.group(1) == "/aggregates/acc-1?from=101"
    assert len(_payloads(rest.text)) == 5 and "Later events" not in rest.text
    envelope = _envelopes(first.text)[0]
    assert {key: envelope[key] for key in ("event_id", "user_id", "origin", "correlation_id", "causation_id")} == {
        "event_id": opened_id,
        "user_id": "ann",
        "origin": "teller-app",
        "correlation_id": "corr-1",
        "causation_id": "cause-1",
    }
    assert envelope["command_id"] == opened.command_id
    assert "payload" not in envelope  # the payload is beside it, decoded
    assert "&quot;owner&quot;: &quot;ann&quot;" in first.text


# -- projections -----------------------------------------------------------------------------


async def test_projections_show_their_parked_events_and_last_error_escaped_refreshed_every_two_seconds(
    tmp_path: Path,
) -> None:
    registry = Registry([bank_account.plugin, box_plugin.plugin, openings, claims])
    async with served(with_auth(tmp_path, poll_seconds=0.05), registry=registry) as app:
        async with connect(app.address, interceptors=bearer(ROOT_KEY)) as root:
            await root.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id="root"))
            await root.submit(command("acc-1", bank.Deposit(amount=5), user_id="root"))
        address = address_of(app)
        cookie = await cookie_of(address, ROOT_KEY)
        page = ""

        async def parked_and_failed() -> bool:
            nonlocal page
            page = (await get(address, "/projections", cookie)).text
            parked = text_of(row_named(page, "projections", "claims.parking")[7])
            failed = text_of(row_named(page, "projections", "claims.stuck")[5])
            return parked == "1" and failed == "failed"

        await eventually(parked_and_failed, what="one projection parking an event and another stopping")
        alice = await get(address, "/projections", await cookie_of(address, ALICE_KEY))
    assert '<meta http-equiv="refresh" content="2">' in page
    error = row_named(page, "projections", "claims.stuck")[8]
    assert HOSTILE in text_of(error) and "<script>" not in error and "&lt;script&gt;" in error
    assert "<script>" not in page.replace('<script src="/static/console.js"', "")
    # A read model made of no type in particular is an administrator's to see.
    assert "openings.every_opening" in first_column(page, "projections")
    assert "openings.every_opening" not in first_column(alice.text, "projections")
    assert "bank.balances_by_owner" in first_column(alice.text, "projections")


# A read model that parks every deposit, after three attempts a minute apart.
patience = Plugin("patience")
patient = patience.projection(
    "patience.deposits", aggregate_types=["Account"], on_failure="park", max_attempts=3, retry_seconds=60
)


@patient.on(bank.MoneyDeposited)
def _not_yet(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Documents) -> None:
    raise ValueError("not yet")


async def test_a_projection_that_parks_is_shown_parking_not_failed_while_it_tries_an_event_again(
    tmp_path: Path,
) -> None:
    registry = Registry([bank_account.plugin, box_plugin.plugin, claims, patience])
    async with served(with_auth(tmp_path, poll_seconds=0.05), registry=registry) as app:
        async with connect(app.address, interceptors=bearer(ROOT_KEY)) as root:
            await root.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id="root"))
            await root.submit(command("acc-1", bank.Deposit(amount=5), user_id="root"))
        address = address_of(app)
        cookie = await cookie_of(address, ROOT_KEY)
        row: list[str] = []

        async def parking_and_parked() -> bool:
            nonlocal row
            page = (await get(address, "/projections", cookie)).text
            row = row_named(page, "projections", "patience.deposits")
            parked = row_named(page, "projections", "claims.parking")  # parks at its first failure
            return text_of(row[5]) == "parking" and text_of(parked[7]) == "1"

        await eventually(parking_and_parked, what="a projection trying again an event it will park")
    assert 'class="state-parking"' in row[5] and "error" not in row[5]
    assert "Attempt 1 of 3 failed on the event at position 2" in text_of(row[8])
    assert "parked after 3 failed attempts (0 parked so far)" in text_of(row[8])
    assert "ValueError: not yet" in text_of(row[8]) and 'class="error"' not in row[8]


# -- subscription groups -----------------------------------------------------------------------


async def test_groups_show_the_events_acknowledged_and_skipped_and_each_consumers_segments_refreshed_every_two_seconds(
    tmp_path: Path,
) -> None:
    async with served(with_auth(tmp_path)) as app:
        address = address_of(app)
        async with ChronicleClient.connect(app.address, token=ROOT_KEY) as client:
            await client.groups.create("accounts", aggregate_types=["Account"], segments=4)
            await client.groups.create("everything")
            async with connect(app.address, interceptors=bearer(ROOT_KEY)) as root:
                await root.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id="root"))
                await root.submit(command("acc-2", bank.OpenAccount(owner="bob"), user_id="root"))

            async def consume() -> None:
                async with client.consume("accounts", consumer="worker") as deliveries:
                    async for delivery in deliveries:
                        if delivery.event.aggregate_id == "acc-2":
                            await delivery.skip()
                        else:
                            await delivery.ack()

            consuming = asyncio.ensure_future(consume())
            try:
                cookie = await cookie_of(address, ROOT_KEY)
                page = ""

                async def settled_by_one_consumer_of_four_segments() -> bool:
                    nonlocal page
                    page = (await get(address, "/groups", cookie)).text
                    row = [text_of(cell) for cell in row_named(page, "groups", "accounts")]
                    # acknowledged, parked, skipped, dismissed; consumers (segments)
                    counted = row[4:8] == ["1", "0", "1", "0"]
                    return counted and re.fullmatch(r"worker#\S+ \(4\)", row[8]) is not None

                await eventually(settled_by_one_consumer_of_four_segments, what="one event acknowledged, one skipped")
                group = await get(address, "/groups/accounts", cookie)
                alice = await get(address, "/groups", await cookie_of(address, ALICE_KEY))
            finally:
                consuming.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await consuming
    assert '<meta http-equiv="refresh" content="2">' in page
    (consumer,) = [[text_of(cell) for cell in row] for row in rows(group.text, "consumers")]
    assert consumer[0].startswith("worker#") and consumer[1] == "0, 1, 2, 3"
    # A group of every type is listed only to who may subscribe to them all.
    assert first_column(page, "groups") == ["accounts", "everything"]
    assert first_column(alice.text, "groups") == ["accounts"]


async def test_a_groups_parked_events_are_listed_a_hundred_to_a_page(tmp_path: Path) -> None:
    async with served(with_auth(tmp_path)) as app:
        address = address_of(app)
        async with ChronicleClient.connect(app.address, token=ROOT_KEY) as client:
            await client.groups.create("accounts", aggregate_types=["Account"], max_delivery_attempts=1)
            async with connect(app.address, interceptors=bearer(ROOT_KEY)) as root:
                for number in range(105):
                    await root.submit(command(f"acc-{number}", bank.OpenAccount(owner="ann"), user_id="root"))

            async def refuse_each() -> None:
                async with client.consume("accounts", consumer="worker") as deliveries:
                    async for delivery in deliveries:
                        await delivery.nack("no")

            consuming = asyncio.ensure_future(refuse_each())
            try:

                async def all_parked() -> bool:
                    return len(await client.groups.parked("accounts", limit=1000)) == 105

                await eventually(all_parked, what="105 events parked")
            finally:
                consuming.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await consuming
        cookie = await cookie_of(address, ROOT_KEY)
        first = (await get(address, "/groups/accounts", cookie)).text
        following = re.search(r'<a href="(/groups/accounts\?[^"]+)" class="next">', first)
        assert following is not None
        rest = (await get(address, html.unescape(following.group(1)), cookie)).text
    positions = [int(text_of(row[0])) for row in rows(first, "parked") + rows(rest, "parked")]
    assert len(rows(first, "parked")) == 100 and len(positions) == 105
    assert positions == sorted(set(positions))  # every one once, in order
    assert 'class="next"' not in rest


# -- refusals are audited ----------------------------------------------------------------------


async def test_a_group_page_refused_for_want_of_a_grant_is_audited_with_its_path(tmp_path: Path) -> None:
    async with served(with_auth(tmp_path)) as app:
        async with ChronicleClient.connect(app.address, token=ROOT_KEY) as client:
            await client.groups.create("accounts", aggregate_types=["Account"])
        address = address_of(app)
        refused = await get(address, "/groups/accounts", await cookie_of(address, BOB_KEY))
        assert refused.status == 403 and "CONSUME_DENIED" in refused.text
        audited = await audited_refusals(app)
    assert audited == [("console/groups/accounts", "", "bob", "CONSUME_DENIED")]


async def test_a_live_tail_refused_for_want_of_a_grant_is_audited_with_its_path(tmp_path: Path) -> None:
    """Bob may subscribe to nothing: his tail says SUBSCRIBE_DENIED, and is
    written to the audit log as a denied Subscribe is (it was not)."""
    async with served(with_auth(tmp_path)) as app:
        address = address_of(app)
        cookie = await cookie_of(address, BOB_KEY)
        head, reader, writer = await open_stream(address, "/tail/events?after=0", cookie)
        try:
            assert head.startswith(b"HTTP/1.1 200")
            seen = await messages_until(reader, lambda name, data: name == "refused")
        finally:
            writer.close()
        assert seen[-1][0] == "refused" and seen[-1][1].startswith("SUBSCRIBE_DENIED")

        async def audited() -> bool:
            return await audited_refusals(app) == [("console/tail/events", "", "bob", "SUBSCRIBE_DENIED")]

        await eventually(audited, what="the refused tail in the audit log")


# -- the live tail -------------------------------------------------------------------------------


async def test_the_live_tail_carries_only_what_the_principal_may_subscribe_to_from_where_it_is_asked(
    tmp_path: Path,
) -> None:
    async with served(with_auth(tmp_path)) as app:
        address = address_of(app)
        async with connect(app.address, interceptors=bearer(ROOT_KEY)) as root:
            await root.submit(command("box-1", box.CreateBox(name="b1"), user_id="root"))  # 1
            await root.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id="root"))  # 2
            await root.submit(command("box-2", box.CreateBox(name="b2"), user_id="root"))  # 3
            await root.submit(command("acc-1", bank.Deposit(amount=5), user_id="root"))  # 4
            for number in range(60):  # 5 .. 64
                await root.submit(command(f"acc-{number + 10}", bank.OpenAccount(owner="x"), user_id="root"))
        cookie = await cookie_of(address, ALICE_KEY)
        tail = await get(address, "/tail", cookie)
        streams = {}
        for after in (0, 2):
            _, reader, writer = await open_stream(address, f"/tail/events?after={after}", cookie)
            try:
                streams[after] = await messages_until(
                    reader, lambda name, data: name == "event" and data["position"] >= 4
                )
            finally:
                writer.close()
    # The page starts 50 events back from the log's head (64).
    assert 'data-after="14"' in tail.text
    # alice may subscribe to accounts, not to boxes: positions 1 and 3 never come.
    assert positions(streams[0]) == [2, 4]
    assert positions(streams[2]) == [4]
    (deposited,) = [data for name, data in streams[2] if name == "event"]
    assert (deposited["aggregate_id"], deposited["version"], deposited["event_type"]) == (
        "acc-1",
        2,
        "bank.v1.MoneyDeposited",
    )


async def test_in_a_browser_the_live_tail_reconnects_from_the_last_event_it_showed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first stream the console serves ends after one event (as a
    stream cut by a proxy would): the page opens another from the event it
    showed, so nothing is shown twice or skipped; newest on top; a hostile
    payload is shown as text and nothing of it runs."""
    original = views.tail_stream
    opened: list[int] = []

    async def ending_after_one_event(parts: views.Parts, after: int, **options: Any) -> AsyncIterator[bytes]:
        opened.append(after)
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
        async with served(without_auth()) as app:
            browser = Browser(driver, f"http://{address_of(app)}")
            async with connect(app.address) as client:
                await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
                await client.submit(command("acc-2", bank.OpenAccount(owner=HOSTILE)))
                await browser.get("/tail")
                shown = "#tail tbody tr[data-position]"
                await browser.wait_until(lambda d: len(d.find_elements(By.CSS_SELECTOR, shown)) == 2, what="2 rows")
                await client.submit(command("acc-1", bank.Deposit(amount=5)))
                await browser.wait_until(lambda d: len(d.find_elements(By.CSS_SELECTOR, shown)) == 3, what="3 rows")
            rows_shown = await browser.run(
                lambda: [e.get_attribute("data-position") for e in driver.find_elements(By.CSS_SELECTOR, shown)]
            )
            payloads = await browser.texts("#tail pre.payload")
            pwned = await browser.run(lambda: driver.execute_script("return window.pwned"))
            images = await browser.find_all("#tail img")
            await browser.run(lambda: driver.get("about:blank"))  # closes the stream
    finally:
        await asyncio.to_thread(driver.quit)
    assert opened[:2] == [0, 1]  # the second stream began after the one event the first showed
    assert rows_shown == ["3", "2", "1"]
    assert HOSTILE in payloads[1] and pwned is None and images == []


# -- the cluster and the load -------------------------------------------------------------------


async def test_the_cluster_shows_when_the_store_was_heard_when_leases_lapse_and_who_runs_each_projection() -> None:
    async with served(without_auth()) as app:
        async with connect(app.address) as client:
            await client.submit(command("acc-secret-7", bank.OpenAccount(owner="ann")))
        address = address_of(app)
        page = ""

        async def projections_held() -> bool:
            nonlocal page
            page = (await get(address, "/cluster")).text
            held = rows(page, "projection-leases")
            return bool(held) and all("<code>" in row[1] for row in held)

        await eventually(projections_held, what="every projection lease held")
        load = await get(address, "/load")
    (member,) = rows(page, "members")
    me = text_of(member[0])
    assert text_of(member[3]) == "this replica"
    assert re.search(r"this replica last heard from the store \d+\.\d s ago", page)
    assert re.search(r"This replica holds 64 partition leases; the soonest lapses in \d+\.\d s unless renewed", page)
    leases = {text_of(row[0]): (text_of(row[1]), text_of(row[3])) for row in rows(page, "projection-leases")}
    assert set(leases) == {"bank.balances_by_owner", "bank.transfers"}
    kinds = {text_of(row[0]): text_of(row[4]) for row in rows(page, "projection-leases")}
    assert kinds == {"bank.balances_by_owner": "projection", "bank.transfers": "reaction"}
    assert all(owner == me and re.fullmatch(r"\d+\.\d s", lapses) for owner, lapses in leases.values())
    assert '<meta http-equiv="refresh" content="2">' in page
    # Counts, timings, member ids and addresses; never an aggregate id.
    assert "acc-secret-7" not in page and "acc-secret-7" not in load.text


async def test_the_load_counts_conflicts_and_rpcs_refused_before_their_request_was_read(tmp_path: Path) -> None:
    metrics = Metrics()  # the server's own metric names
    now = [0.0]
    sampler = LoadSampler(metrics.registry, clock=lambda: now[0])
    assert (sampler.interval, sampler.window, sampler.samples.maxlen) == (5.0, 900.0, 180)
    metrics.conflicts.inc(3)
    metrics.rpc_refusals.labels(reason="UNKNOWN_API_KEY").inc(2)
    now[0] = 1.0
    sample = sampler.sample()
    assert (sample.conflicts_per_second, dict(sample.refusals)) == (3.0, {"UNKNOWN_API_KEY": 2.0})

    async with served(with_auth(tmp_path, console_sample_seconds=0.1)) as app:
        async with connect(app.address, interceptors=bearer("chr_not-a-key-anyone-has-0123456789")) as stranger:
            with pytest.raises(grpc.aio.AioRpcError):
                await stranger.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        address = address_of(app)
        cookie = await cookie_of(address, ROOT_KEY)

        async def refusal_shown() -> bool:
            page = (await get(address, "/load", cookie)).text
            return "UNKNOWN_API_KEY" in first_column(page, "refusals")

        await eventually(refusal_shown, what="the refused RPC on the load page")


# -- without --auth -------------------------------------------------------------------------------


async def test_without_auth_anyone_reads_everything_and_administers_nothing_unless_anonymous_admin() -> None:
    rebuild = "/projections/bank.balances_by_owner/rebuild"
    for admin in (False, True):
        async with served(without_auth(anonymous_admin=admin)) as app:
            async with connect(app.address) as client:
                await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
                await client.submit(command("box-1", box.CreateBox(name="b")))
            address = address_of(app)
            port = address.rpartition(":")[2]
            listed = await get(address, "/log")
            opened = await get(address, "/aggregates/acc-1")
            projections = await get(address, "/projections")
            # An anonymous session of its own, with a real CSRF token, from the first page on.
            cookie = session_cookie(projections)
            token = re.search(r'name="csrf_token" value="([^"]+)"', projections.text)
            assert (token is not None and len(token.group(1)) >= 32) is admin  # a form only for an admin
            origin = {**FORM, "Origin": f"http://{address}"}
            forged = [
                await request(address, "POST", rebuild, headers=origin),
                await request(address, "POST", rebuild, headers=origin, body=b"csrf_token=bogus"),
                await request(address, "POST", rebuild, headers={**origin, "Cookie": cookie}, body=b"csrf_token=bogus"),
            ]
            body = urlencode({"csrf_token": token.group(1) if token else ""}).encode()
            posted = await request(address, "POST", rebuild, headers={**origin, "Cookie": cookie}, body=body)
            told = await get(address, "/projections", cookie)
            told_again = await get(address, "/projections", cookie)
            ipv6 = await request(address, "GET", "/log", host=f"[::1]:{port}")
            nameless = await send_raw(address, b"GET /log HTTP/1.1\r\n\r\n")
        assert first_column(listed.text, "aggregates") == ["acc-1", "box-1"]
        assert opened.status == 200 and "&quot;owner&quot;: &quot;ann&quot;" in opened.text
        assert ("form" in projections.text and 'class="rebuild"' in projections.text) is admin
        assert "Log out" not in projections.text  # no one to log out
        assert [answer.status for answer in forged] == [403, 403, 403]
        if admin:
            assert (posted.status, posted.header("location")) == (303, "/projections")
            assert "Rebuilding bank.balances_by_owner" in told.text
            assert 'id="notice"' not in told_again.text  # told once
        else:  # no form, so no token: refused before the policy is asked
            assert posted.status == 403
        assert "anonymous (authentication is off)" in listed.text
        assert (ipv6.status, nameless.status) == (200, 421)


# -- sessions ---------------------------------------------------------------------------------------


async def test_sessions_end_when_the_server_stops(tmp_path: Path) -> None:
    store = MemoryStore()
    settings = with_auth(tmp_path)
    async with served(settings, store=store) as first:
        cookie = await cookie_of(address_of(first), ROOT_KEY)
        assert (await get(address_of(first), "/log", cookie)).status == 200
    async with served(settings, store=store) as second:
        answer = await get(address_of(second), "/log", cookie)
    assert (answer.status, answer.header("location")) == (303, "/login")


def test_sessions_end_after_an_hour_without_a_request_and_a_live_tail_is_not_one() -> None:
    key = "k" * 24
    now = [0.0]
    sessions = Sessions(
        Authenticator(api_keys=ApiKeys({hash_api_key(key): ApiKeyEntry("ann", frozenset())})), clock=lambda: now[0]
    )
    assert inspect.signature(Console).parameters["session_idle_seconds"].default == 3600.0  # what app.py takes
    idle, _ = sessions.log_in(key)
    tailing, _ = sessions.log_in(key)
    now[0] = 3600.0
    assert sessions.find(idle) is not None  # an hour to the second: still there
    assert sessions.still_live(tailing) is not None  # as a tail asks before each message
    now[0] = 3600.5
    assert sessions.find(idle) is not None  # its request at 3600 s kept it
    assert sessions.still_live(tailing) is None  # the tail's checks did not
    now[0] = 3600.5 + 3600.5  # an hour and a half-second after its last request
    assert sessions.find(idle) is None


async def test_refused_logins_are_sampled_as_the_apis_unauthenticated_calls_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fifty refused logins are recorded one by one (the sample's burst); past
    them, with no time for the bucket to refill, the rest are counted into
    one entry."""
    monkeypatch.setattr(service.audit, "time", types.SimpleNamespace(monotonic=lambda: 1000.0, time_ns=time.time_ns))
    async with served(with_auth(tmp_path)) as app:
        address = address_of(app)
        for _ in range(55):
            assert (await log_in(address, "chr_not-a-key-anyone-has-0123456789")).status == 401

        async def sampled() -> bool:
            entries = await app.store.audit.read_audit(AuditQuery())
            return sum(e.occurrences for e in entries) == 55

        await eventually(sampled, what="the refusals past the burst counted into one entry")
        entries = await app.store.audit.read_audit(AuditQuery())
    assert {(e.command_type, e.reason) for e in entries} == {("console/login", "UNKNOWN_API_KEY")}
    counted = sorted(e.occurrences for e in entries)
    # The burst one by one, the rest counted (into one entry, or two if a
    # flush fell between them): fewer entries than refusals.
    assert counted[:50] == [1] * 50 and len(counted) < 55 and counted[-1] > 1


# -- forms -------------------------------------------------------------------------------------------


async def test_a_form_that_names_no_origin_is_refused_even_with_the_sessions_csrf_token(tmp_path: Path) -> None:
    """The doc: a form that changes something carries the CSRF token *and*
    must come from the console's own origin. A POST with the token and no
    ``Origin`` at all was let through (the check ran only on an ``Origin``
    that was there), unlike the login's."""
    async with served(with_auth(tmp_path)) as app:
        address = address_of(app)
        cookie = await cookie_of(address, ROOT_KEY)
        page = await get(address, "/log", cookie)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token is not None
        body = urlencode({"csrf_token": token.group(1)}).encode()
        rebuild = "/projections/bank.balances_by_owner/rebuild"
        for path in (rebuild, "/logout"):
            nameless = await request(address, "POST", path, headers={**FORM, "Cookie": cookie}, body=body)
            assert nameless.status == 403, path
        assert (await get(address, "/log", cookie)).status == 200  # still logged in
        same_origin = {**FORM, "Cookie": cookie, "Origin": f"http://{address}"}
        assert (await request(address, "POST", "/logout", headers=same_origin, body=body)).status == 303
        assert (await get(address, "/log", cookie)).status == 303


# -- bounded requests and the headers ------------------------------------------------------------------


async def test_one_request_per_connection_with_bounded_heads_bodies_and_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert (console_http.MAX_HEAD_BYTES, console_http.MAX_BODY_BYTES, console_http.REQUEST_SECONDS) == (
        16 * 1024,
        64 * 1024,
        10.0,
    )
    async with served(without_auth()) as app:
        address = address_of(app)
        one = f"GET /log HTTP/1.1\r\nHost: {address}\r\n\r\n".encode()
        answer = await send_raw(address, one + one)  # reads to the end of the connection
        assert answer.status == 200 and answer.header("connection") == "close"
        assert b"HTTP/1.1" not in answer.body  # the second request got no answer
    # A request not sent in time is dropped (the time made short for the
    # test; the console's server takes it when it starts).
    monkeypatch.setattr(console_http, "REQUEST_SECONDS", 0.2)
    async with served(without_auth()) as app:
        host, _, port = address_of(app).rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(b"GET /log HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
            await writer.drain()
            async with asyncio.timeout(10):
                assert await reader.read() == b""
        finally:
            writer.close()


async def test_every_kind_of_answer_carries_the_security_headers(tmp_path: Path) -> None:
    def secured(answer: Answer) -> bool:
        return (
            answer.header("content-security-policy")
            == "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self';"
            " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
            and answer.header("x-frame-options") == "DENY"
            and answer.header("x-content-type-options") == "nosniff"
            and answer.header("referrer-policy") == "same-origin"
            and answer.all("cache-control") == ["no-store"]
        )

    async with served(with_auth(tmp_path)) as app:
        address = address_of(app)
        cookie = await cookie_of(address, ROOT_KEY)
        answers = {
            "redirect": await get(address, "/log"),
            "refused login": await log_in(address, "nope"),
            "forged form": await request(address, "POST", "/logout", headers={**FORM, "Cookie": cookie}),
            "wrong method": await request(address, "PUT", "/log", headers={"Cookie": cookie}),
            "malformed": await send_raw(address, b"NONSENSE\r\n\r\n"),
            "chunked": await send_raw(address, b"GET /log HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            "missing static": await get(address, "/static/nowhere.js"),
            "refused page": await get(address, "/groups/nowhere", cookie),
        }
        head, _, writer = await open_stream(address, "/tail/events?after=0", cookie)
        writer.close()
    async with served(without_auth()) as anonymous:
        answers["wrong host"] = await request(address_of(anonymous), "GET", "/log", host="attacker.example")
    statuses = {name: answer.status for name, answer in answers.items()}
    assert statuses == {
        "redirect": 303,
        "refused login": 401,
        "forged form": 403,
        "wrong method": 405,
        "malformed": 400,
        "chunked": 411,
        "missing static": 404,
        "refused page": 404,
        "wrong host": 421,
    }
    assert [name for name, answer in answers.items() if not secured(answer)] == []
    stream = Answer(
        200,
        [
            (k.strip().lower(), v.strip())
            for k, _, v in (line.partition(":") for line in head.decode().split("\r\n")[1:] if line)
        ],
        b"",
    )
    assert stream.header("content-type") == "text/event-stream" and secured(stream)


async def test_beyond_loopback_over_plaintext_the_server_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        async with served(with_auth(tmp_path, console_listen="0.0.0.0:0")):
            pass
    assert any("serves plaintext beyond loopback" in record.getMessage() for record in caplog.records)
