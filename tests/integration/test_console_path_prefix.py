"""The console behind a reverse proxy at a path prefix
(``--console-path-prefix /chronicle``; docs/console.md, Behind a reverse
proxy), through a real console HTTP server:

- every page's links, forms, stylesheet and script are under the prefix
  (the HTML parsed, every href, src and action checked), and so is the
  live tail's stream, which streams there;
- in a real browser (chromium), the login, the navigation, the live tail
  (its stream and the links of the rows it adds) and the logout stay under
  the prefix;
- the redirects (to the login, after it, after an action, after the
  logout) go under the prefix, and the session cookie's path is the prefix;
- a request outside the prefix is 404, with no session made for it;
- the console's URL the replica advertises (ClusterService, the other
  replicas' Cluster pages) and prints at start is under the prefix;
- behind a TLS-terminating proxy (``--console-public-origin https://…``,
  the console on plain HTTP): the forms are taken from that origin as the
  browser names it, and from no other (X-Forwarded-* headers are not read),
  the session cookie is Secure and the answers carry HSTS.

Without the setting nothing changes (test_console_http: ``Path=/`` and the
root's redirects, byte for byte). A prefix with hostile characters is
refused at start-up: test_start_up_refusals, test_settings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from chronicle.v1 import cluster_service_pb2 as cluster_pb
from chronicle.v1 import cluster_service_pb2_grpc as cluster_grpc
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application, describe, start
from service.client import ChronicleClient
from service.settings import Settings
from service.store.memory import MemoryStore
from tests.support.browser import Browser, start_chromium
from tests.support.console import FORM, console, server_sent, session_cookie
from tests.support.grpc_client import TEST_SETTINGS, command, connect
from tests.support.http import Answer, request
from tests.support.security import POLICY, api_key_file, bearer, write

PREFIX = "/chronicle"
ROOT_KEY = "prefix-root-key-0123456789"


def settings_of(tmp_path: Path, **overrides: str) -> Settings:
    return replace(
        TEST_SETTINGS,
        auth=True,
        policy_file=write(tmp_path / "policy.toml", POLICY),
        # operator: the admin grant (the audit page, the rebuild forms); teller: accounts to show
        api_keys_file=api_key_file(tmp_path / "keys.toml", [(ROOT_KEY, "root", ["operator", "teller"])]),
        console_listen="127.0.0.1:0",
        console_path_prefix=PREFIX,
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[Application]:
    started = await start(settings_of(tmp_path), store=MemoryStore())
    try:
        async with connect(started.address, interceptors=bearer(ROOT_KEY)) as client:
            await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
            await client.submit(command("acc-1", bank.Deposit(amount=5)))
        async with ChronicleClient.connect(started.address, token=ROOT_KEY) as admin:
            await admin.groups.create("billing", aggregate_types=["Account"])
        yield started
    finally:
        await started.stop(grace=0.5, drain=0)


class _Urls(HTMLParser):
    """Every URL a browser would follow or post to on a page: (tag,
    attribute, value) of each href, src and action; and the body's data-root."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str, str]] = []
        self.root: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src", "action"):
                self.found.append((tag, name, value or ""))
            if tag == "body" and name == "data-root":
                self.root = value


def urls_of(page: str) -> _Urls:
    parser = _Urls()
    parser.feed(page)
    parser.close()
    return parser


async def log_in(address: str, origin: str = "", **headers: str) -> Answer:
    return await request(
        address,
        "POST",
        f"{PREFIX}/login",
        headers={**FORM, "Origin": origin or f"http://{address}", **headers},
        body=urlencode({"credential": ROOT_KEY}).encode(),
    )


