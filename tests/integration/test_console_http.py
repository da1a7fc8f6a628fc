"""The console over plain HTTP, byte for byte: its security headers, the
login and its session cookie, CSRF-safe forms, the loopback-only answer
with authentication off, malformed requests, and the refusal to serve
beyond loopback without --auth."""

from __future__ import annotations

import html
import re
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs, urlencode

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application, start
from service.client import ChronicleClient
from service.console.http import MAX_BODY_BYTES, MAX_HEAD_BYTES
from service.errors import ConfigurationError
from service.settings import Settings
from service.store.base import AuditQuery
from service.store.memory import MemoryStore
from service.store.records import ACCEPTED, REFUSED
from tests.support.console import FORM, KEY, authenticated, console, log_in, session_cookie
from tests.support.events import new_event
from tests.support.grpc_client import TEST_SETTINGS, command, connect
from tests.support.http import Answer, request, send_raw
from tests.support.metrics import sample, scrape
from tests.support.processes import serve_until_exit
from tests.support.security import Authority, JwtIssuer, api_key_file, bearer, server_tls_files, write
from tests.support.waiting import eventually


@pytest.fixture
async def jwt_issuer() -> JwtIssuer:
    return JwtIssuer()


@pytest.fixture
async def app(tmp_path: Path, jwt_issuer: JwtIssuer) -> AsyncIterator[Application]:
    settings = replace(authenticated(tmp_path), jwt_key_file=write(tmp_path / "jwt.pem", jwt_issuer.public_key))
    started = await start(settings, store=MemoryStore())
    try:
        yield started
    finally:
        await started.stop(grace=0.5, drain=0)


async def test_every_answer_carries_the_security_headers(app: Application) -> None:
    address = console(app)
    for path in ("/login", "/log", "/static/console.css", "/nowhere"):
        answer = await request(address, "GET", path)
        policy = answer.header("content-security-policy") or ""
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
        assert answer.header("x-frame-options") == "DENY"
        assert answer.header("x-content-type-options") == "nosniff"
        assert answer.header("referrer-policy") == "same-origin"
        assert answer.all("cache-control") == ["no-store"]


async def test_pages_need_a_session_and_the_login_sets_a_strict_http_only_cookie(app: Application) -> None:
    address = console(app)
    anonymous = await request(address, "GET", "/log")
    assert (anonymous.status, anonymous.header("location")) == (303, "/login")
    logged_in = await log_in(address, KEY)
    assert (logged_in.status, logged_in.header("location")) == (303, "/log")
    (cookie,) = logged_in.all("set-cookie")
    assert re.fullmatch(r"chronicle_console=[A-Za-z0-9_-]{43}; Path=/; HttpOnly; SameSite=Strict", cookie)
    assert KEY not in cookie  # the cookie is an opaque id, never the credential
    page = await request(address, "GET", "/log", headers={"Cookie": session_cookie(logged_in)})
    assert page.status == 200 and '<span class="principal">root</span>' in page.text
    # No inline script anywhere: every script element names its file.
    assert not re.search(r"<script(?![^>]*\bsrc=)", page.text)


async def test_aggregates_are_listed_fifty_to_a_page(app: Application) -> None:
    async with connect(app.address, interceptors=bearer(KEY)) as client:
        for number in range(60):
            await client.submit(command(f"acc-{number:02d}", bank.OpenAccount(owner="ann"), user_id="root"))
    address = console(app)
    cookie = session_cookie(await log_in(address, KEY))
    first = await request(address, "GET", "/log?q=acc-", headers={"Cookie": cookie})
    listed = re.findall(r'<a href="/aggregates/(acc-\d+)">', first.text)
    assert listed == [f"acc-{number:02d}" for number in range(50)]
    next_page = re.search(r'<a href="(/log\?[^"]+)" class="next">', first.text)
    assert next_page is not None
    rest = await request(address, "GET", next_page.group(1).replace("&amp;", "&"), headers={"Cookie": cookie})
    assert re.findall(r'<a href="/aggregates/(acc-\d+)">', rest.text) == [f"acc-{n}" for n in range(50, 60)]
    assert 'class="next"' not in rest.text


