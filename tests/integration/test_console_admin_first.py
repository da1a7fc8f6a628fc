"""An administrator's page or action refuses anyone else before it reads
what the address or the form says (docs/console.md, "Bad input is refused,
not guessed at"): a refusal of an unknown query field, a filter, a cursor
or a setting would tell a non-administrator the page's field names and
what it accepts, by probing. A real server with the console, a real HTTP
client; each bad request is shown to be refused for what it says when an
administrator sends it, and refused ADMIN_DENIED (403) to a teller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlencode

import pytest

from service.app import Application, start
from service.client import ChronicleClient
from service.store.base import AuditQuery
from service.store.memory import MemoryStore
from service.store.records import REFUSED
from tests.support.console import FORM, console, log_in, session_cookie
from tests.support.grpc_client import TEST_SETTINGS
from tests.support.http import Answer, request
from tests.support.security import POLICY, api_key_file, write

ROOT_KEY = "admin-first-root-key-0123456789"  # root: an operator (administers)
ALICE_KEY = "admin-first-alice-key-0123456789"  # alice: a teller (reads and subscribes to accounts)
REACTION = "bank.transfers"  # the bank plugin's reaction, run by this one server

# Each administrator's page with a bad address, and what an administrator is told of it.
PAGES = [
    ("/audit?bogus=1", 400, "UNKNOWN_QUERY_FIELD"),
    ("/audit?command_id=cmd-1", 400, "UNKNOWN_QUERY_FIELD"),
    ("/audit?outcome=maybe", 400, "INVALID_FILTER"),
    ("/audit?since=yesterday", 400, "INVALID_TIMESTAMP"),
    # Too long for an id (one with a control character is looked up: a store may hold one).
    ("/audit?" + urlencode({"aggregate": "a" * 201}), 400, "INVALID_AGGREGATE_ID"),
    ("/audit?after=made-up", 400, "INVALID_CURSOR"),
]
# Each administrator's action with a bad form, and what an administrator is told of it.
ACTIONS = [
    ("/groups/billing/settings", {"ack_timeout": "soon"}, 400, "BAD_GROUP_SETTING"),
    ("/groups/billing/settings", {"max_delivery_attempts": "1.5"}, 400, "BAD_GROUP_SETTING"),
    ("/groups/billing/replay", {"event_id": "not-a-uuid"}, 400, "INVALID_EVENT_ID"),
    ("/groups/billing/dismiss", {"event_id": "not-a-uuid"}, 400, "INVALID_EVENT_ID"),
    # An administrator lists every group: a missing one is said so (it was
    # SUBSCRIBE_DENIED, hiding from it what ListGroups shows it anyway).
    ("/groups/nope/replay-all", {"count": "1", "digest": "x"}, 404, "GROUP_NOT_FOUND"),
    ("/groups/nope/dismiss-all", {"count": "1", "digest": "x"}, 404, "GROUP_NOT_FOUND"),
    ("/projections/nope/rebuild", {}, 404, "PROJECTION_NOT_FOUND"),
    (f"/reactions/{REACTION}/replay", {"command_id": ""}, 400, "INVALID_COMMAND_ID"),
    (f"/reactions/{REACTION}/dismiss", {"command_id": "a\x01"}, 400, "INVALID_COMMAND_ID"),
    ("/reactions/nope/replay-all", {}, 404, "REACTION_NOT_FOUND"),
    ("/reactions/nope/dismiss-all", {}, 404, "REACTION_NOT_FOUND"),
]


@asynccontextmanager
async def served(tmp_path: Path) -> AsyncIterator[Application]:
    settings = replace(
        TEST_SETTINGS,
        auth=True,
        policy_file=write(tmp_path / "policy.toml", POLICY),
        api_keys_file=api_key_file(tmp_path / "keys.toml", [(ROOT_KEY, "root", ["teller"]), (ALICE_KEY, "alice", [])]),
        console_listen="127.0.0.1:0",
    )
    app = await start(settings, store=MemoryStore())
    try:
        async with ChronicleClient.connect(app.address, token=ROOT_KEY) as client:
            await client.groups.create("billing", aggregate_types=["Account"])
        yield app
    finally:
        await app.stop(grace=0.5, drain=0)


class Session:
    """One console session: its cookie and the CSRF token its pages carry."""

    def __init__(self, address: str, cookie: str, token: str) -> None:
        self.address, self.cookie, self.token = address, cookie, token

    @classmethod
    async def of(cls, address: str, key: str) -> Session:
        cookie = session_cookie(await log_in(address, key))
        page = await request(address, "GET", "/groups/billing", headers={"Cookie": cookie})
        token = page.text.partition('name="csrf_token" value="')[2].partition('"')[0]
        assert token, "no CSRF token on the group page"
        return cls(address, cookie, token)

    async def get(self, path: str) -> Answer:
        return await request(self.address, "GET", path, headers={"Cookie": self.cookie})

    async def post(self, path: str, form: dict[str, str]) -> Answer:
        headers = {**FORM, "Cookie": self.cookie, "Origin": f"http://{self.address}"}
        body = urlencode({"csrf_token": self.token, **form}).encode()
        return await request(self.address, "POST", path, headers=headers, body=body)


async def refusals_of(app: Application, principal: str) -> list[tuple[str, str]]:
    return [
        (entry.command_type.rpartition("/")[2], entry.reason)
        for entry in await app.store.audit.read_audit(AuditQuery(principal=principal))
        if entry.outcome == REFUSED
    ]


@pytest.mark.parametrize(("path", "status", "reason"), PAGES, ids=[page[0] for page in PAGES])
async def test_an_administrators_page_refuses_anyone_else_before_it_reads_the_address(
    tmp_path: Path, path: str, status: int, reason: str
) -> None:
    async with served(tmp_path) as app:
        root = await Session.of(console(app), ROOT_KEY)
        alice = await Session.of(console(app), ALICE_KEY)
        told_root = await root.get(path)
        told_alice = await alice.get(path)
        audited = await refusals_of(app, "alice")
    assert told_root.status == status and reason in told_root.text  # the address is bad, as said
    assert told_alice.status == 403 and "ADMIN_DENIED" in told_alice.text
    assert reason not in told_alice.text
    # The page's fields are not named to her.
    assert "principal, since" not in told_alice.text and "it reads" not in told_alice.text
    assert audited == [("QueryAudit", "ADMIN_DENIED")]  # once, by the RPC


@pytest.mark.parametrize(("path", "form", "status", "reason"), ACTIONS, ids=[f"{a[0]}:{a[3]}" for a in ACTIONS])
async def test_an_administrators_action_refuses_anyone_else_before_it_reads_the_form(
    tmp_path: Path, path: str, form: dict[str, str], status: int, reason: str
) -> None:
    async with served(tmp_path) as app:
        root = await Session.of(console(app), ROOT_KEY)
        alice = await Session.of(console(app), ALICE_KEY)
        told_root = await root.post(path, form)
        told_alice = await alice.post(path, form)
        audited = await refusals_of(app, "alice")
    assert told_root.status == status and reason in told_root.text
    assert told_alice.status == 403 and "ADMIN_DENIED" in told_alice.text
    assert reason not in told_alice.text
    assert [why for _, why in audited] == ["ADMIN_DENIED"]  # audited once, by the RPC