async def test_every_link_form_and_file_of_every_page_is_under_the_prefix(app: Application) -> None:
    """From the log, every page a link leads to is fetched (through the
    prefix), and every href, src and action on each is under it; the
    stylesheet and the script they name are served there."""
    address = console(app)
    cookie = session_cookie(await log_in(address))
    login_page = await request(address, "GET", f"{PREFIX}/login")
    assert login_page.status == 200
    pending = [f"{PREFIX}/log", f"{PREFIX}/groups/billing/confirm?action=replay-all"]
    seen: set[str] = set()
    urls: set[tuple[str, str, str]] = set(urls_of(login_page.text).found)
    while pending and len(seen) < 60:
        target = pending.pop(0)
        if target in seen:
            continue
        seen.add(target)
        answer = await request(address, "GET", target, headers={"Cookie": cookie})
        assert answer.status == 200, (target, answer.status, answer.text[:300])
        if not (answer.header("content-type") or "").startswith("text/html"):
            continue
        parsed = urls_of(answer.text)
        assert parsed.root == PREFIX, target  # what the live tail's script builds its URLs on
        urls |= set(parsed.found)
        pending += [value for tag, _, value in parsed.found if tag in ("a", "link", "script")]
    outside = sorted(found for found in urls if not found[2].startswith(PREFIX + "/"))
    assert outside == []
    visited = {urlsplit(target).path.removeprefix(PREFIX) for target in seen}
    # Every page the navigation names, and a page of each kind of thing.
    for path in ("/log", "/tail", "/projections", "/reactions", "/groups", "/load", "/cluster", "/audit"):
        assert path in visited
    for path in ("/aggregates/acc-1", "/groups/billing", "/projections/bank.balances_by_owner", "/static/console.js"):
        assert path in visited
    assert "/static/console.css" in visited and f"{PREFIX}/reactions/bank.transfers" in {u[2] for u in urls}
    # Forms: the log's search, the logout, a rebuild, a group's settings, the login, a confirmation.
    actions = {value.removeprefix(PREFIX) for tag, name, value in urls if name == "action"}
    assert {"/log", "/logout", "/login", "/projections/bank.balances_by_owner/rebuild", "/audit"} <= actions
    assert "/groups/billing/settings" in actions


async def test_redirects_go_under_the_prefix_and_the_session_cookie_is_the_prefixs(app: Application) -> None:
    address = console(app)
    no_session = await request(address, "GET", f"{PREFIX}/log")
    assert (no_session.status, no_session.header("location")) == (303, f"{PREFIX}/login")

    logged_in = await log_in(address)
    assert (logged_in.status, logged_in.header("location")) == (303, f"{PREFIX}/log")
    (set_cookie,) = logged_in.all("set-cookie")
    assert set_cookie.endswith(f"; Path={PREFIX}; HttpOnly; SameSite=Strict")
    cookie = session_cookie(logged_in)
    for bare in (PREFIX, f"{PREFIX}/"):  # the prefix alone is the console's root
        root = await request(address, "GET", bare, headers={"Cookie": cookie})
        assert (root.status, root.header("location")) == (303, f"{PREFIX}/log"), bare

    projections = await request(address, "GET", f"{PREFIX}/projections", headers={"Cookie": cookie})
    token = projections.text.partition('name="csrf_token" value="')[2].partition('"')[0]
    posting = {**FORM, "Origin": f"http://{address}", "Cookie": cookie}
    rebuilt = await request(
        address,
        "POST",
        f"{PREFIX}/projections/bank.balances_by_owner/rebuild",
        headers=posting,
        body=urlencode({"csrf_token": token}).encode(),
    )
    assert (rebuilt.status, rebuilt.header("location")) == (303, f"{PREFIX}/projections")
    told = await request(address, "GET", f"{PREFIX}/projections", headers={"Cookie": cookie})
    assert "Rebuilding bank.balances_by_owner" in told.text  # the notice kept for the page it went back to

    logged_out = await request(
        address, "POST", f"{PREFIX}/logout", headers=posting, body=urlencode({"csrf_token": token}).encode()
    )
    assert (logged_out.status, logged_out.header("location")) == (303, f"{PREFIX}/login")
    (cleared,) = logged_out.all("set-cookie")
    assert f"; Path={PREFIX};" in cleared and cleared.endswith("Max-Age=0")