async def test_a_wrong_credential_is_refused_with_its_reason(app: Application) -> None:
    answer = await log_in(console(app), "wrong")
    assert answer.status == 401
    assert "UNKNOWN_API_KEY" in answer.text and answer.all("set-cookie") == []


async def test_a_login_from_another_origin_is_refused(app: Application) -> None:
    address = console(app)
    body = urlencode({"credential": KEY}).encode()
    foreign = await request(address, "POST", "/login", headers={**FORM, "Origin": "http://evil.example"}, body=body)
    assert foreign.status == 403 and foreign.all("set-cookie") == []
    missing = await request(address, "POST", "/login", headers=FORM, body=body)
    assert missing.status == 403
    # Its host and port, another scheme: another origin.
    secure = await request(address, "POST", "/login", headers={**FORM, "Origin": f"https://{address}"}, body=body)
    assert secure.status == 403 and secure.all("set-cookie") == []


async def test_a_form_without_the_sessions_csrf_token_is_refused(app: Application) -> None:
    address = console(app)
    cookie = session_cookie(await log_in(address, KEY))
    headers = {**FORM, "Cookie": cookie, "Origin": f"http://{address}"}
    forged = await request(address, "POST", "/logout", headers=headers, body=b"csrf_token=guess")
    assert forged.status == 403
    page = await request(address, "GET", "/log", headers={"Cookie": cookie})
    assert page.status == 200  # the session survived the forged form
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    logged_out = await request(
        address, "POST", "/logout", headers=headers, body=urlencode({"csrf_token": token.group(1)}).encode()
    )
    assert logged_out.status == 303
    assert (await request(address, "GET", "/log", headers={"Cookie": cookie})).status == 303


async def test_a_jwt_logs_in_and_its_session_ends_when_the_token_expires(
    app: Application, jwt_issuer: JwtIssuer
) -> None:
    address = console(app)
    # Expired 28 s ago: the verifier's 30 s leeway accepts it for 2 s more.
    token = jwt_issuer.token("root", expires_in=-28)
    cookie = session_cookie(await log_in(address, token))
    page = await request(address, "GET", "/log", headers={"Cookie": cookie})
    assert page.status == 200 and "root" in page.text

    async def ended() -> bool:
        return (await request(address, "GET", "/log", headers={"Cookie": cookie})).status == 303

    await eventually(ended, within=15, what="the session to end with its token")


async def test_an_unreadable_aggregate_is_refused_as_the_api_refuses_it(tmp_path: Path) -> None:
    settings = authenticated(tmp_path)
    settings = replace(
        settings,
        api_keys_file=api_key_file(tmp_path / "k.toml", [(KEY, "alice", []), ("bob-key-0123456789", "bob", [])]),
    )
    app = await start(settings, store=MemoryStore())
    try:
        async with connect(app.address, interceptors=bearer(KEY)) as alice:
            await alice.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id="alice"))
        address = console(app)
        cookie = session_cookie(await log_in(address, "bob-key-0123456789"))
        denied = await request(address, "GET", "/aggregates/acc-1", headers={"Cookie": cookie})
        assert denied.status == 403 and "READ_DENIED" in denied.text and "ann" not in denied.text
        listed = await request(address, "GET", "/log?q=acc", headers={"Cookie": cookie})
        assert "acc-1" not in listed.text
        # Audited as the API's denied read is, with the browser's address.
        audited = [e for e in await app.store.audit.read_audit(AuditQuery()) if e.outcome == REFUSED]
        assert [(e.command_type, e.aggregate_id, e.principal, e.reason) for e in audited] == [
            ("console/aggregates/acc-1", "acc-1", "bob", "READ_DENIED")
        ]
        assert audited[0].peer.startswith("ipv4:127.0.0.1:")
    finally:
        await app.stop(grace=0.5, drain=0)


