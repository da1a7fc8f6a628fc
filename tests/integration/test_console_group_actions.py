"""A group's parked events dismissed one at a time, and replayed or
dismissed all at once after a confirmation, from the console's group page
(docs/console.md): a real server with the console, a real HTTP client, the
counts read back through the API; admin only, CSRF-safe, audited by the
RPCs, POST-redirect-GET with the session's notice."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlencode

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application, start
from service.client import ChronicleClient
from service.console import groups as console_groups
from service.settings import Settings
from service.store.base import AuditQuery
from service.store.memory import MemoryStore
from service.store.records import ACCEPTED, REFUSED
from tests.support.console import FORM, console, log_in, session_cookie, text_of
from tests.support.grpc_client import TEST_SETTINGS, command, connect
from tests.support.http import Answer, request
from tests.support.security import POLICY, api_key_file, bearer, write
from tests.support.waiting import eventually

ROOT_KEY = "actions-root-key-0123456789"  # root: an operator (subscribes to accounts, administers)
ALICE_KEY = "actions-alice-key-0123456789"  # alice: a teller (subscribes to accounts), no administrator


def settings(tmp_path: Path) -> Settings:
    policy = POLICY + '\n[principals."root-actions"]\nroles = ["operator", "teller"]\n'
    return replace(
        TEST_SETTINGS,
        auth=True,
        policy_file=write(tmp_path / "policy.toml", policy),
        api_keys_file=api_key_file(tmp_path / "keys.toml", [(ROOT_KEY, "root-actions", []), (ALICE_KEY, "alice", [])]),
        console_listen="127.0.0.1:0",
    )


@asynccontextmanager
async def parked_group(tmp_path: Path, events: int) -> AsyncIterator[tuple[Application, ChronicleClient]]:
    """A server whose group "billing" has ``events`` parked events (one of
    each account opened, nacked to park), and no consumer left."""
    app = await start(settings(tmp_path), store=MemoryStore())
    try:
        async with ChronicleClient.connect(app.address, token=ROOT_KEY) as client:
            await client.groups.create("billing", aggregate_types=["Account"])
            async with connect(app.address, interceptors=bearer(ROOT_KEY)) as root:
                for number in range(events):
                    await root.submit(command(f"acc-{number}", bank.OpenAccount(owner="ann"), user_id="root-actions"))
            await park_all(client, events)
            yield app, client
    finally:
        await app.stop(grace=0.5, drain=0)


async def park_all(client: ChronicleClient, expected: int) -> None:
    async def park_each() -> None:
        async with client.consume("billing", consumer="parker") as deliveries:
            async for delivery in deliveries:
                await delivery.park("cannot bill")

    consuming = asyncio.ensure_future(park_each())
    try:

        async def parked() -> bool:
            return (await client.groups.get("billing")).parked == expected

        await eventually(parked, what=f"{expected} events parked")
    finally:
        consuming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consuming


class Operator:
    """One console session: its cookie and its CSRF token."""

    def __init__(self, address: str, cookie: str) -> None:
        self.address = address
        self.cookie = cookie
        self.token = ""

    @classmethod
    async def log_in(cls, address: str, key: str) -> Operator:
        return cls(address, session_cookie(await log_in(address, key)))

    async def get(self, path: str) -> Answer:
        answer = await request(self.address, "GET", path, headers={"Cookie": self.cookie})
        token = re.search(r'name="csrf_token" value="([^"]+)"', answer.text)
        if token is not None:
            self.token = token.group(1)
        return answer

    async def post(self, path: str, form: dict[str, str], *, csrf: bool = True) -> Answer:
        headers = {**FORM, "Cookie": self.cookie, "Origin": f"http://{self.address}"}
        body = {**({"csrf_token": self.token} if csrf else {}), **form}
        return await request(self.address, "POST", path, headers=headers, body=urlencode(body).encode())


def hidden(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found is not None, name
    return found.group(1)


def parked_ids(page: str) -> list[str]:
    """The ids of the parked events the page offers to dismiss, in its order."""
    return re.findall(r'action="/groups/billing/dismiss" class="dismiss" data-event="([^"]+)"', page)


async def test_an_administrator_dismisses_one_parked_event_and_is_told_once(tmp_path: Path) -> None:
    async with parked_group(tmp_path, 3) as (app, client):
        root = await Operator.log_in(console(app), ROOT_KEY)
        page = (await root.get("/groups/billing")).text
        ids = parked_ids(page)
        assert len(ids) == 3
        done = await root.post("/groups/billing/dismiss", {"event_id": ids[1]})
        assert (done.status, done.header("location")) == (303, "/groups/billing")
        told = (await root.get("/groups/billing")).text
        again = (await root.get("/groups/billing")).text
        left = [event.event_id for event in await client.groups.parked("billing")]
        info = await client.groups.get("billing")
    assert "Dismissed 1 parked event(s)." in told and 'id="notice"' not in again
    assert left == [ids[0], ids[2]] and info.parked == 2
    assert parked_ids(again) == [ids[0], ids[2]]


async def test_replay_all_and_dismiss_all_are_confirmed_with_their_count_then_done_through_the_api(
    tmp_path: Path,
) -> None:
    async with parked_group(tmp_path, 120) as (app, client):  # more than one DismissParked batch of 100
        root = await Operator.log_in(console(app), ROOT_KEY)
        page = (await root.get("/groups/billing")).text
        assert 'href="/groups/billing/confirm?action=replay-all"' in page
        assert 'href="/groups/billing/confirm?action=dismiss-all"' in page

        confirm = (await root.get("/groups/billing/confirm?action=replay-all")).text
        assert "Replay all 120 parked event(s) of group billing" in text_of(confirm)
        assert hidden(confirm, "count") == "120"
        replayed = await root.post("/groups/billing/replay-all", {"count": "120", "digest": hidden(confirm, "digest")})
        assert (replayed.status, replayed.header("location")) == (303, "/groups/billing")
        told = text_of((await root.get("/groups/billing")).text)
        replaying = [event.replaying for event in await client.groups.parked("billing", limit=1000)]
        assert "Replaying 120 parked event(s)." in told
        assert replaying == [True] * 120  # every one marked, none delivered (no consumer): still parked

        confirm = (await root.get("/groups/billing/confirm?action=dismiss-all")).text
        assert "Dismiss all 120 parked event(s) of group billing" in text_of(confirm)
        dismissed = await root.post(
            "/groups/billing/dismiss-all", {"count": hidden(confirm, "count"), "digest": hidden(confirm, "digest")}
        )
        assert (dismissed.status, dismissed.header("location")) == (303, "/groups/billing")
        told = text_of((await root.get("/groups/billing")).text)
        info = await client.groups.get("billing")
        left = await client.groups.parked("billing")
        audited = sorted(
            (entry.command_type.rpartition("/")[2], entry.outcome)
            for entry in await app.store.audit.read_audit(AuditQuery())
            if entry.command_type.endswith(("/ReplayParked", "/DismissParked"))
        )
    assert "Dismissed 120 parked event(s)." in told
    assert info.parked == 0 and left == []
    # Audited by the RPCs: the confirmed ids replayed 100 to a call (100, then 20), then dismissed in
    # one (all or none: tests/integration/test_console_group_dismiss_all.py).
    assert audited == [("DismissParked", ACCEPTED)] + [("ReplayParked", ACCEPTED)] * 2


async def test_replay_all_replays_only_the_confirmed_events_not_one_parked_after_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The digest is checked, then the events replayed: an event parked in
    between was replayed unconfirmed (ReplayParked with no ids means all).
    The replay names the confirmed ids."""
    async with parked_group(tmp_path, 2) as (app, client):
        root = await Operator.log_in(console(app), ROOT_KEY)
        confirm = (await root.get("/groups/billing/confirm?action=replay-all")).text
        listed = console_groups.all_parked

        async def one_parked_right_after_the_check(parts: object, name: str) -> object:
            events = await listed(parts, name)  # type: ignore[arg-type]
            async with connect(app.address, interceptors=bearer(ROOT_KEY)) as writer:
                await writer.submit(command("acc-late", bank.OpenAccount(owner="ann"), user_id="root-actions"))
            await park_all(client, 3)
            return events

        monkeypatch.setattr(console_groups, "all_parked", one_parked_right_after_the_check)
        replayed = await root.post("/groups/billing/replay-all", {"count": "2", "digest": hidden(confirm, "digest")})
        told = text_of((await root.get("/groups/billing")).text)
        parked = {event.aggregate_id: event.replaying for event in await client.groups.parked("billing")}
    assert replayed.status == 303 and "Replaying 2 parked event(s)." in told
    assert parked == {"acc-0": True, "acc-1": True, "acc-late": False}


