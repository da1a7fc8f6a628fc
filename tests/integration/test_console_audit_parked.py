"""The console's audit log (``/audit``), a projection's parked events
(``/projections/NAME``) and a reaction's parked commands
(``/reactions/NAME``), over a real socket with a real server
(docs/console.md): who sees them, their filters and sealed page cursors,
markup in an entry shown as text, the actions and their confirmation, CSRF,
and nothing of a forgotten aggregate shown."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from chronicle.v1 import admin_service_pb2 as admin_pb
from chronicle.v1 import reaction_service_pb2 as reactions_pb
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.api.reaction_service import ReactionService
from service.app import Application, start
from service.console import audit as console_audit
from service.console import parked as console_parked
from service.errors import StoreUnavailable
from service.plugins import Documents, Plugin, ProjectedEvent
from service.plugins.registry import Registry
from service.settings import Settings
from service.store.base import AuditQuery, StoreAdapter
from service.store.encryption import new_master_key
from service.store.memory import MemoryStore
from service.store.records import ACCEPTED, REFUSED, AuditEntry
from tests.support import plugins
from tests.support.console import FORM, log_in, session_cookie
from tests.support.grpc_client import TEST_SETTINGS, command, connect, running_server
from tests.support.http import Answer, request
from tests.support.metrics import sample, scrape
from tests.support.security import api_key_file, bearer, write
from tests.support.waiting import eventually

ROOT_KEY = "audit-root-key-0123456789"  # root: an administrator
ALICE_KEY = "audit-alice-key-0123456789"  # alice: reads accounts and gates, administers nothing
BOB_KEY = "audit-bob-key-0123456789"  # bob: reads nothing
POLICY = """
[roles.operator]
read = ["*"]
subscribe = ["*"]
submit = ["*"]
admin = true