async def test_a_refused_login_is_audited_with_the_browsers_address(app: Application) -> None:
    address = console(app)
    refused = await log_in(address, "chr_not-a-key-anyone-has-0123456789")
    assert refused.status == 401
    audited = [e for e in await app.store.audit.read_audit(AuditQuery()) if e.outcome == REFUSED]
    assert [(e.command_type, e.principal, e.reason) for e in audited] == [("console/login", "", "UNKNOWN_API_KEY")]
    assert audited[0].peer.startswith("ipv4:127.0.0.1:")


async def test_refused_logins_are_counted_in_the_metrics_by_reason(tmp_path: Path) -> None:
    """As the API's refusals are (chronicle_rpc_refusals_total), the
    console's are in chronicle_console_refusals_total, beside the audit."""
    settings = authenticated(tmp_path, metrics_listen="127.0.0.1:0")
    app = await start(settings, store=MemoryStore())
    try:
        address = console(app)
        for _ in range(2):
            assert (await log_in(address, "chr_not-a-key-anyone-has-0123456789")).status == 401
        assert (await log_in(address, KEY)).status == 303
        scraped = await scrape(app)
    finally:
        await app.stop(grace=0.5, drain=0)
    assert sample(scraped, "chronicle_console_refusals_total", reason="UNKNOWN_API_KEY") == 2
    assert sample(scraped, "chronicle_rpc_refusals_total", reason="UNKNOWN_API_KEY") == 0  # not an RPC


async def test_without_auth_the_console_answers_only_loopback_host_names() -> None:
    app = await start(replace(TEST_SETTINGS, console_listen="127.0.0.1:0"), store=MemoryStore())
    try:
        address = console(app)
        port = address.rpartition(":")[2]
        assert (await request(address, "GET", "/log")).status == 200
        assert (await request(address, "GET", "/log", host=f"localhost:{port}")).status == 200
        rebound = await request(address, "GET", "/log", host=f"attacker.example:{port}")
        assert rebound.status == 421
        # No session to carry a CSRF token: a form must at least come from here.
        assert (await request(address, "POST", "/logout", headers=FORM)).status == 403
    finally:
        await app.stop(grace=0.5, drain=0)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"NONSENSE\r\n\r\n", 400),
        (b"GET /log HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
        (b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1), 413),
        (b"GET /log HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n", 431),
        (b"GET /log HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    ],
)
async def test_malformed_requests_get_a_plain_status(app: Application, raw: bytes, status: int) -> None:
    assert (await send_raw(console(app), raw)).status == status


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0", "console.internal:0"])
def test_the_console_refuses_to_serve_beyond_loopback_without_auth(listen: str) -> None:
    result = serve_until_exit("--database-url", "memory://", "--console-listen", listen)
    assert result.returncode == 2
    assert "error: INSECURE_LISTEN: refusing to serve the console on" in result.stderr
    assert "Traceback" not in result.stderr


def test_insecure_does_not_stretch_to_the_console() -> None:
    result = serve_until_exit(
        "--database-url", "memory://", "--insecure", "--console-listen", "0.0.0.0:0", listen="0.0.0.0:0"
    )
    assert result.returncode == 2
    assert "refusing to serve the console on 0.0.0.0:0" in result.stderr


async def test_beyond_loopback_with_auth_the_console_starts(tmp_path: Path) -> None:
    app = await start(authenticated(tmp_path, console_listen="0.0.0.0:0"), store=MemoryStore())
    try:
        port = console(app).rpartition(":")[2]
        assert (await request(f"127.0.0.1:{port}", "GET", "/login")).status == 200
    finally:
        await app.stop(grace=0.5, drain=0)