async def test_an_action_on_all_parked_events_does_nothing_if_they_changed_since_the_confirmation(
    tmp_path: Path,
) -> None:
    async with parked_group(tmp_path, 2) as (app, client):
        root = await Operator.log_in(console(app), ROOT_KEY)
        confirm = (await root.get("/groups/billing/confirm?action=dismiss-all")).text
        digest = hidden(confirm, "digest")
        async with connect(app.address, interceptors=bearer(ROOT_KEY)) as writer:
            await writer.submit(command("acc-late", bank.OpenAccount(owner="ann"), user_id="root-actions"))
        await park_all(client, 3)  # a third parked after the operator read "2"
        refused = await root.post("/groups/billing/dismiss-all", {"count": "2", "digest": digest})
        assert (refused.status, refused.header("location")) == (303, "/groups/billing/confirm?action=dismiss-all")
        again = (await root.get("/groups/billing/confirm?action=dismiss-all")).text
        info = await client.groups.get("billing")
        # A made-up count with the digest of what is parked now is refused too: both must match.
        forged = await root.post("/groups/billing/dismiss-all", {"count": "2", "digest": hidden(again, "digest")})
        still = await client.groups.get("billing")
    assert info.parked == 3 and still.parked == 3
    assert "changed since you confirmed (2 then, 3 now): nothing was done" in text_of(again)
    assert "Dismiss all 3 parked event(s)" in text_of(again)
    assert forged.header("location") == "/groups/billing/confirm?action=dismiss-all"