[roles.teller]
submit = ["bank.v1.OpenAccount", "bank.v1.Deposit"]
read = ["Account", "Gate"]
"""
HOSTILE = "<script>window.pwned = 1</script><img src=x onerror='window.pwned=2'>"

# A read model that parks every deposit at its first failure, with an error
# that holds markup and quotes the account's owner.
parking = Plugin("parking")
parks = parking.projection(
    "parking.deposits", aggregate_types=["Account"], on_failure="park", max_attempts=1, retry_seconds=0.01
)
owners: dict[str, str] = {}


@parks.on(bank.AccountOpened)
def _opened(event: bank.AccountOpened, envelope: ProjectedEvent, documents: Documents) -> None:
    if event.owner.startswith("boom"):
        raise ValueError(f"{HOSTILE} cannot take {envelope.aggregate_id} of {event.owner}")


@parks.on(bank.MoneyDeposited)
def _deposited(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Documents) -> None:
    raise ValueError(f"{HOSTILE} no deposits here")


REGISTRY = Registry([bank_account.plugin, plugins.gates, parking])
RELAY = "gates.relay"


def with_auth(tmp_path: Path, **overrides: Any) -> Settings:
    return replace(
        TEST_SETTINGS,
        auth=True,
        policy_file=write(tmp_path / "policy.toml", POLICY),
        api_keys_file=api_key_file(
            tmp_path / "keys.toml",
            [(ROOT_KEY, "root", ["operator"]), (ALICE_KEY, "alice", ["teller"]), (BOB_KEY, "bob", [])],
        ),
        console_listen="127.0.0.1:0",
        poll_seconds=0.05,
        **overrides,
    )


@asynccontextmanager
async def served(settings: Settings, store: StoreAdapter | None = None) -> AsyncIterator[Application]:
    app = await start(settings, store=store if store is not None else MemoryStore(), registry=REGISTRY)
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


async def post(address: str, path: str, cookie: str, **fields: str) -> Answer:
    headers = {**FORM, "Origin": f"http://{address}", **({"Cookie": cookie} if cookie else {})}
    return await request(address, "POST", path, headers=headers, body=urlencode(fields).encode())


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found is not None, "no CSRF token on the page"
    return found.group(1)


def confirmation_of(page: str) -> dict[str, str]:
    """The fields of the confirmation form on ``page``: the CSRF token, and
    the count and digest of what it confirms."""
    fields = {"csrf_token": csrf_of(page)}
    for name in ("count", "digest"):
        found = re.search(rf'name="{name}" value="([^"]+)"', page)
        assert found is not None, f"no {name} on the confirmation"
        fields[name] = found.group(1)
    return fields


def rows(page: str, table_id: str) -> list[list[str]]:
    found = re.search(rf'<table id="{table_id}">(.*?)</table>', page, re.S)
    assert found is not None, f"no table {table_id}"
    body = found.group(1).partition("<tbody>")[2]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


def text_of(markup: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def next_link(page: str) -> str | None:
    found = re.search(r'<a href="([^"]+)" class="next">', page)
    return html.unescape(found.group(1)) if found else None


def nav_links(page: str) -> list[str]:
    nav = re.search(r"<nav>(.*?)</nav>", page, re.S)
    assert nav is not None
    return re.findall(r'href="([^"]+)"', nav.group(1))


def entry(at: int, number: int, **fields: Any) -> AuditEntry:
    defaults: dict[str, Any] = {
        "command_type": "bank.v1.Deposit",
        "aggregate_id": "acc-1",
        "principal": "eve",
        "user_id": "eve",
        "origin": "tests",
        "outcome": REFUSED,
        "reason": "SUBMIT_DENIED",
    }
    return AuditEntry(recorded_at_us=at, command_id=f"cmd-{number}", **{**defaults, **fields})


# -- the audit log -------------------------------------------------------------------------


async def test_the_audit_log_is_an_administrators_page_as_query_audit_is_and_its_refusal_audited_once(
    tmp_path: Path,
) -> None:
    async with served(with_auth(tmp_path, metrics_listen="127.0.0.1:0")) as app:
        address = address_of(app)
        root, alice = await cookie_of(address, ROOT_KEY), await cookie_of(address, ALICE_KEY)
        root_log, alice_log = await get(address, "/log", root), await get(address, "/log", alice)
        refused = await get(address, "/audit", alice)
        shown = await get(address, "/audit", root)
        scraped = await scrape(app)
        audited = [
            (e.command_type, e.principal, e.reason)
            for e in await app.store.audit.read_audit(AuditQuery())
            if e.outcome == REFUSED
        ]
    assert "/audit" in nav_links(root_log.text) and "/audit" not in nav_links(alice_log.text)
    assert refused.status == 403 and "ADMIN_DENIED" in refused.text
    assert "/audit" not in nav_links(refused.text)
    assert shown.status == 200 and 'id="audit"' in shown.text
    # Written once, by QueryAudit itself (not again as a refused page), and shown to the administrator.
    assert audited == [("chronicle.v1.AdminService/QueryAudit", "alice", "ADMIN_DENIED")]
    assert sample(scraped, "chronicle_console_refusals_total", reason="ADMIN_DENIED") == 1  # and counted
    (row,) = rows(shown.text, "audit")
    assert text_of(row[1]) == "alice" and "ADMIN_DENIED" in text_of(row[6])


async def test_the_audit_log_filters_by_principal_action_aggregate_command_outcome_and_time_and_shows_markup_as_text(
    tmp_path: Path,
) -> None:
    async with served(with_auth(tmp_path)) as app:
        store = app.store.audit
        await store.record_audit_entry(entry(1_000_000, 1, principal="eve"))
        await store.record_audit_entry(entry(2_000_000, 2, principal="mallory", origin=HOSTILE))
        await store.record_audit_entry(entry(3_000_000, 3, principal="eve", outcome=ACCEPTED, reason=""))
        await store.record_audit_entry(replace(entry(4_000_000, 4), command_type=HOSTILE, message=HOSTILE))
        address = address_of(app)
        root = await cookie_of(address, ROOT_KEY)

        async def shown(**filters: str) -> list[str]:
            answer = await get(address, "/audit?" + urlencode(filters), root)
            assert answer.status == 200, answer.text
            return [text_of(row[5]) for row in rows(answer.text, "audit") if len(row) > 1]

        everything = (await get(address, "/audit", root)).text
        assert await shown() == ["cmd-4", "cmd-3", "cmd-2", "cmd-1"]  # newest first
        assert await shown(principal="eve") == ["cmd-4", "cmd-3", "cmd-1"]
        assert await shown(outcome="accepted") == ["cmd-3"]
        assert await shown(outcome="refused", principal="eve") == ["cmd-4", "cmd-1"]
        assert await shown(command="cmd-2") == ["cmd-2"]
        assert await shown(action="bank.v1.Deposit", principal="eve") == ["cmd-3", "cmd-1"]
        assert await shown(aggregate="acc-2") == []
        # Times as a browser's datetime-local sends them, read as UTC: since inclusive, until exclusive.
        assert await shown(since="1970-01-01T00:00:02", until="1970-01-01T00:00:04") == ["cmd-3", "cmd-2"]
        bad_outcome = await get(address, "/audit?outcome=maybe", root)
        bad_time = await get(address, "/audit?since=yesterday", root)
        # Too long for an id (one with a control character is looked up: a store may hold one).
        bad_id = await get(address, "/audit?" + urlencode({"aggregate": "a" * 201}), root)
    assert bad_outcome.status == 400 and "INVALID_FILTER" in bad_outcome.text
    assert bad_time.status == 400 and "INVALID_TIMESTAMP" in bad_time.text
    assert bad_id.status == 400 and "INVALID_AGGREGATE_ID" in bad_id.text
    # An entry's attacker-chosen text (a command type, an origin, a message) is shown as text.
    assert "<script>" not in everything and "<img" not in everything
    hostile = rows(everything, "audit")
    assert text_of(hostile[0][3]) == HOSTILE and text_of(hostile[0][7]) == HOSTILE
    assert text_of(hostile[2][8]) == HOSTILE


async def test_the_audit_log_pages_newest_first_with_a_sealed_cursor_even_across_entries_of_one_microsecond(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: StoreAdapter
) -> None:
    """60 entries, 25 of them in one microsecond that pages' ends cut
    through: each is shown once, in order, across pages of 10, on every
    store (each returns entries of one time in an order of its own)."""
    monkeypatch.setattr(console_audit, "AUDIT_PAGE_SIZE", 10)
    times = [1_000_000 + n for n in range(20)] + [5_000_000] * 25 + [9_000_000 + n for n in range(15)]
    async with served(with_auth(tmp_path), store) as app:
        for number, at in enumerate(times):
            await app.store.audit.record_audit_entry(entry(at, number, principal="eve"))
        address = address_of(app)
        root = await cookie_of(address, ROOT_KEY)
        seen: list[str] = []
        paths: list[str] = []
        path: str | None = "/audit?principal=eve"
        while path is not None:
            paths.append(path)
            answer = await get(address, path, root)
            assert answer.status == 200, answer.text
            seen += [text_of(row[5]) for row in rows(answer.text, "audit")]
            path = next_link(answer.text)
        pages = len(paths)
        second = paths[1]
        cursor = second.partition("after=")[2]
        other_session = await get(address, second, await cookie_of(address, ROOT_KEY))
        other_filters = await get(address, "/audit?" + urlencode({"principal": "mallory", "after": cursor}), root)
        forged = await get(address, "/audit?principal=eve&after=" + cursor[:-2] + "AA", root)
        made_up = await get(address, "/audit?principal=eve&after=5000000:3", root)
    expected = [f"cmd-{n}" for n in sorted(range(60), key=lambda n: -times[n])]
    assert len(seen) == 60 and len(set(seen)) == 60  # every entry once
    assert [times[int(c.removeprefix("cmd-"))] for c in seen] == sorted(times, reverse=True)  # newest first
    assert sorted(seen) == sorted(expected)
    assert pages == 6
    assert "5000000" not in cursor  # the point it goes on from is sealed, not shown
    for refused in (other_session, other_filters, forged, made_up):
        assert refused.status == 400 and "INVALID_CURSOR" in refused.text


# -- a projection's parked events -------------------------------------------------------------


async def test_a_projections_parked_events_are_listed_escaped_paged_with_the_rebuild_for_administrators(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console_parked, "PARKED_EVENTS_PER_PAGE", 2)
    async with served(with_auth(tmp_path)) as app:
        async with connect(app.address, interceptors=bearer(ROOT_KEY)) as client:
            await client.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id="root"))
            for amount in range(1, 6):
                await client.submit(command("acc-1", bank.Deposit(amount=amount), user_id="root"))
        address = address_of(app)
        root, alice, bob = [await cookie_of(address, key) for key in (ROOT_KEY, ALICE_KEY, BOB_KEY)]
        page = "/projections/parking.deposits"

        async def all_parked() -> bool:
            summary = (await get(address, page, root)).text
            return "5 event(s) parked" in text_of(summary)

        await eventually(all_parked, what="five deposits parked")
        listing = (await get(address, "/projections", root)).text
        first = (await get(address, page, root)).text
        positions: list[int] = []
        path: str | None = page
        while path is not None:
            shown = (await get(address, path, root)).text
            positions += [int(text_of(row[0])) for row in rows(shown, "parked")]
            path = next_link(shown)
        as_alice = await get(address, page, alice)
        as_bob = await get(address, page, bob)
        stolen = await get(address, next_link(first) or "", alice)  # root's cursor, alice's session
        refusals = [
            (e.command_type, e.principal, e.reason)
            for e in await app.store.audit.read_audit(AuditQuery())
            if e.outcome == REFUSED
        ]
    assert 'href="/projections/parking.deposits"' in listing  # the Projections page links to it
    row = rows(first, "parked")[0]
    assert text_of(row[0]) == "2" and text_of(row[1]) == "acc-1" and text_of(row[4]) == "1"
    assert text_of(row[3]) == "bank.v1.MoneyDeposited" and re.fullmatch(r"[0-9a-f-]{36}", text_of(row[2]))
    assert HOSTILE in text_of(row[6]) and "<script>" not in first
    assert positions == [2, 3, 4, 5, 6]
    assert "rebuild the projection" in text_of(first)
    assert 'action="/projections/parking.deposits/rebuild"' in first
    assert as_alice.status == 200 and len(rows(as_alice.text, "parked")) == 2
    assert "/rebuild" not in as_alice.text and "An administrator rebuilds it." in text_of(as_alice.text)
    assert as_bob.status == 403 and "READ_DENIED" in as_bob.text
    assert ("console/projections/parking.deposits", "bob", "READ_DENIED") in refusals
    assert stolen.status == 400 and "INVALID_CURSOR" in stolen.text


# -- a reaction's parked commands ---------------------------------------------------------------


async def park(client: Any, names: list[str]) -> None:
    """The relay parks a RenameBox for the shut gate "gated" per name."""
    await client.submit(command("source", box.ArchiveBox(), user_id="root"))  # "source" lets names through
    for name in names:
        await client.submit(command("source", box.RenameBox(name=name), user_id="root"))


async def test_a_reactions_parked_commands_are_replayed_and_dismissed_by_administrators_with_csrf_and_confirmation(
    tmp_path: Path,
) -> None:
    async with served(with_auth(tmp_path)) as app:
        address = address_of(app)
        root, alice = await cookie_of(address, ROOT_KEY), await cookie_of(address, ALICE_KEY)
        page = "/reactions/" + RELAY
        async with connect(app.address, interceptors=bearer(ROOT_KEY)) as client:
            await park(client, ["n1", HOSTILE, "n3", "n4", "n5"])

            async def parked_now() -> list[list[str]]:
                answer = await get(address, page, root)
                assert answer.status == 200, answer.text
                return rows(answer.text, "parked") if "none parked" not in answer.text else []

            async def five_parked() -> bool:
                return len(await parked_now()) == 5

            await eventually(five_parked, what="five commands parked")
            shown = (await get(address, page, root)).text
            ids = [text_of(row[2]) for row in rows(shown, "parked")]
            token = csrf_of(shown)
            as_alice = (await get(address, page, alice)).text

            # Forms without the session's token are refused, and change nothing.
            no_csrf = await post(address, page + "/dismiss", root, command_id=ids[0])
            alice_token = csrf_of(as_alice)
            by_alice = await post(address, page + "/dismiss", alice, csrf_token=alice_token, command_id=ids[0])
            all_by_alice = await post(address, page + "/dismiss-all", alice, csrf_token=alice_token)
            assert len(await parked_now()) == 5

            # One replayed while the gate is still shut: refused again, it stays.
            again = await post(address, page + "/replay", root, csrf_token=token, command_id=ids[0])
            notice_again = (await get(address, page, root)).text
            await client.submit(command("gated", box.ArchiveBox(), user_id="root"))  # the gate opens
            accepted = await post(address, page + "/replay", root, csrf_token=token, command_id=ids[0])
            dismissed = await post(address, page + "/dismiss", root, csrf_token=token, command_id=ids[1])
            left = [text_of(row[2]) for row in await parked_now()]

            # The all-actions ask first: a page that says how many, and changes nothing.
            asked = await post(address, page + "/dismiss-all", root, csrf_token=token)
            still = len(await parked_now())
            done = await post(address, page + "/dismiss-all", root, **confirmation_of(asked.text))
            notice_done = (await get(address, page, root)).text
            after = await parked_now()
        actions = [
            (e.command_type.rpartition("/")[2], e.principal, e.outcome, e.reason, e.peer)
            for e in await app.store.audit.read_audit(AuditQuery(aggregate_id=f"reaction:{RELAY}"))
        ]
    assert len(ids) == 5 and "<script>" not in shown and HOSTILE in text_of(shown)  # a command's payload, as text
    assert 'action="/reactions/gates.relay/replay-all"' in shown
    assert "/replay" not in as_alice and "/dismiss" not in as_alice and len(rows(as_alice, "parked")) == 5
    assert no_csrf.status == 403
    assert by_alice.status == 403 and "ADMIN_DENIED" in by_alice.text
    assert all_by_alice.status == 403 and "ADMIN_DENIED" in all_by_alice.text  # refused at once, not asked
    assert again.status == 303 and "refused again (GATE_SHUT)" in text_of(notice_again)
    assert accepted.status == 303 and dismissed.status == 303
    assert left == ids[2:]
    assert asked.status == 200 and "3 parked command(s) now" in text_of(asked.text) and still == 3
    assert done.status == 303 and "Dismissed 3 parked command(s)." in text_of(notice_done) and after == []
    # Each action is audited by its RPC, refusals too, with the browser's address.
    assert [(rpc, who, outcome, reason) for rpc, who, outcome, reason, _ in reversed(actions)] == [
        ("DismissParkedCommand", "alice", REFUSED, "ADMIN_DENIED"),
        ("DismissAllParkedCommands", "alice", REFUSED, "ADMIN_DENIED"),
        ("ReplayParkedCommand", "root", ACCEPTED, ""),
        ("ReplayParkedCommand", "root", ACCEPTED, ""),
        ("DismissParkedCommand", "root", ACCEPTED, ""),
        # "Dismiss all" dismisses the confirmed commands in one call, one transaction.
        ("DismissAllParkedCommands", "root", ACCEPTED, ""),
    ]
    assert all(peer.startswith("ipv4:127.0.0.1:") for *_, peer in actions), actions


async def test_an_all_action_acts_only_on_the_commands_it_confirmed(tmp_path: Path) -> None:
    # The confirmation said 3; two more were parked before the operator
    # clicked: "Dismiss all" dismissed 5. Now nothing is done, and the
    # confirmation is shown again with the new count.
    async with served(with_auth(tmp_path)) as app:
        address = address_of(app)
        root = await cookie_of(address, ROOT_KEY)
        page = "/reactions/" + RELAY

        async def parked_ids() -> list[str]:
            answer = await get(address, page, root)
            return [text_of(row[2]) for row in rows(answer.text, "parked")] if "none parked" not in answer.text else []

        async def parked(count: int) -> None:
            async def there() -> bool:
                return len(await parked_ids()) == count

            await eventually(there, what=f"{count} commands parked")

        async with connect(app.address, interceptors=bearer(ROOT_KEY)) as client:
            await park(client, ["n1", "n2", "n3"])
            await parked(3)
            token = csrf_of((await get(address, page, root)).text)
            legacy = await post(address, page + "/dismiss-all", root, csrf_token=token, confirmed="yes")
            asked = await post(address, page + "/dismiss-all", root, csrf_token=token)
            for name in ("late-1", "late-2"):
                await client.submit(command("source", box.RenameBox(name=name), user_id="root"))
            await parked(5)
            stale = await post(address, page + "/dismiss-all", root, **confirmation_of(asked.text))
            after_stale = await parked_ids()
            done = await post(address, page + "/dismiss-all", root, **confirmation_of(stale.text))
            notice_done = text_of((await get(address, page, root)).text)
            after_done = await parked_ids()

            # Replay all: the same; confirmed, each confirmed command is sent again (the gate is shut: refused again).
            await park(client, ["r1", "r2"])
            await parked(2)
            asked_replay = await post(address, page + "/replay-all", root, csrf_token=token)
            await client.submit(command("source", box.RenameBox(name="r3"), user_id="root"))
            await parked(3)
            stale_replay = await post(address, page + "/replay-all", root, **confirmation_of(asked_replay.text))
            replayed = await post(address, page + "/replay-all", root, **confirmation_of(stale_replay.text))
            notice_replayed = text_of((await get(address, page, root)).text)
        actions = [
            e.command_type.rpartition("/")[2]
            for e in await app.store.audit.read_audit(AuditQuery(aggregate_id=f"reaction:{RELAY}"))
        ]
    # A form of the old confirmation (confirmed=yes, no digest) only asks.
    assert legacy.status == 200 and "3 parked command(s) now" in text_of(legacy.text)
    assert asked.status == 200 and "3 parked command(s) now" in text_of(asked.text)
    assert stale.status == 409 and len(after_stale) == 5
    assert "changed since you confirmed (3 then, 5 now): nothing was done" in text_of(stale.text)
    assert "5 parked command(s) now" in text_of(stale.text)
    assert done.status == 303 and "Dismissed 5 parked command(s)." in notice_done and after_done == []
    assert stale_replay.status == 409 and "(2 then, 3 now)" in text_of(stale_replay.text)
    assert replayed.status == 303
    assert "Replayed 3 parked command(s): 0 accepted, 3 refused again." in notice_replayed
    assert sorted(actions) == ["DismissAllParkedCommands"] + ["ReplayParkedCommand"] * 3


@pytest.mark.parametrize("action", ["replay-all"])
async def test_an_all_action_that_fails_midway_says_exactly_how_many_it_did_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    """*Replay all* sends each parked command by its own call (on the
    replica that runs the reaction): it cannot be all or none, and one that
    fails at its third command has done two, for good. The page says so,
    with the failure, rather than the failure alone. (*Dismiss all* is all
    or none: test_console_reaction_dismiss_all.py.)"""
    rpc = "ReplayParkedCommand"
    original = getattr(ReactionService, rpc)
    calls = 0

    async def failing_third(self: ReactionService, request: Any, context: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise StoreUnavailable("injected: the store went away", reason="STORE_UNAVAILABLE")
        return await original(self, request, context)

    async with served(with_auth(tmp_path)) as app:
        address = address_of(app)
        root = await cookie_of(address, ROOT_KEY)
        page = "/reactions/" + RELAY
        async with connect(app.address, interceptors=bearer(ROOT_KEY)) as client:
            await park(client, ["n1", "n2", "n3", "n4", "n5"])

            async def five_parked() -> bool:
                answer = await get(address, page, root)
                return "none parked" not in answer.text and len(rows(answer.text, "parked")) == 5

            await eventually(five_parked, what="five commands parked")
            token = csrf_of((await get(address, page, root)).text)
            asked = await post(address, page + "/" + action, root, csrf_token=token)
            monkeypatch.setattr(ReactionService, rpc, failing_third)
            failed = await post(address, page + "/" + action, root, **confirmation_of(asked.text))
            left = rows((await get(address, page, root)).text, "parked")
    told = text_of(failed.text)
    verb = "Dismissed" if action == "dismiss-all" else "Replayed"
    assert failed.status == 503 and "STORE_UNAVAILABLE" in told
    assert f"{verb} 2 of the 5 confirmed parked command(s) before this failure; the other 3 are still parked" in told
    # Dismissed: two gone; replayed with the gate shut: refused again, all five still parked.
    assert len(left) == (3 if action == "dismiss-all" else 5)


async def test_a_reactions_page_labels_its_counters_for_what_they_are_not_as_parked_commands_replayed(
    tmp_path: Path,
) -> None:
    """GetReaction.replayed counts commands sent again and answered from
    their record; the page said "N parked, 0 replayed so far" after a parked
    command was replayed. Now the replay shows in the row, and the counters
    say what they count."""
    async with served(with_auth(tmp_path)) as app:
        address = address_of(app)
        root = await cookie_of(address, ROOT_KEY)
        page = "/reactions/" + RELAY
        async with connect(app.address, interceptors=bearer(ROOT_KEY)) as client:
            await park(client, ["n1"])

            async def parked() -> bool:
                return "none parked" not in (await get(address, page, root)).text

            await eventually(parked, what="a command parked")
            shown = (await get(address, page, root)).text
            (command_id,) = [text_of(row[2]) for row in rows(shown, "parked")]
            replayed = await post(address, page + "/replay", root, csrf_token=csrf_of(shown), command_id=command_id)
            after = (await get(address, page, root)).text
    assert replayed.status == 303
    (row,) = rows(after, "parked")
    assert text_of(row[6]) == "1"  # replayed once, refused again: still parked
    summary = text_of(re.search(r'<p class="summary" id="reaction-summary">(.*?)</p>', after, re.S).group(1))  # type: ignore[union-attr]
    counters = text_of(re.search(r'<p class="summary" id="reaction-counters">(.*?)</p>', after, re.S).group(1))  # type: ignore[union-attr]
    assert "1 command(s) parked" in summary and "replayed so far" not in summary
    assert "On this replica since it started:" in counters
    assert "0 sent again and answered from their command record" in counters
    assert "refused (0 of those ignored as harmless by its on_refused)" in counters


# -- forgotten aggregates ------------------------------------------------------------------------


async def test_nothing_parked_of_a_forgotten_aggregate_is_shown(tmp_path: Path) -> None:
    keys = write(tmp_path / "master.keys", f"k1:{new_master_key()}\n")
    async with running_server(
        MemoryStore(),
        registry=REGISTRY,
        master_key_file=keys,
        anonymous_admin=True,
        console_listen="127.0.0.1:0",
        poll_seconds=0.05,
    ) as (app, client):
        address = address_of(app)
        await client.submit(command("acc-boom", bank.OpenAccount(owner="boom Jane Doe")))
        await client.submit(command("acc-fine", bank.OpenAccount(owner="ann")))
        await client.submit(command("acc-fine", bank.Deposit(amount=1)))
        await park(client, ["Jane Doe"])

        async def both_parked() -> bool:
            events = (await get(address, "/projections/parking.deposits")).text
            commands = (await get(address, "/reactions/" + RELAY)).text
            return "Jane Doe" in events and "Jane Doe" in commands

        await eventually(both_parked, what="an event and a command quoting Jane Doe parked")
        for forgotten in ("acc-boom", "source"):
            await client.admin.ForgetAggregate(admin_pb.ForgetAggregateRequest(aggregate_id=forgotten), timeout=10)
        events = await get(address, "/projections/parking.deposits")
        commands = await get(address, "/reactions/" + RELAY)
        status = await client.reactions.GetReaction(reactions_pb.GetReactionRequest(name=RELAY))
    assert events.status == 200 and "Jane Doe" not in events.text
    assert [text_of(row[1]) for row in rows(events.text, "parked")] == ["acc-fine"]
    assert commands.status == 200 and "Jane Doe" not in commands.text and "none parked" in commands.text
    assert status.parked == 0