async def test_a_console_address_in_use_is_a_clear_start_up_error(app: Application, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as refused:
        await start(authenticated(tmp_path, console_listen=console(app)), store=MemoryStore())
    assert refused.value.reason == "BIND_FAILED"


async def test_with_tls_the_console_serves_https_and_its_cookie_is_secure(tmp_path: Path) -> None:
    cert_file, key_file = server_tls_files(tmp_path, ca := Authority())
    settings = authenticated(tmp_path, tls_cert_file=cert_file, tls_key_file=key_file)
    app = await start(settings, store=MemoryStore())
    try:
        address = console(app)
        trusting = ssl.create_default_context(cadata=ca.certificate.decode())
        body = urlencode({"credential": KEY}).encode()
        # The origin is the console's scheme, host and port: the same host
        # and port over plain http is another origin.
        plain_origin = {**FORM, "Origin": f"http://{address}"}
        refused = await request(address, "POST", "/login", headers=plain_origin, body=body, tls=trusting)
        assert refused.status == 403 and refused.all("set-cookie") == []
        headers = {**FORM, "Origin": f"https://{address}"}
        answer = await request(address, "POST", "/login", headers=headers, body=body, tls=trusting)
        assert answer.status == 303
        (cookie,) = answer.all("set-cookie")
        assert cookie.endswith("; HttpOnly; SameSite=Strict; Secure")
        with pytest.raises(ConnectionError):  # plaintext gets no page
            await request(address, "GET", "/login")
    finally:
        await app.stop(grace=0.5, drain=0)


async def test_a_long_run_of_aggregates_the_caller_may_not_read_does_not_end_the_listing(tmp_path: Path) -> None:
    # The Log page reads a bounded number of batches per page; when every
    # aggregate in them is one the caller may not read, the page is empty but
    # still links on, or what comes after the run could never be reached.
    store = MemoryStore()
    for number in range(1050):
        await store.append(f"k-{number:04d}", [new_event(aggregate_type="Account")], 0)
    await store.append("k-9999", [new_event(aggregate_type="Box")], 0)
    settings = replace(
        authenticated(tmp_path),
        api_keys_file=api_key_file(tmp_path / "k.toml", [("bob-key-0123456789", "bob", [])]),  # reads boxes only
    )
    app = await start(settings, store=store)
    try:
        address = console(app)
        cookie = session_cookie(await log_in(address, "bob-key-0123456789"))
        path, pages = "/log?q=k-", []
        while True:
            page = await request(address, "GET", path, headers={"Cookie": cookie})
            pages.append(re.findall(r'<a href="/aggregates/(k-\d+)">', page.text))
            following = re.search(r'<a href="(/log\?[^"]+)" class="next">', page.text)
            if following is None:
                break
            path = following.group(1).replace("&amp;", "&")
        assert pages == [[], ["k-9999"]]
    finally:
        await app.stop(grace=0.5, drain=0)


# -- found by an operator's walkthrough ---------------------------------------------------------------

GATEWAY_KEY = "gateway-key-0123456789"  # gateway: submits on others' behalf, reads and subscribes to nothing
ALICE_KEY = "alice-key-0123456789"  # alice: a teller (reads accounts), no administrator
BOB_KEY = "bob-key-0123456789"  # bob: reads boxes only


def walkthrough(tmp_path: Path, **overrides: object) -> Settings:
    keys = [(KEY, "root", ["teller"]), (GATEWAY_KEY, "gateway", []), (ALICE_KEY, "alice", []), (BOB_KEY, "bob", [])]
    return replace(authenticated(tmp_path, **overrides), api_keys_file=api_key_file(tmp_path / "k.toml", keys))


def csrf_of(page: Answer) -> str:
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    return token.group(1)


async def test_a_principal_who_may_read_no_type_is_told_nothing_of_how_far_the_log_has_grown(tmp_path: Path) -> None:
    """As the API refuses it (docs/security.md): the Log page is refused
    READ_DENIED (and audited), and the live tail's page does not say where
    the head is (its stream is refused SUBSCRIBE_DENIED)."""
    app = await start(walkthrough(tmp_path), store=MemoryStore())
    try:
        async with connect(app.address, interceptors=bearer(KEY)) as root:
            for number in range(7):
                await root.submit(command(f"acc-{number}", bank.OpenAccount(owner="ann"), user_id="root"))
        address = console(app)
        cookie = session_cookie(await log_in(address, GATEWAY_KEY))
        for path in ("/log", "/log?q=acc"):
            listed = await request(address, "GET", path, headers={"Cookie": cookie})
            assert listed.status == 403 and "READ_DENIED" in listed.text, path
            main = listed.text.partition("<main>")[2]
            assert "position" not in main and "head" not in main and "7" not in main, path
        tail = await request(address, "GET", "/tail", headers={"Cookie": cookie})
        assert tail.status == 200 and "data-after" not in tail.text
        # Who may read something sees the head, as the API shows it positions.
        alice = session_cookie(await log_in(address, ALICE_KEY))
        shown = await request(address, "GET", "/log", headers={"Cookie": alice})
        assert "The log&#x27;s head is at position 7." in shown.text
        audited = [e for e in await app.store.audit.read_audit(AuditQuery()) if e.outcome == REFUSED]
        assert [(e.command_type, e.principal, e.reason) for e in audited] == [
            ("console/log", "gateway", "READ_DENIED"),
            ("console/log", "gateway", "READ_DENIED"),
        ]
    finally:
        await app.stop(grace=0.5, drain=0)


async def test_the_log_s_next_page_never_names_an_aggregate_the_reader_may_not_read(tmp_path: Path) -> None:
    """The bounded scan may stop on an aggregate the reader may not read:
    the link carries it sealed (an opaque cursor bound to the session and
    the listing), and a cursor changed, made up, or from another session or
    listing is refused 400."""
    store = MemoryStore()
    for number in range(1050):
        await store.append(f"k-{number:04d}", [new_event(aggregate_type="Account")], 0)
    await store.append("k-9999", [new_event(aggregate_type="Box")], 0)
    app = await start(walkthrough(tmp_path), store=store)
    try:
        address = console(app)
        bob = session_cookie(await log_in(address, BOB_KEY))
        first = await request(address, "GET", "/log?q=k-", headers={"Cookie": bob})
        following = re.search(r'<a href="/log\?([^"]+)" class="next">', first.text)
        assert following is not None
        link = html.unescape(following.group(1))
        assert "k-" not in link.replace("q=k-", "")  # no aggregate id, readable or not
        cursor = parse_qs(link)["after"][0]
        second = await request(address, "GET", "/log?" + link, headers={"Cookie": bob})
        assert re.findall(r'<a href="/aggregates/(k-\d+)">', second.text) == ["k-9999"]
        assert 'href="/log?q=k-" class="first"' in second.text

        async def refused(path: str, cookie: str = bob) -> str:
            answer = await request(address, "GET", path, headers={"Cookie": cookie})
            assert answer.status == 400, (path, answer.status)
            assert "INVALID_CURSOR" in answer.text and "k-1" not in answer.text
            return answer.text

        changed = cursor[:-2] + ("A" if cursor[-2] != "A" else "B") + cursor[-1]
        for made_up in ("k-0999", changed, cursor[:20], "%00", "x" * 3000):
            await refused("/log?" + urlencode({"q": "k-", "after": made_up}))
        await refused("/log?" + urlencode({"q": "k-0", "after": cursor}))  # another listing
        root = session_cookie(await log_in(address, KEY))
        shown = await refused("/log?" + urlencode({"q": "k-", "after": cursor}), root)  # another session
        assert "start from the first page" in shown
    finally:
        await app.stop(grace=0.5, drain=0)


async def test_console_actions_are_audited_with_the_browser_s_address_and_refusals_counted(tmp_path: Path) -> None:
    app = await start(walkthrough(tmp_path, metrics_listen="127.0.0.1:0"), store=MemoryStore())
    try:
        address = console(app)
        origin = {**FORM, "Origin": f"http://{address}"}
        rebuild = "/projections/bank.balances_by_owner/rebuild"
        replay = "/groups/billing/replay"
        root = session_cookie(await log_in(address, KEY))
        token = csrf_of(await request(address, "GET", "/projections", headers={"Cookie": root}))
        done = await request(
            address, "POST", rebuild, headers={**origin, "Cookie": root}, body=urlencode({"csrf_token": token}).encode()
        )
        assert done.status == 303
        alice = session_cookie(await log_in(address, ALICE_KEY))
        token = csrf_of(await request(address, "GET", "/projections", headers={"Cookie": alice}))
        for path, form in ((rebuild, {}), (replay, {"event_id": str(uuid.uuid4())})):
            body = urlencode({"csrf_token": token, **form}).encode()
            denied = await request(address, "POST", path, headers={**origin, "Cookie": alice}, body=body)
            assert denied.status == 403 and "ADMIN_DENIED" in denied.text, path
        scraped = await scrape(app)
        audited = [
            (e.command_type.rpartition("/")[2], e.principal, e.outcome, e.reason, e.peer)
            for e in await app.store.audit.read_audit(AuditQuery())
        ]
    finally:
        await app.stop(grace=0.5, drain=0)
    assert sorted(entry[:4] for entry in audited) == [
        ("RebuildProjection", "alice", REFUSED, "ADMIN_DENIED"),
        ("RebuildProjection", "root", ACCEPTED, ""),
        ("ReplayParked", "alice", REFUSED, "ADMIN_DENIED"),
    ]
    # The browser's address, as gRPC spells a peer's (and as a refused page's entry has it).
    assert all(entry[4].startswith("ipv4:127.0.0.1:") for entry in audited), audited
    # Refused by the policy: counted with the console's other refusals (audited once, by the RPC).
    assert sample(scraped, "chronicle_console_refusals_total", reason="ADMIN_DENIED") == 2


async def test_bad_numbers_and_ids_in_a_request_are_refused_not_read_as_something_else(tmp_path: Path) -> None:
    app = await start(walkthrough(tmp_path), store=MemoryStore())
    try:
        async with connect(app.address, interceptors=bearer(KEY)) as client:
            await client.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id="root"))
            for _ in range(3):
                await client.submit(command("acc-1", bank.Deposit(amount=1), user_id="root"))
        async with ChronicleClient.connect(app.address, token=KEY) as admin:
            await admin.groups.create("billing", aggregate_types=["Account"])
        address = console(app)
        root = session_cookie(await log_in(address, KEY))

        async def get(path: str) -> Answer:
            return await request(address, "GET", path, headers={"Cookie": root})

        for query in ("version=abc", "version=0", "version=-1", "version=1e3", "version=99999999999999999999"):
            answer = await get(f"/aggregates/acc-1?{query}")
            assert answer.status == 400 and "INVALID_VERSION" in answer.text, query
            assert "version: must be a whole number from 1" in html.unescape(answer.text), query
            assert 'id="state"' not in answer.text, query  # no state shown under a version it is not
        for query in ("from=abc", "from=0", "from=-2"):
            answer = await get(f"/aggregates/acc-1?{query}")
            assert answer.status == 400 and "from: must be a whole number from 1" in html.unescape(answer.text)
        for path in ("/groups/billing?after=abc", "/groups/billing?after=-1", "/tail/events?after=abc"):
            answer = await get(path)
            assert answer.status == 400 and "INVALID_POSITION" in answer.text, path
        assert (await get("/aggregates/acc-1?version=2")).status == 200

        token = csrf_of(await get("/groups/billing"))
        headers = {**FORM, "Cookie": root, "Origin": f"http://{address}"}
        for event_id in ("not-a-uuid", ""):
            body = urlencode({"csrf_token": token, "event_id": event_id}).encode()
            replayed = await request(address, "POST", "/groups/billing/replay", headers=headers, body=body)
            assert replayed.status == 400 and "INVALID_EVENT_ID" in replayed.text, event_id
        audited = [
            (e.outcome, e.reason)
            for e in await app.store.audit.read_audit(AuditQuery())
            if e.command_type.endswith("/ReplayParked")
        ]
        assert audited == [(REFUSED, "INVALID_EVENT_ID")] * 2  # refused, not accepted
    finally:
        await app.stop(grace=0.5, drain=0)