async def test_a_non_administrator_sees_no_buttons_and_is_refused_as_the_rpc_refuses_audited(tmp_path: Path) -> None:
    async with parked_group(tmp_path, 2) as (app, client):
        address = console(app)
        root = await Operator.log_in(address, ROOT_KEY)
        root_page = (await root.get("/groups/billing")).text
        ids = parked_ids(root_page)
        alice = await Operator.log_in(address, ALICE_KEY)
        page = (await alice.get("/groups/billing")).text
        confirm = (await alice.get("/groups/billing/confirm?action=dismiss-all")).text
        answers = {}
        for path, form in (
            ("/groups/billing/dismiss", {"event_id": ids[0]}),
            ("/groups/billing/replay-all", {"count": "2", "digest": "0" * 32}),
            ("/groups/billing/dismiss-all", {"count": "2", "digest": "0" * 32}),
        ):
            answered = await alice.post(path, form)
            answers[path] = (answered.status, "ADMIN_DENIED" in answered.text)
        info = await client.groups.get("billing")
        audited = sorted(
            (entry.command_type.rpartition("/")[2], entry.principal, entry.outcome, entry.reason)
            for entry in await app.store.audit.read_audit(AuditQuery())
            if entry.command_type.endswith(("/ReplayParked", "/DismissParked"))
        )
    assert 'class="dismiss"' not in page and 'class="replay"' not in page and "confirm?action" not in page
    assert "Dismiss all 2 parked event(s)" in text_of(confirm) and 'class="confirm' not in confirm
    assert "Only an administrator may dismiss parked events." in text_of(confirm)
    assert set(answers.values()) == {(403, True)}
    assert info.parked == 2
    assert audited == [
        ("DismissParked", "alice", REFUSED, "ADMIN_DENIED"),
        ("DismissParked", "alice", REFUSED, "ADMIN_DENIED"),
        ("ReplayParked", "alice", REFUSED, "ADMIN_DENIED"),
    ]


async def test_forms_without_the_sessions_csrf_token_are_refused_and_change_nothing(tmp_path: Path) -> None:
    async with parked_group(tmp_path, 2) as (app, client):
        root = await Operator.log_in(console(app), ROOT_KEY)
        page = (await root.get("/groups/billing")).text
        confirm = (await root.get("/groups/billing/confirm?action=dismiss-all")).text
        form = {"count": "2", "digest": hidden(confirm, "digest")}
        statuses = [
            (await root.post("/groups/billing/dismiss", {"event_id": parked_ids(page)[0]}, csrf=False)).status,
            (await root.post("/groups/billing/dismiss-all", form, csrf=False)).status,
            (await root.post("/groups/billing/replay-all", form, csrf=False)).status,
        ]
        root.token = "not-the-token"
        statuses.append((await root.post("/groups/billing/dismiss-all", form)).status)
        info = await client.groups.get("billing")
        parked = await client.groups.parked("billing")
        get_action = await root.get("/groups/billing/dismiss-all")
    assert statuses == [403] * 4
    assert info.parked == 2 and not any(event.replaying for event in parked)
    assert get_action.status == 405 and get_action.header("allow") == "POST"


