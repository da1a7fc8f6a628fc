"""The operators' console in a real headless browser (Debian's chromium
through chromedriver), against a server with authentication on: log in
with an API key, find an aggregate and read its events, watch a
projection's lag fall to zero and the log tail live, see a group's
parked event and replay it, and see that a principal without a read grant
is shown nothing it may not read and one without the admin grant can
neither rebuild nor replay.

One browser for the module (it takes about a second to start); each test
logs in afresh after the cookies of the one before are cleared.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.app import Application, start
from service.client import ChronicleClient, Delivery
from service.store.base import AuditQuery
from service.store.memory import MemoryStore
from tests.support.browser import Browser, start_chromium
from tests.support.groups import GroupLedger, consume_into
from tests.support.grpc_client import TEST_SETTINGS, Client, command, connect
from tests.support.security import POLICY, api_key_file, bearer, write
from tests.support.waiting import eventually

ROOT_KEY = "console-root-key-0123456789"
ALICE_KEY = "console-alice-key-0123456789"
BOB_KEY = "console-bob-key-0123456789"
HOSTILE_OWNER = "<script>window.pwned = 1</script><img src=x onerror='window.pwned=2'>"


class HeldProjections(MemoryStore):
    """A memory store whose projection commits wait while ``held`` is clear:
    the test decides when a projection may catch up."""

    def __init__(self) -> None:
        super().__init__()
        self.released = asyncio.Event()
        self.released.set()

    async def commit_projection(self, *args: Any, **kwargs: Any) -> None:
        await self.released.wait()
        await super().commit_projection(*args, **kwargs)


@pytest.fixture(scope="module")
def driver() -> Iterator[webdriver.Chrome]:
    chromium = start_chromium()
    yield chromium
    chromium.quit()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Application, HeldProjections]]:
    store = HeldProjections()
    settings = replace(
        TEST_SETTINGS,
        auth=True,
        policy_file=write(tmp_path / "policy.toml", POLICY),
        api_keys_file=api_key_file(
            tmp_path / "keys.toml",
            [(ROOT_KEY, "root", ["teller", "boxer"]), (ALICE_KEY, "alice", []), (BOB_KEY, "bob", [])],
        ),
        console_listen="127.0.0.1:0",
        console_sample_seconds=0.2,
        poll_seconds=0.1,
    )
    app = await start(settings, store=store)
    try:
        yield app, store
    finally:
        await app.stop(grace=1.0, drain=0)


@pytest.fixture
async def browser(driver: webdriver.Chrome, served: tuple[Application, HeldProjections]) -> AsyncIterator[Browser]:
    app, _ = served
    assert app.console is not None
    opened = Browser(driver, f"http://{app.console.address}")
    await opened.get("/login")  # cookies belong to the console's origin: clear them there
    await opened.log_out()
    yield opened
    await opened.run(lambda: driver.get("about:blank"))  # closes the live tail's stream


@pytest.fixture
async def root(served: tuple[Application, HeldProjections]) -> AsyncIterator[Client]:
    app, _ = served
    async with connect(app.address, interceptors=bearer(ROOT_KEY)) as client:
        yield client


async def test_an_operator_logs_in_finds_an_aggregate_and_reads_its_events(browser: Browser, root: Client) -> None:
    await root.submit(command("acc-1", bank.OpenAccount(owner=HOSTILE_OWNER)))
    await root.submit(command("acc-1", bank.Deposit(amount=70)))
    await root.submit(command("acc-2", bank.OpenAccount(owner="ann")))
    await root.submit(command("box-1", box.CreateBox(name="b")))

    await browser.get("/log")
    assert await browser.path() == "/login"  # no session: the login page
    await browser.log_in(ROOT_KEY)
    assert await browser.text(".principal") == "root"
    await browser.type_into("input[name=q]", "acc-")
    await browser.wait_until(lambda d: "q=acc-" in d.current_url, what="the search")
    assert await browser.texts("#aggregates tbody td:first-child") == ["acc-1", "acc-2"]

    await browser.click("#aggregates a[href='/aggregates/acc-1']")
    await browser.wait_for_text("h1", "acc-1")
    assert await browser.texts("#events tbody td:first-child") == ["1", "2"]
    payloads = await browser.texts("#events pre.payload")
    # The hostile owner is shown as the text it is, and nothing of it ran.
    assert HOSTILE_OWNER in payloads[0]
    assert '"amount": "70"' in payloads[1]
    assert await browser.run(lambda: browser.driver.execute_script("return window.pwned")) is None
    assert await browser.find_all("#events img") == []
    state = await browser.text("#state")
    assert '"balance": "70"' in state

    await browser.type_into("input[name=version]", "1")
    await browser.wait_until(lambda d: "version=1" in d.current_url, what="the state at version 1")
    assert "Account at version 1" in await browser.text("main section")
    assert '"balance"' not in await browser.text("#state")  # nothing deposited yet at version 1


async def test_a_wrong_key_is_refused_and_logging_out_ends_the_session(browser: Browser) -> None:
    await browser.get("/login")
    await browser.type_into("input[name=credential]", "not-a-key")
    await browser.wait_for_text("p.error", "UNKNOWN_API_KEY")
    assert await browser.run(lambda: browser.driver.get_cookies()) == []

    await browser.log_in(ALICE_KEY)
    (cookie,) = await browser.run(lambda: browser.driver.get_cookies())
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    await browser.click("form.logout button")
    await browser.wait_until(lambda d: d.current_url.endswith("/login"), what="the logout")
    # The old session id no longer opens anything.
    await browser.run(lambda: browser.driver.add_cookie({"name": cookie["name"], "value": cookie["value"]}))
    await browser.get("/log")
    assert await browser.path() == "/login"


async def test_a_principal_without_a_read_grant_sees_nothing_it_may_not_read(browser: Browser, root: Client) -> None:
    await root.submit(command("acc-1", bank.OpenAccount(owner="secret owner")))
    await root.submit(command("box-1", box.CreateBox(name="bobs box")))
    await browser.log_in(BOB_KEY)  # bob may read boxes, not accounts, and subscribe to nothing

    await browser.get("/log")
    assert await browser.texts("#aggregates tbody td:first-child") == ["box-1"]
    await browser.get("/aggregates/acc-1")
    assert "READ_DENIED" in await browser.text("p.error")
    assert "secret owner" not in await browser.text("main")

    await browser.get("/projections")  # the bank's read model is made of accounts
    assert await browser.texts("#projections tbody td:first-child") == ["no projection you may read"]

    await browser.get("/tail")
    await browser.wait_for_text("#tail-status", "SUBSCRIBE_DENIED")
    assert await browser.find_all("#tail tbody tr[data-position]") == []


async def test_a_projections_lag_falls_to_zero(
    browser: Browser, root: Client, served: tuple[Application, HeldProjections]
) -> None:
    _, store = served
    store.released.clear()
    for number in range(3):
        await root.submit(command(f"acc-{number}", bank.OpenAccount(owner="ann")))
    await browser.log_in(ROOT_KEY)
    await browser.get("/projections")
    lag = "#projections span.lag[data-projection='bank.balances_by_owner']"
    assert int(await browser.text(lag)) == 3  # nothing committed while held
    store.released.set()
    await browser.wait_for_text(lag, "0")  # the page refreshes itself
    assert await browser.text("#projections span[class^=state]") == "running here"


async def test_the_log_tails_live(browser: Browser, root: Client) -> None:
    await root.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    await browser.log_in(ALICE_KEY)
    await browser.get("/tail")
    await browser.wait_for_text("#tail-status", "live")
    await browser.wait_until(lambda d: d.find_elements(By.CSS_SELECTOR, "#tail tr[data-position='1']"))
    await root.submit(command("acc-1", bank.Deposit(amount=5)))
    await browser.wait_until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#tail tr[data-position='2']"), what="the new event"
    )
    newest = await browser.texts("#tail tbody tr:first-child td")
    assert newest[:4] == ["2", "acc-1", "2", "bank.v1.MoneyDeposited"]


async def test_the_load_and_the_cluster(browser: Browser, root: Client) -> None:
    await root.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    with pytest.raises(grpc.aio.AioRpcError):
        await root.submit(command("acc-1", bank.Withdraw(amount=500)))
    await browser.log_in(ROOT_KEY)
    await browser.get("/load")
    assert await browser.texts("figure.chart figcaption") == [
        "Commands (per second)",
        "Command latency (ms)",
        "Conflicts and refusals (per second)",
    ]
    await browser.wait_for_text("#refusals", "INSUFFICIENT_FUNDS")
    await browser.wait_until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "svg.chart polyline"), what="a line in the charts"
    )

    await browser.get("/cluster")
    members = await browser.texts("#members tbody tr")
    assert len(members) == 1 and "this replica" in members[0]
    assert len(await browser.find_all("#partitions li.mine")) == TEST_SETTINGS.partitions


async def test_an_administrator_rebuilds_a_projection_and_it_is_audited(
    browser: Browser, root: Client, served: tuple[Application, HeldProjections]
) -> None:
    app, store = served
    for number in range(3):
        await root.submit(command(f"acc-{number}", bank.OpenAccount(owner="ann")))
    await browser.log_in(ROOT_KEY)
    await browser.get("/projections")
    lag = "#projections span.lag[data-projection='bank.balances_by_owner']"
    await browser.wait_for_text(lag, "0")
    store.released.clear()  # the rebuild's catching up waits, so that it can be seen
    await browser.click("form.rebuild[data-projection='bank.balances_by_owner'] button")
    await browser.wait_for_text("#notice", "Rebuilding bank.balances_by_owner")
    assert int(await browser.text(lag)) == 3  # back to the start of the log
    store.released.set()
    await browser.wait_for_text(lag, "0")
    audit = await app.store.audit.read_audit(AuditQuery())
    assert [(e.principal, e.aggregate_id, e.reason) for e in audit if e.command_type.endswith("RebuildProjection")] == [
        ("root", "projection:bank.balances_by_owner", "")
    ]


async def forge_post(browser: Browser, action: str, fields: dict[str, str]) -> None:
    """Post a form the page does not offer, with the session's own CSRF
    token (the logout form carries it on every page): only the grant
    stands between it and the action."""
    page = await browser.run(lambda: browser.driver.page_source)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token is not None
    await browser.run(
        lambda: browser.driver.execute_script(
            "const f = document.createElement('form'); f.method = 'post'; f.action = arguments[0];"
            "for (const [k, v] of Object.entries(arguments[1])) {"
            " const i = document.createElement('input'); i.name = k; i.value = v; f.appendChild(i); }"
            "document.body.appendChild(f); f.submit();",
            action,
            {"csrf_token": token.group(1), **fields},
        )
    )


async def test_rebuilding_takes_the_admin_grant(browser: Browser, served: tuple[Application, HeldProjections]) -> None:
    app, _ = served
    await browser.log_in(ALICE_KEY)  # alice reads accounts and may not administer
    await browser.get("/projections")
    assert await browser.texts("#projections tbody td:first-child") == ["bank.balances_by_owner"]
    assert await browser.find_all("form.rebuild") == []  # no button she could not use
    await forge_post(browser, "/projections/bank.balances_by_owner/rebuild", {})
    await browser.wait_for_text("p.error", "ADMIN_DENIED")
    audit = await app.store.audit.read_audit(AuditQuery())
    assert [(e.principal, e.reason) for e in audit if e.command_type.endswith("RebuildProjection")] == [
        ("alice", "ADMIN_DENIED")
    ]


async def test_a_groups_parked_event_is_seen_and_replayed(
    browser: Browser, root: Client, served: tuple[Application, HeldProjections]
) -> None:
    app, _ = served
    await root.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    deposited = await root.submit(command("acc-1", bank.Deposit(amount=5)))
    await root.submit(command("acc-2", bank.OpenAccount(owner="bob")))
    async with ChronicleClient.connect(app.address, token=ROOT_KEY) as client:
        await client.groups.create(
            "billing", aggregate_types=["Account"], max_delivery_attempts=2, retry_backoff=0.01, segments=1
        )
        fixed = asyncio.Event()

        async def handle(delivery: Delivery) -> bool:
            if delivery.event.event_type == "bank.v1.MoneyDeposited" and not fixed.is_set():
                await delivery.nack("cannot read the amount")
                return False
            return True

        ledger = GroupLedger()
        record = ledger.consumer("worker")
        consuming = asyncio.ensure_future(consume_into(client, "billing", record, ledger, handle=handle))
        try:
            await browser.log_in(ROOT_KEY)
            await browser.get("/groups")
            parked = "#groups span.parked[data-group='billing']"
            lag = "#groups span.lag[data-group='billing']"
            # The page refreshes itself (every two seconds) until it is parked.
            await browser.wait_until(lambda d: d.find_element(By.CSS_SELECTOR, parked).text == "1", what="parked")
            # A parked event does not hold the group's position back.
            await browser.wait_until(lambda d: d.find_element(By.CSS_SELECTOR, lag).text == "0", what="no lag")
            await browser.wait_for_text("#groups tbody tr", "worker#")  # the live consumer, by the name it gave
            await browser.click_when_there("#groups a[href='/groups/billing']")
            await browser.wait_for_text("h1", "billing")
            assert "1 parked" in await browser.text("#group-summary")
            (consumer,) = await browser.texts("#consumers tbody td:first-child")
            assert consumer.startswith("worker#")
            event_id = deposited.events[0].event_id
            cells = await browser.texts("#parked tbody tr:first-child td")
            assert cells[1:4] == ["acc-1", event_id, deposited.events[0].event_type]
            assert cells[4].endswith(" UTC") and cells[5:7] == ["2", "cannot read the amount"]
            fixed.set()
            await browser.click(f"#parked form.replay[data-event='{event_id}'] button")
            await browser.wait_for_text("#notice", "Replaying 1 parked event")
            await browser.get("/groups")
            # Redelivered, acknowledged, no longer parked.
            await browser.wait_until(lambda d: d.find_element(By.CSS_SELECTOR, parked).text == "0", what="replayed")
            assert event_id in record.acked
        finally:
            consuming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consuming
    # The replay is audited as its RPC is: by whom, on which group.
    audit = await app.store.audit.read_audit(AuditQuery())
    assert [
        (e.command_type, e.principal, e.aggregate_id, e.reason)
        for e in audit
        if e.command_type.endswith("ReplayParked")
    ] == [("chronicle.v1.SubscriptionGroupService/ReplayParked", "root", "group:billing", "")]


async def test_groups_are_shown_only_to_who_may_consume_them_and_replaying_takes_the_admin_grant(
    browser: Browser, root: Client, served: tuple[Application, HeldProjections]
) -> None:
    app, _ = served
    opened = await root.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    event_id = opened.events[0].event_id
    async with ChronicleClient.connect(app.address, token=ROOT_KEY) as client:
        await client.groups.create("accounts", aggregate_types=["Account"], max_delivery_attempts=1, segments=1)
        await client.groups.create("boxes", aggregate_types=["Box"])

        async def refuse(delivery: Delivery) -> bool:
            await delivery.nack("not today")
            return False

        ledger = GroupLedger()
        consuming = asyncio.ensure_future(consume_into(client, "accounts", ledger.consumer("w"), ledger, handle=refuse))
        try:
            await eventually(lambda: _parked(client, "accounts", 1), what="the event parked")
        finally:
            consuming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consuming
    # bob reads boxes, subscribes to nothing and consumes no group: no group is his to see.
    await browser.log_in(BOB_KEY)
    await browser.get("/groups")
    assert await browser.texts("#groups tbody td:first-child") == ["no group you may consume"]
    await browser.get("/groups/accounts")
    assert "CONSUME_DENIED" in await browser.text("p.error")  # no consume grant names it
    assert await browser.find_all("#parked") == []
    await browser.log_out()

    await browser.log_in(ALICE_KEY)  # alice may subscribe to accounts, not to boxes, and not administer
    await browser.get("/groups")
    assert await browser.texts("#groups tbody td:first-child") == ["accounts"]
    await browser.get("/groups/accounts")
    cells = await browser.texts("#parked tbody tr td")
    # Seen, with no button she could not use.
    assert cells[:4] == ["1", "acc-1", event_id, "bank.v1.AccountOpened"] and cells[5:] == ["1", "not today"]
    assert await browser.find_all("form.replay") == []
    await forge_post(browser, "/groups/accounts/replay", {"event_id": event_id})
    await browser.wait_for_text("p.error", "ADMIN_DENIED")
    audit = await app.store.audit.read_audit(AuditQuery())
    assert [(e.principal, e.aggregate_id, e.reason) for e in audit if e.command_type.endswith("ReplayParked")] == [
        ("alice", "group:accounts", "ADMIN_DENIED")
    ]
    async with ChronicleClient.connect(app.address, token=ROOT_KEY) as client:
        (still,) = await client.groups.parked("accounts")
        assert still.event_id == event_id and not still.replaying


async def _parked(client: ChronicleClient, group: str, count: int) -> bool:
    return (await client.groups.get(group)).parked == count