async def test_an_aggregate_s_pages_of_events_keep_the_version_shown_and_go_back_too(tmp_path: Path) -> None:
    app = await start(walkthrough(tmp_path), store=MemoryStore())
    try:
        async with connect(app.address, interceptors=bearer(KEY)) as client:
            await client.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id="root"))
            for _ in range(249):
                await client.submit(command("acc-1", bank.Deposit(amount=1), user_id="root"))
        address = console(app)
        root = session_cookie(await log_in(address, KEY))

        async def links(path: str) -> dict[str, str]:
            page = await request(address, "GET", path, headers={"Cookie": root})
            assert page.status == 200
            found = re.findall(r'<a href="(/aggregates/[^"]+)" class="(first|prev|next)">', page.text)
            return {kind: html.unescape(href) for href, kind in found}

        assert await links("/aggregates/acc-1?version=7") == {"next": "/aggregates/acc-1?version=7&from=101"}
        assert await links("/aggregates/acc-1?version=7&from=101") == {
            "first": "/aggregates/acc-1?version=7",
            "prev": "/aggregates/acc-1?version=7",
            "next": "/aggregates/acc-1?version=7&from=201",
        }
        assert await links("/aggregates/acc-1?from=201") == {
            "first": "/aggregates/acc-1",
            "prev": "/aggregates/acc-1?from=101",
        }
        later = await request(address, "GET", "/aggregates/acc-1?version=7&from=201", headers={"Cookie": root})
        assert "at version 7" in later.text and '<input type="hidden" name="from" value="201">' in later.text
    finally:
        await app.stop(grace=0.5, drain=0)