async def test_a_confirmation_of_an_unknown_action_is_refused_and_a_group_named_confirm_is_a_group(
    tmp_path: Path,
) -> None:
    async with parked_group(tmp_path, 1) as (app, client):
        await client.groups.create("confirm", aggregate_types=["Account"])
        root = await Operator.log_in(console(app), ROOT_KEY)
        unknown = await root.get("/groups/billing/confirm?action=delete-everything")
        named_confirm = await root.get("/groups/confirm")
        nothing = await root.get("/groups/confirm/confirm?action=replay-all")
    assert unknown.status == 400 and "INVALID_ACTION" in unknown.text
    assert named_confirm.status == 200 and 'id="group-summary"' in named_confirm.text
    assert nothing.status == 200 and "has no parked events: nothing to replay" in text_of(nothing.text)


async def test_more_parked_events_than_the_console_acts_on_at_once_are_refused_with_the_way_to_do_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond MAX_ALL_PARKED (10,000; 2 here) the confirmation and the action
    are refused (TOO_MANY_PARKED, 400), naming the CLI, and nothing is done."""
    monkeypatch.setattr(console_groups, "MAX_ALL_PARKED", 2)
    async with parked_group(tmp_path, 3) as (app, client):
        root = await Operator.log_in(console(app), ROOT_KEY)
        await root.get("/groups/billing")
        confirm = await root.get("/groups/billing/confirm?action=dismiss-all")
        acted = await root.post("/groups/billing/dismiss-all", {"count": "3", "digest": "0" * 32})
        info = await client.groups.get("billing")
    assert confirm.status == 400 and "TOO_MANY_PARKED" in confirm.text
    assert "chronicle group billing --replay-all" in text_of(confirm.text)
    assert acted.status == 400 and "TOO_MANY_PARKED" in acted.text
    assert info.parked == 3


async def test_an_administrator_updates_a_groups_settings_from_its_page_and_a_refused_setting_changes_nothing(
    tmp_path: Path,
) -> None:
    """The group page's settings form is UpdateGroup: admin only (the form
    shows to administrators; anyone else's post is the RPC's ADMIN_DENIED,
    audited), CSRF-checked, a setting the RPC refuses shown with its reason
    and nothing changed, a value that is no number refused before it."""
    async with parked_group(tmp_path, 0) as (app, client):
        address = console(app)
        root = await Operator.log_in(address, ROOT_KEY)
        page = (await root.get("/groups/billing")).text
        alice = await Operator.log_in(address, ALICE_KEY)
        alice_page = (await alice.get("/groups/billing")).text
        form = {
            "ack_timeout": "2.5",
            "max_delivery_attempts": "7",
            "max_unanswered_timeouts": "0",
            "retry_backoff": "0.25",
            "max_retry_backoff": "4",
        }
        no_csrf = await root.post("/groups/billing/settings", form, csrf=False)
        updated = await root.post("/groups/billing/settings", form)
        told = text_of((await root.get("/groups/billing")).text)
        info = await client.groups.get("billing")
        too_many = await root.post("/groups/billing/settings", {**form, "max_delivery_attempts": "1000"})
        not_a_number = await root.post("/groups/billing/settings", {**form, "ack_timeout": "soon"})
        by_alice = await alice.post("/groups/billing/settings", form)
        after = await client.groups.get("billing")
        audited = [
            (entry.command_type.rpartition("/")[2], entry.principal, entry.outcome, entry.reason)
            for entry in reversed(await app.store.audit.read_audit(AuditQuery()))
            if entry.command_type.endswith("/UpdateGroup")
        ]
    assert 'action="/groups/billing/settings"' in page and 'name="ack_timeout" value="' in page
    assert "/groups/billing/settings" not in alice_page
    assert no_csrf.status == 403
    assert (updated.status, updated.header("location")) == (303, "/groups/billing")
    assert "Settings of group billing updated: ack timeout 2.5 s, max delivery attempts 7" in told
    assert (info.ack_timeout.ToMilliseconds(), info.max_delivery_attempts, info.max_unanswered_timeouts) == (2500, 7, 0)
    assert (info.retry_backoff.ToMilliseconds(), info.max_retry_backoff.ToMilliseconds()) == (250, 4000)
    assert too_many.status == 400 and "BAD_GROUP_SETTING" in too_many.text and "max_delivery_attempts" in too_many.text
    assert (
        not_a_number.status == 400 and "BAD_GROUP_SETTING" in not_a_number.text and "soon" in text_of(not_a_number.text)
    )
    assert by_alice.status == 403 and "ADMIN_DENIED" in by_alice.text
    assert after.max_delivery_attempts == 7 and after.ack_timeout.ToMilliseconds() == 2500  # nothing changed since
    assert audited == [
        ("UpdateGroup", "root-actions", ACCEPTED, ""),
        ("UpdateGroup", "root-actions", REFUSED, "BAD_GROUP_SETTING"),
        ("UpdateGroup", "alice", REFUSED, "ADMIN_DENIED"),
    ]