async def test_the_live_tail_streams_under_the_prefix(app: Application) -> None:
    address = console(app)
    cookie = session_cookie(await log_in(address))
    tail = await request(address, "GET", f"{PREFIX}/tail", headers={"Cookie": cookie})
    assert f'<body data-root="{PREFIX}">' in tail.text
    assert f'<script src="{PREFIX}/static/console.js" defer="">' in tail.text
    # The script names its stream and its rows' links from that root: in a browser, below.
    messages = await server_sent(address, f"{PREFIX}/tail/events?after=0", 2, cookie)
    assert [(name, data["aggregate_id"], data["version"]) for name, data, _ in messages] == [
        ("event", "acc-1", 1),
        ("event", "acc-1", 2),
    ]


@pytest.mark.parametrize(
    "path",
    [
        "/log",
        "/login",
        "/static/console.css",
        "/tail/events",
        "/",
        "/chronicles/log",  # the prefix is a whole segment, not the start of one
        "/chronicle%2Flog",
        "/CHRONICLE/log",
    ],
)
async def test_a_request_outside_the_prefix_is_not_found(app: Application, path: str) -> None:
    address = console(app)
    for method in ("GET", "POST"):
        headers = {**FORM, "Origin": f"http://{address}"}
        answer = await request(address, method, path, headers=headers, body=b"credential=" + ROOT_KEY.encode())
        assert answer.status == 404, (method, path)
        assert answer.all("set-cookie") == []  # no session, no login
        assert answer.header("content-security-policy")  # the security headers all the same


@pytest.fixture
def driver() -> Iterator[webdriver.Chrome]:
    chromium = start_chromium()
    yield chromium
    chromium.quit()


async def test_in_a_browser_the_login_navigation_live_tail_and_logout_stay_under_the_prefix(
    app: Application, driver: webdriver.Chrome
) -> None:
    browser = Browser(driver, f"http://{console(app)}{PREFIX}")
    await browser.get("/log")
    assert await browser.path() == "/login"  # redirected there, under the prefix
    await browser.log_in(ROOT_KEY)
    assert await browser.path() == "/log"
    (cookie,) = await browser.run(driver.get_cookies)
    assert cookie["path"] == PREFIX

    await browser.click("nav a[href$='/tail']")
    await browser.wait_for_text("#tail-status", "live")  # the script's EventSource reached the stream
    await browser.wait_until(lambda d: d.find_elements(By.CSS_SELECTOR, "#tail tr[data-position='2']"))
    async with connect(app.address, interceptors=bearer(ROOT_KEY)) as client:
        await client.submit(command("acc-2", bank.OpenAccount(owner="bo")))
    row = "#tail tr[data-position='3'] a"
    await browser.wait_until(lambda d: d.find_elements(By.CSS_SELECTOR, row), what="the new event, live")
    link = await browser.run(lambda: driver.find_element(By.CSS_SELECTOR, row).get_attribute("href"))
    assert link == f"{browser.base}/aggregates/acc-2"  # built by the script, under the prefix
    await browser.click(row)
    await browser.wait_for_text("h1", "acc-2")
    assert await browser.path() == "/aggregates/acc-2"

    await browser.click("form.logout button")
    await browser.wait_until(lambda d: d.current_url == f"{browser.base}/login", what="the logout")


async def test_the_consoles_advertised_and_printed_url_is_under_the_prefix(app: Application) -> None:
    async with connect(app.address, interceptors=bearer(ROOT_KEY)) as client:
        stub = cluster_grpc.ClusterServiceStub(client.channel)
        topology = (await stub.GetTopology(cluster_pb.GetTopologyRequest(), timeout=10)).topology
    (member,) = topology.members
    assert member.console_address == f"http://{console(app)}{PREFIX}"
    assert f"  console on http://{console(app)}{PREFIX}/\n" in describe(app) + "\n"


PUBLIC = "https://ops.example.com"