async def test_over_https_every_answer_carries_strict_transport_security(tmp_path: Path) -> None:
    """Over HTTPS only, and not to the name localhost (it would hold for a
    year for every plain-HTTP service on the developer's machine)."""
    cert_file, key_file = server_tls_files(tmp_path, ca := Authority())
    app = await start(authenticated(tmp_path, tls_cert_file=cert_file, tls_key_file=key_file), store=MemoryStore())
    try:
        address = console(app)
        port = address.rpartition(":")[2]
        trusting = ssl.create_default_context(cadata=ca.certificate.decode())
        for path in ("/login", "/log", "/static/console.css", "/nowhere"):
            answer = await request(address, "GET", path, tls=trusting)
            assert answer.all("strict-transport-security") == ["max-age=31536000"], path
        local = await request(address, "GET", "/login", host=f"localhost:{port}", tls=trusting)
        assert local.status == 200 and local.header("strict-transport-security") is None
    finally:
        await app.stop(grace=0.5, drain=0)
    plain = await start(authenticated(tmp_path), store=MemoryStore())
    try:
        assert (await request(console(plain), "GET", "/login")).header("strict-transport-security") is None
    finally:
        await plain.stop(grace=0.5, drain=0)


async def test_an_address_that_is_not_utf8_or_repeats_a_name_is_refused_and_actions_want_post(tmp_path: Path) -> None:
    app = await start(walkthrough(tmp_path), store=MemoryStore())
    try:
        async with connect(app.address, interceptors=bearer(KEY)) as client:
            await client.submit(command("acc-é", bank.OpenAccount(owner="ann"), user_id="root"))
            await client.submit(command("acc-é", bank.Deposit(amount=1), user_id="root"))
        address = console(app)
        root = session_cookie(await log_in(address, KEY))

        async def get(target: bytes) -> Answer:
            head = b"GET " + target + b" HTTP/1.1\r\nHost: " + address.encode() + b"\r\nCookie: " + root.encode()
            return await send_raw(address, head + b"\r\n\r\n")

        not_utf8 = await get(b"/aggregates/%C3%28")
        assert not_utf8.status == 400 and "not UTF-8" in not_utf8.text
        assert (await get(b"/log?q=%C3")).status == 400
        assert (await get(b"/log?q=\xc3(")).status == 400
        repeated = await get(b"/aggregates/acc-1?version=1&version=2")
        assert repeated.status == 400 and "'version' more than once" in repeated.text
        # Non-ASCII sent unencoded, as browsers send a query, reads as the UTF-8 it is.
        found = await get("/log?q=acc-é".encode())
        assert found.status == 200 and "acc-é" in html.unescape(found.text) and "Ã" not in found.text
        assert (await get(b"/aggregates/acc-%C3%A9?version=1")).status == 200
        for action in (b"/groups/billing/replay", b"/projections/bank.balances/rebuild", b"/logout"):
            refused = await get(action)
            assert refused.status == 405 and refused.header("allow") == "POST", action
    finally:
        await app.stop(grace=0.5, drain=0)


async def test_a_notice_comes_from_the_session_once_never_from_the_address(tmp_path: Path) -> None:
    app = await start(walkthrough(tmp_path), store=MemoryStore())
    try:
        async with ChronicleClient.connect(app.address, token=KEY) as admin:
            await admin.groups.create("billing", aggregate_types=["Account"])
        address = console(app)
        root = session_cookie(await log_in(address, KEY))

        async def get(path: str) -> Answer:
            return await request(address, "GET", path, headers={"Cookie": root})

        for made_up in ("/projections?rebuilt=anything", "/groups/billing?replayed=999"):
            answer = await get(made_up)
            # A field the page does not read is refused (UNKNOWN_QUERY_FIELD); it never puts text on a page.
            assert answer.status == 400 and 'id="notice"' not in answer.text, made_up
            assert "anything" not in answer.text and "999" not in answer.text, made_up
        token = csrf_of(await get("/projections"))
        headers = {**FORM, "Cookie": root, "Origin": f"http://{address}"}
        body = urlencode({"csrf_token": token}).encode()
        posted = await request(
            address, "POST", "/projections/bank.balances_by_owner/rebuild", headers=headers, body=body
        )
        assert (posted.status, posted.header("location")) == (303, "/projections")
        assert (await get("/groups/billing")).status == 200  # another page does not take the notice
        told = await get("/projections")
        assert "Rebuilding bank.balances_by_owner from the start of the log." in told.text
        assert 'id="notice"' not in (await get("/projections")).text
        # Another session is told nothing.
        other = session_cookie(await log_in(address, KEY))
        posted = await request(
            address, "POST", "/projections/bank.balances_by_owner/rebuild", headers=headers, body=body
        )
        seen = await request(address, "GET", "/projections", headers={"Cookie": other})
        assert 'id="notice"' not in seen.text
    finally:
        await app.stop(grace=0.5, drain=0)