@pytest.fixture
async def proxied(tmp_path: Path) -> AsyncIterator[Application]:
    """The console on plain HTTP, as a TLS-terminating proxy reaches it, with
    the origin browsers reach it at through that proxy."""
    started = await start(settings_of(tmp_path, console_public_origin=PUBLIC), store=MemoryStore())
    try:
        yield started
    finally:
        await started.stop(grace=0.5, drain=0)


async def test_behind_a_tls_terminating_proxy_forms_come_from_the_public_origin_and_the_cookie_is_secure(
    proxied: Application,
) -> None:
    address = console(proxied)
    # As the proxy forwards it (proxy_set_header Host $host): the browser's host, over plain HTTP.
    through_proxy = {"Host": "ops.example.com"}
    logged_in = await log_in(address, PUBLIC, **through_proxy)
    assert (logged_in.status, logged_in.header("location")) == (303, f"{PREFIX}/log")
    (set_cookie,) = logged_in.all("set-cookie")
    assert set_cookie.endswith(f"; Path={PREFIX}; HttpOnly; SameSite=Strict; Secure")
    assert logged_in.header("strict-transport-security") == "max-age=31536000"
    cookie = session_cookie(logged_in)

    page = await request(address, "GET", f"{PREFIX}/projections", headers={"Cookie": cookie, **through_proxy})
    token = page.text.partition('name="csrf_token" value="')[2].partition('"')[0]
    form = urlencode({"csrf_token": token}).encode()
    for origin, forwarded in (
        ("https://evil.example.com", {}),
        ("http://ops.example.com", {}),  # the public host, but plain HTTP: another origin
        ("https://ops.example.com:8443", {}),
        # A header a proxy would add is not believed: anyone reaching the console directly could send it.
        ("https://evil.example.com", {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example.com"}),
    ):
        refused = await request(
            address,
            "POST",
            f"{PREFIX}/logout",
            headers={**FORM, "Origin": origin, "Cookie": cookie, **through_proxy, **forwarded},
            body=form,
        )
        assert refused.status == 403, origin
        refused_login = await log_in(address, origin, **through_proxy, **forwarded)
        assert (refused_login.status, refused_login.all("set-cookie")) == (403, []), origin
    logged_out = await request(
        address,
        "POST",
        f"{PREFIX}/logout",
        headers={**FORM, "Origin": PUBLIC, "Cookie": cookie, **through_proxy},
        body=form,
    )
    assert (logged_out.status, logged_out.header("location")) == (303, f"{PREFIX}/login")

    # The console's own address (an operator through an SSH tunnel) is still its own origin.
    direct = await log_in(address)
    assert direct.status == 303 and direct.all("set-cookie")[0].endswith("; Secure")


async def test_behind_a_proxy_the_console_is_advertised_at_its_public_origin(proxied: Application) -> None:
    assert proxied.console is not None
    assert proxied.console.url(proxied.address) == f"{PUBLIC}{PREFIX}"
    assert f"  console on {PUBLIC}{PREFIX}/\n" in describe(proxied) + "\n"


async def test_a_forwarded_prefix_header_changes_no_link_redirect_or_cookie(app: Application) -> None:
    """X-Forwarded-Prefix is not read: whoever reaches the console's port
    could send one, and its text would be in every link and Location (a
    prefix of //evil.example is a redirect to another site)."""
    address = console(app)
    forged = {"X-Forwarded-Prefix": "//evil.example", "X-Forwarded-Host": "evil.example", "Forwarded": "host=evil"}
    no_session = await request(address, "GET", f"{PREFIX}/log", headers=forged)
    assert no_session.header("location") == f"{PREFIX}/login"
    logged_in = await log_in(address, **forged)
    assert logged_in.header("location") == f"{PREFIX}/log"
    assert f"; Path={PREFIX};" in logged_in.all("set-cookie")[0]
    page = await request(address, "GET", f"{PREFIX}/log", headers={"Cookie": session_cookie(logged_in), **forged})
    assert page.status == 200 and "evil" not in page.text
    assert all(value.startswith(f"{PREFIX}/") for _, _, value in urls_of(page.text).found)