async def test_the_cluster_lists_only_the_leases_of_what_the_reader_may_list(tmp_path: Path) -> None:
    app = await start(walkthrough(tmp_path), store=MemoryStore())
    try:
        address = console(app)
        alice = session_cookie(await log_in(address, ALICE_KEY))
        root = session_cookie(await log_in(address, KEY))

        async def leases(cookie: str) -> dict[str, str]:
            page = (await request(address, "GET", "/cluster", headers={"Cookie": cookie})).text
            body = page.partition('<table id="projection-leases">')[2].partition("</table>")[0]
            found = {}
            for row in re.findall(r"<tr>(.*?)</tr>", body, re.S):
                cells = [
                    html.unescape(re.sub(r"<[^>]+>", "", cell)) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row)
                ]
                if cells:
                    found[cells[0]] = cells[4] if len(cells) > 4 else "(no kind)"
            return found

        async def all_leased() -> bool:
            return len(await leases(root)) == 2

        await eventually(all_leased, what="both leases shown to root")
        assert await leases(root) == {"bank.balances_by_owner": "projection", "bank.transfers": "reaction"}
        reactions = await request(address, "GET", "/reactions", headers={"Cookie": alice})
        assert "bank.transfers" not in reactions.text  # alice may list no reaction ...
        assert await leases(alice) == {"bank.balances_by_owner": "projection"}  # ... nor see its lease
    finally:
        await app.stop(grace=0.5, drain=0)
