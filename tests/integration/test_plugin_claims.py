"""docs/plugins.md, claim by claim, where no other test held it to its word:
what a handler gets and may return, as a client sees it over a real socket;
loading and its refusals; the scaffold; the plugin test helpers
(``Scenario``, ``ReactionRun``); reading old events through upcasters;
reactions' commands and refusals; plugin middleware; documented defaults."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
import uuid
from collections.abc import Awaitable
from contextvars import ContextVar
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import projection_service_pb2 as proj
from domain_plugins import bank_account, box
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2
from domain_plugins.users.protos.users.v1 import users_pb2 as users
from service.app import describe, start
from service.errors import ConfigurationError, HandlerFailed, Overloaded
from service.plugins import (
    CommandCall,
    CommandContext,
    Documents,
    Middleware,
    NotFoundError,
    Plugin,
    ProjectedEvent,
    Refusal,
    Send,
    ValidationError,
)
from service.plugins.reactions import MAX_ROUNDS, REACTION_NAMESPACE, command_id_for
from service.plugins.registry import Registry
from service.processing.commands import CommandRequest, CommandResult
from service.processing.executor import CommandExecutor
from service.processing.reactions import ReactionRunner
from service.processing.router import Router
from service.scaffold import new_plugin, next_steps
from service.settings import Settings, settings_from
from service.store.base import Store
from service.store.memory import MemoryStore
from service.store.records import NewEvent
from service.testing import ReactionRun, Scenario, ScenarioFailed
from tests.support import plugins
from tests.support.events import new_event
from tests.support.grpc_client import TEST_SETTINGS, command, connect, details_of, running_server
from tests.support.security import POLICY, api_key_file, bearer, write
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]


async def refusal(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    """The error a call the server refuses ends with."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


# -- what a handler gets and may return, over a real socket ------------------------
#
# "probe": CreateBox appends two events (a list); BoxCreated's apply function
# returns a new state, BoxArchived's changes it in place. RenameBox to the
# current name returns None. Every handler call leaves its context here.

probe = Plugin("probe")
probed = probe.aggregate("Probe", state=box_pb2.Box)
contexts: dict[str, CommandContext] = {}


@probed.command(box_pb2.CreateBox)
def create_probe(command: box_pb2.CreateBox, state: box_pb2.Box, context: CommandContext) -> list[Message]:
    contexts[context.command_id] = context
    return [box_pb2.BoxCreated(name=command.name), box_pb2.BoxArchived()]


@probed.command(box_pb2.RenameBox)
def rename_probe(command: box_pb2.RenameBox, state: box_pb2.Box, context: CommandContext) -> box_pb2.BoxRenamed | None:
    contexts[context.command_id] = context
    return None if command.name == state.name else box_pb2.BoxRenamed(name=command.name)


@probed.apply(box_pb2.BoxCreated)
def _probe_created(state: box_pb2.Box, event: box_pb2.BoxCreated) -> box_pb2.Box:
    return box_pb2.Box(name=event.name)  # a new message, not a change in place


@probed.apply(box_pb2.BoxArchived)
def _probe_archived(state: box_pb2.Box, event: box_pb2.BoxArchived) -> None:
    state.archived = True


@probed.apply(box_pb2.BoxRenamed)
def _probe_renamed(state: box_pb2.Box, event: box_pb2.BoxRenamed) -> None:
    state.name = event.name


async def test_a_handler_gets_the_command_s_context_and_may_return_a_list_or_none() -> None:
    issued = datetime(2025, 6, 1, 12, 0, 0, 250_000, tzinfo=UTC)
    async with running_server(MemoryStore(), registry=Registry([probe]), anonymous_admin=True) as (_, client):
        created = command(
            "probe-1", box_pb2.CreateBox(name="tools"), origin="importer", user_id="ann", metadata={"tenant": "t-1"}
        )
        created.timestamp.FromDatetime(issued)
        response = await client.submit(created)
        unstamped = command("probe-1", box_pb2.RenameBox(name="tools"))
        before = datetime.now(UTC)
        unchanged = await client.submit(unstamped)
        after = datetime.now(UTC)
        state = await client.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="probe-1"))
        audit = await client.admin.QueryAudit(admin.QueryAuditRequest(aggregate_id="probe-1"))
    first, second = contexts[created.command_id], contexts[unstamped.command_id]
    assert (first.aggregate_id, first.aggregate_type, first.version, first.is_new) == ("probe-1", "Probe", 0, True)
    assert (first.user_id, first.origin, dict(first.metadata)) == ("ann", "importer", {"tenant": "t-1"})
    assert first.timestamp == issued  # the client's Command.timestamp
    # A list of events is appended in order; None appends nothing.
    assert [e.event_type for e in response.events] == ["box.v1.BoxCreated", "box.v1.BoxArchived"]
    assert (second.version, second.is_new) == (2, False)
    assert (unchanged.version, list(unchanged.events)) == (2, [])
    # Without a client timestamp: when the server received the command.
    assert before - timedelta(milliseconds=1) <= second.timestamp <= after + timedelta(milliseconds=1)
    # Both kinds of apply function made the state.
    current = box_pb2.Box()
    assert state.state.Unpack(current) and current == box_pb2.Box(name="tools", archived=True)
    # The command's time is kept with its record and shown by the audit.
    (entry,) = [e for e in audit.entries if e.command_id == created.command_id]
    assert entry.issued_at.ToDatetime(tzinfo=UTC) == issued


async def test_existence_refusals_have_the_aggregate_s_reasons_and_are_recorded() -> None:
    async with running_server(MemoryStore(), registry=Registry([box.plugin])) as (_, client):
        rename = command("box-1", box_pb2.RenameBox(name="junk"))
        missing = details_of(await refusal(client.submit(rename)))
        await client.submit(command("box-1", box_pb2.CreateBox(name="tools")))
        twice = details_of(await refusal(client.submit(command("box-1", box_pb2.CreateBox(name="other")))))
        # The same command id again, now that the box exists: refused the same way.
        again = details_of(await refusal(client.submit(rename)))
        events = [e async for e in client.events.ReadAggregate(ev.ReadAggregateRequest(aggregate_id="box-1"))]
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "BOX_NOT_FOUND")
    assert (twice.code, twice.reason) == (grpc.StatusCode.ALREADY_EXISTS, "BOX_ALREADY_EXISTS")
    assert (again.code, again.reason) == (grpc.StatusCode.NOT_FOUND, "BOX_NOT_FOUND")
    assert [e.event_type for e in events] == ["box.v1.BoxCreated"]


async def test_a_handler_that_raises_is_internal_writes_nothing_and_its_worker_goes_on() -> None:
    async with running_server(MemoryStore(), registry=Registry([plugins.faulty])) as (_, client):
        await client.submit(command("w-1", bank.Deposit(amount=5)))
        failed = details_of(await refusal(client.submit(command("w-1", bank.Deposit(amount=plugins.FAIL_AMOUNT)))))
        after = await client.submit(command("w-1", bank.Deposit(amount=6)))
        events = [e async for e in client.events.ReadAggregate(ev.ReadAggregateRequest(aggregate_id="w-1"))]
    assert failed.code == grpc.StatusCode.INTERNAL
    assert after.version == 2
    assert [e.version for e in events] == [1, 2]


# -- in process: events of another aggregate type, lookups, claims ------------------

two_kinds = Plugin("two_kinds")
left = two_kinds.aggregate("Left", state=box_pb2.Box)
right = two_kinds.aggregate("Right", state=box_pb2.Box)


@left.command(box_pb2.CreateBox)
def create_left(command: box_pb2.CreateBox, state: box_pb2.Box, context: CommandContext) -> box_pb2.BoxCreated:
    return box_pb2.BoxCreated(name=command.name)


@left.command(box_pb2.ArchiveBox)
def archive_left(command: box_pb2.ArchiveBox, state: box_pb2.Box, context: CommandContext) -> box_pb2.BoxArchived:
    return box_pb2.BoxArchived()  # an event of Right's, not of Left's


@left.apply(box_pb2.BoxCreated)
def _left_created(state: box_pb2.Box, event: box_pb2.BoxCreated) -> None:
    state.name = event.name


@right.apply(box_pb2.BoxArchived)
def _right_archived(state: box_pb2.Box, event: box_pb2.BoxArchived) -> None:
    state.archived = True


def test_an_event_registered_on_another_aggregate_type_is_refused() -> None:
    Scenario(two_kinds).when(box_pb2.CreateBox(name="x")).then(box_pb2.BoxCreated(name="x"))
    Scenario(two_kinds).given(box_pb2.BoxCreated(name="x")).when(box_pb2.ArchiveBox()).then_fails(
        HandlerFailed, reason="UNREGISTERED_EVENT"
    )


# "shelves": a shelf stands on a box (another aggregate, of type Box), and
# holds slots (values claimed in "shelves.slot").
SLOTS = "shelves.slot"
shelves = Plugin("shelves")
shelf = shelves.aggregate("Shelf", state=bank.Account)


@shelf.command(bank.OpenAccount)
def put_up(command: bank.OpenAccount, state: bank.Account, context: CommandContext) -> bank.AccountOpened:
    if not context.exists("Box", command.owner):
        raise NotFoundError(f"no box {command.owner!r}", reason="NO_BOX")
    return bank.AccountOpened(owner=command.owner)


@shelf.command(bank.Deposit)
def take_slot(command: bank.Deposit, state: bank.Account, context: CommandContext) -> bank.MoneyDeposited:
    context.claim(SLOTS, str(command.amount))
    return bank.MoneyDeposited(amount=command.amount)


@shelf.command(bank.Withdraw)
def free_slot(command: bank.Withdraw, state: bank.Account, context: CommandContext) -> bank.MoneyWithdrawn:
    context.release(SLOTS, str(command.amount))
    return bank.MoneyWithdrawn(amount=command.amount)


@shelf.apply(bank.AccountOpened)
def _put_up(state: bank.Account, event: bank.AccountOpened) -> None:
    state.owner = event.owner


@shelf.apply(bank.MoneyDeposited)
def _slot_taken(state: bank.Account, event: bank.MoneyDeposited) -> None:
    state.balance += 1


@shelf.apply(bank.MoneyWithdrawn)
def _slot_freed(state: bank.Account, event: bank.MoneyWithdrawn) -> None:
    state.balance -= 1


def test_given_aggregate_makes_another_aggregate_exist_and_only_as_its_type() -> None:
    def shelf_on(box_id: str) -> Scenario:
        return Scenario(box.plugin, shelves, aggregate_id="shelf-1").when(bank.OpenAccount(owner=box_id))

    shelf_on("box-1").then_fails(NotFoundError, reason="NO_BOX")
    shelf_on("box-1").given_aggregate("box-1", box_pb2.BoxCreated(name="tools")).then(bank.AccountOpened(owner="box-1"))
    # shelf-2 exists, as a Shelf: it is no Box.
    shelf_on("shelf-2").given_aggregate("shelf-2", bank.AccountOpened(owner="box-9")).then_fails(
        NotFoundError, reason="NO_BOX"
    )


def test_claiming_a_value_held_already_and_releasing_one_not_held_are_fine() -> None:
    def on_shelf() -> Scenario:
        return Scenario(shelves, aggregate_id="shelf-1").given(bank.AccountOpened(owner="box-1"))

    held = on_shelf().given_claim(SLOTS, "5", owner="shelf-1").when(bank.Deposit(amount=5))
    held.then(bank.MoneyDeposited(amount=5))
    assert held.owner_of(SLOTS, "5") == "shelf-1"
    others = on_shelf().given_claim(SLOTS, "7", owner="shelf-2").when(bank.Withdraw(amount=7))
    others.then(bank.MoneyWithdrawn(amount=7))
    assert others.owner_of(SLOTS, "7") == "shelf-2"  # not this shelf's to release


# -- Scenario's own promises -------------------------------------------------------


def guide_block(containing: str) -> str:
    """The python block of docs/plugins.md that contains ``containing``."""
    guide = (ROOT / "docs" / "plugins.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```$", guide, flags=re.MULTILINE | re.DOTALL)
    (block,) = [b for b in blocks if containing in b]
    return str(block)


def test_the_guide_s_test_examples_pass_as_written() -> None:
    scenario: dict[str, object] = {"Scenario": Scenario, "ValidationError": ValidationError}
    boxes = {**scenario, "plugin": box.plugin, "pb": box_pb2}
    exec(guide_block("def test_an_archived_box_cannot_be_renamed"), boxes)
    accounts = {**scenario, "plugin": bank_account.plugin, "bank": bank}
    exec(guide_block("def test_a_closed_account_refuses_deposits_over_grpc"), accounts)
    for name, test in [*boxes.items(), *accounts.items()]:
        if name.startswith("test_") and callable(test):
            test()
    exec(
        guide_block("with ReactionRun(bank_account.plugin)"),
        {"ReactionRun": ReactionRun, "bank_account": bank_account, "bank": bank},
    )


def test_then_fails_on_a_command_that_succeeds_fails_the_scenario_saying_what_it_appended() -> None:
    with pytest.raises(ScenarioFailed, match=r"expected ValidationError, the command appended \[BoxCreated"):
        Scenario(box.plugin).when(box_pb2.CreateBox(name="x")).then_fails(ValidationError)


def test_time_is_set_in_process_only_a_server_keeps_its_own_clock() -> None:
    new_year = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ScenarioFailed, match="a server keeps its own clock"):
        Scenario(box.plugin).on_server().at(new_year).when(box_pb2.CreateBox(name="x")).then(
            box_pb2.BoxCreated(name="x")
        )
    with pytest.raises(ScenarioFailed, match="a server keeps its own clock"):
        Scenario(box.plugin).on_server().when(box_pb2.CreateBox(name="x"), timestamp=new_year).then(
            box_pb2.BoxCreated(name="x")
        )


# -- loading: where plugins come from, what is refused, what is listed -------------

box_copycat = Plugin("box_copycat")
crate = box_copycat.aggregate("Crate", state=box_pb2.Box)
crate.apply(box_pb2.BoxCreated)(lambda state, event: None)  # box.v1.BoxCreated is the box plugin's

views_one, views_two = Plugin("views_one"), Plugin("views_two")
views_one.projection("shared.view")
views_two.projection("shared.view")


async def test_two_plugins_claiming_one_event_type_are_refused_at_start_up_naming_both() -> None:
    settings = settings_from(
        [
            "--listen=127.0.0.1:0",
            "--no-discover-plugins",
            "--plugin=domain_plugins.box",
            f"--plugin={__name__}:box_copycat",
        ],
        {},
    )
    with pytest.raises(ConfigurationError) as refused:
        await start(settings, store=MemoryStore())
    assert refused.value.reason == "DUPLICATE_REGISTRATION"
    assert "box.v1.BoxCreated" in refused.value.message
    assert "'box'" in refused.value.message and "'box_copycat'" in refused.value.message


async def test_a_server_logs_the_warnings_chronicle_plugins_prints(caplog: pytest.LogCaptureFixture) -> None:
    settings = settings_from(
        ["--listen=127.0.0.1:0", "--no-discover-plugins", "--plugin=tests.support.plugins:ledger"], {}
    )
    with caplog.at_level(logging.WARNING, logger="chronicle"):
        app = await start(settings, store=MemoryStore())
        await app.stop()
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("plugins: ")]
    assert len(warned) == 1
    assert "plugin 'ledger' applies bank.v1.AccountClosed at schema version 2" in warned[0]


def test_two_plugins_declaring_one_projection_are_refused_naming_both() -> None:
    with pytest.raises(ConfigurationError) as refused:
        Registry([views_one, views_two])
    assert refused.value.reason == "DUPLICATE_REGISTRATION"
    assert "views_one" in refused.value.message and "views_two" in refused.value.message


def test_plugins_named_by_flag_or_by_chronicle_plugins_are_loaded() -> None:
    from service.app import build_registry

    by_variable = settings_from(
        [], {"CHRONICLE_PLUGINS": "domain_plugins.box,domain_plugins.users", "CHRONICLE_DISCOVER_PLUGINS": "false"}
    )
    by_flag = settings_from(["--plugin", "domain_plugins.box", "--no-discover-plugins"], {})
    assert [p.name for p in build_registry(by_variable).plugins] == ["box", "users"]
    assert [p.name for p in build_registry(by_flag).plugins] == ["box"]


def test_chronicle_plugins_lists_apply_functions_schema_versions_and_upcasters() -> None:
    listed = subprocess.run(
        [
            sys.executable,
            "-m",
            "service",
            "plugins",
            "--plugin",
            "tests.support.plugins:ledger",
            "--no-discover-plugins",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    (plugin,) = [json.loads(line) for line in listed.stdout.splitlines()]
    (book,) = plugin["aggregates"]
    assert (plugin["plugin"], book["aggregate_type"]) == ("ledger", "Book")
    assert book["commands"] == {"bank.v1.Deposit": "deposit_cents"}
    assert book["events"]["bank.v1.MoneyDeposited"] == {"apply": "_book_deposited", "schema_version": 2}
    assert book["upcasters"] == sorted(
        [
            "bank.v1.MoneyDeposited v1",
            "bank.v1.AccountOpened v1",
            "bank.v1.AccountOpened v2",
            "legacy.v1.OwnerChanged v1",
            "legacy.v1.AuditNote v1",
        ]
    )


async def test_the_server_s_first_lines_list_each_plugin_with_its_command_types() -> None:
    async with running_server(MemoryStore(), registry=Registry([box.plugin])) as (app, _):
        lines = describe(app).splitlines()
    at = lines.index("  plugin box")
    assert lines[at + 1] == "    Box: box.v1.ArchiveBox, box.v1.CreateBox, box.v1.RenameBox"


# -- the scaffold ------------------------------------------------------------------


def test_new_plugin_writes_the_files_the_guide_names_in_each_spelling_of_the_name(tmp_path: Path) -> None:
    made = new_plugin("library", into=Path("domain_plugins"), root=tmp_path)
    written = {path.relative_to(tmp_path).as_posix() for path in made}
    folder = "domain_plugins/library"
    assert {
        f"{folder}/__init__.py",
        f"{folder}/domain.py",
        f"{folder}/protos/library/v1/library.proto",
        f"{folder}/tests/test_rules.py",
    } <= written
    proto = (tmp_path / folder / "protos/library/v1/library.proto").read_text()
    domain = (tmp_path / folder / "domain.py").read_text()
    tests = (tmp_path / folder / "tests/test_rules.py").read_text()
    assert "package library.v1;" in proto
    assert "message CreateLibrary {" in proto and "message LibraryCreated {" in proto
    assert 'plugin = Plugin("library"' in domain and '"Library",' in domain
    assert 'not_found="LIBRARY_NOT_FOUND"' in domain
    assert "plugin" in (tmp_path / folder / "__init__.py").read_text()
    assert ".on_server()" in tests  # one test on a real server
    elsewhere = next_steps("library", Path("my_plugins"), [])
    assert "python -m grpc_tools.protoc" in elsewhere and "my_plugins/library/protos" in elsewhere


# -- upcasting on every read: subscriptions and projections too ---------------------

ledger_view = Plugin("ledger_view")
deposits = ledger_view.projection("ledger_view.deposits", aggregate_types=["Book"])


@deposits.on(bank.MoneyDeposited)
def _count_deposit(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Documents) -> None:
    total = documents.get("total", bank.AccountBalance) or bank.AccountBalance()
    total.balance += event.amount
    documents.put("total", total)


async def test_subscriptions_and_projections_get_old_events_at_the_current_schema() -> None:
    store = MemoryStore()
    old = new_event(
        "bank.v1.MoneyDeposited",
        aggregate_type="Book",
        payload=bank.MoneyDeposited(amount=3).SerializeToString(),  # v1: whole units
        schema_version=1,
    )
    (stored,) = await store.append("book-1", [old], 0)
    registry = Registry([plugins.ledger, ledger_view])
    async with running_server(store, registry=registry, poll_seconds=0.05) as (_, client):
        stream = client.events.Subscribe(ev.SubscribeRequest())
        try:
            first = await asyncio.wait_for(stream.read(), timeout=20)
        finally:
            stream.cancel()
        document = await client.projections.GetDocument(
            proj.GetDocumentRequest(projection="ledger_view.deposits", key="total", min_position=stored.position),
            timeout=10,
        )
    assert isinstance(first, ev.SubscribeResponse) and first.HasField("event")
    deposited = bank.MoneyDeposited()
    assert first.event.payload.Unpack(deposited)
    assert (first.event.schema_version, deposited.amount) == (2, 300)
    total = bank.AccountBalance()
    # A new read model applies the log from its start, old events upcast.
    assert document.document.Unpack(total) and total.balance == 300


async def test_an_event_no_plugin_reads_or_without_a_step_is_an_error_naming_it_never_skipped() -> None:
    store = MemoryStore()

    def opened() -> NewEvent:
        owner = bank.AccountOpened(owner="ann").SerializeToString()
        return new_event("bank.v1.AccountOpened", aggregate_type="Book", payload=owner, schema_version=3)

    unknown = new_event("legacy.v1.Unknown", aggregate_type="Book", payload=b"", schema_version=1)
    no_step = new_event(
        "bank.v1.AccountClosed", aggregate_type="Book", payload=b"", schema_version=1
    )  # no upcaster from v1
    await store.append("book-1", [opened(), unknown], 0)
    await store.append("book-2", [opened(), no_step], 0)
    found = []
    async with running_server(store, registry=Registry([plugins.ledger])) as (_, client):
        for book in ("book-1", "book-2"):
            get = client.events.GetAggregate(ev.GetAggregateRequest(aggregate_id=book))
            found.append(details_of(await refusal(get)))
            found.append(details_of(await refusal(client.submit(command(book, bank.Deposit(amount=1))))))
    assert [(d.code, d.reason) for d in found] == [(grpc.StatusCode.FAILED_PRECONDITION, "UNKNOWN_EVENT_TYPE")] * 2 + [
        (grpc.StatusCode.FAILED_PRECONDITION, "UNSUPPORTED_SCHEMA_VERSION")
    ] * 2
    assert {(d.metadata["aggregate_id"], d.metadata["version"]) for d in found} == {("book-1", "2"), ("book-2", "2")}


# -- reading documents: pages ------------------------------------------------------

shelving = Plugin("shelving")
many = shelving.projection("shelving.many", aggregate_types=["Box"])


@many.on(box_pb2.BoxCreated)
def _hundred_and_one(event: box_pb2.BoxCreated, envelope: ProjectedEvent, documents: Documents) -> None:
    for i in range(101):
        documents.put(f"doc:{i:03}", box_pb2.Box(name=f"{event.name}-{i}"))


async def test_list_documents_gives_a_hundred_a_page_unless_asked() -> None:
    async with running_server(MemoryStore(), registry=Registry([box.plugin, shelving])) as (_, client):
        created = await client.submit(command("box-1", box_pb2.CreateBox(name="tools")))
        request = proj.ListDocumentsRequest(
            projection="shelving.many", key_prefix="doc:", min_position=created.events[-1].position
        )
        first = await client.projections.ListDocuments(request, timeout=10)
        request.page_token = first.next_page_token
        second = await client.projections.ListDocuments(request, timeout=10)
    assert len(first.documents) == 100 and first.next_page_token
    assert [d.key for d in second.documents] == ["doc:100"] and second.next_page_token == ""


# -- reactions, run by service.testing.ReactionRun -----------------------------------
#
# "echo": lists that take any name but those starting with "refuse"; "Other"
# aggregates that take only CreateBox.

echo = Plugin("echo")
echoed = echo.aggregate("Echo", state=box_pb2.Box)
other = echo.aggregate("Other", state=box_pb2.Box)


@echoed.command(box_pb2.RenameBox)
def echo_name(command: box_pb2.RenameBox, state: box_pb2.Box, context: CommandContext) -> box_pb2.BoxRenamed:
    if command.name.startswith("refuse"):
        raise ValidationError("refused on purpose", reason="REFUSED")
    return box_pb2.BoxRenamed(name=command.name)


@echoed.apply(box_pb2.BoxRenamed)
def _echoed(state: box_pb2.Box, event: box_pb2.BoxRenamed) -> None:
    state.name = event.name


@other.command(box_pb2.CreateBox)
def create_other(command: box_pb2.CreateBox, state: box_pb2.Box, context: CommandContext) -> box_pb2.BoxCreated:
    return box_pb2.BoxCreated(name=command.name)


@other.apply(box_pb2.BoxCreated)
def _other_created(state: box_pb2.Box, event: box_pb2.BoxCreated) -> None:
    state.name = event.name


tagging = Plugin("tagging")
tags = tagging.reaction("tagging.tags", aggregate_types=["Echo"])


@tags.on(box_pb2.BoxRenamed)
def tag(event: box_pb2.BoxRenamed, envelope: ProjectedEvent, state: None) -> Send | None:
    if envelope.aggregate_id == "start":
        return Send("middle", box_pb2.RenameBox(name="m"), metadata={"first": "1"})
    if envelope.aggregate_id == "middle":
        return Send("end", box_pb2.RenameBox(name="e"), metadata={"second": "2"})
    return None


def test_a_reaction_s_command_carries_the_event_s_metadata_plus_the_send_s() -> None:
    with ReactionRun(echo, tagging) as run:
        run.submit("start", box_pb2.RenameBox(name="s"))
        run.settle()
        (middle,) = asyncio.run(run.store.read_aggregate("middle"))
        (end,) = asyncio.run(run.store.read_aggregate("end"))
    # And the chain's reaction hops (docs/plugins.md, "Loops").
    assert dict(middle.metadata) == {"first": "1", "chronicle.reaction_hops": "1"}
    assert dict(end.metadata) == {"first": "1", "second": "2", "chronicle.reaction_hops": "2"}


async def test_a_full_queue_pauses_a_reaction_which_sends_its_batch_again() -> None:
    store = MemoryStore()
    registry = Registry([echo, tagging])
    roles = Store.of(store)
    executor = CommandExecutor(roles, registry)
    router = Router(executor)
    attempts: list[str] = []

    async def full_once(request: CommandRequest) -> CommandResult:
        attempts.append(request.command_id)
        if len(attempts) == 1:
            raise Overloaded("the aggregate's queue is full", reason="AGGREGATE_QUEUE_FULL")
        return await router.submit(request)

    spec = registry.command("box.v1.RenameBox")
    assert spec is not None
    await router.submit(
        CommandRequest(
            command_id=str(uuid.uuid4()), aggregate_id="start", spec=spec, message=box_pb2.RenameBox(name="s")
        )
    )
    runner = ReactionRunner(
        tags,
        registry=registry,
        submit=full_once,
        log=roles.log,
        documents=roles.projections,
        reader=executor.loader.reader,
        poll_interval=0.01,
        retry_interval=0.01,
    )
    runner.start()
    try:
        await eventually(lambda: len(attempts) >= 2 and runner.status.accepted >= 1, what="the batch sent again")
    finally:
        await runner.stop()
        await router.close()
    assert attempts[0] == attempts[1]  # the same command, under the same id
    assert [e.event_type for e in await store.read_aggregate("middle")] == ["box.v1.BoxRenamed"]
    assert runner.status.parked == 0


misdirecting = Plugin("misdirecting")
misdirected = misdirecting.reaction("misdirecting.sends", aggregate_types=["Echo"])
handed_back: list[Refusal] = []


@misdirected.on(box_pb2.BoxRenamed)
def misdirect(event: box_pb2.BoxRenamed, envelope: ProjectedEvent, state: None) -> list[Send]:
    if envelope.aggregate_id != "misdirect":
        return []
    return [
        Send("user-1", users.RegisterUser(email="ann@example.com", name="Ann")),  # no plugin here takes it
        Send("", box_pb2.RenameBox(name="x")),  # no aggregate id
        Send("other-1", box_pb2.RenameBox(name="y")),  # an Other, not an Echo
    ]


@misdirected.on_refused
def note_refusal(refusal: Refusal, envelope: ProjectedEvent, state: None) -> None:
    handed_back.append(refusal)  # and nothing sent: parked


def test_commands_no_aggregate_can_take_are_handed_to_on_refused_then_parked() -> None:
    handed_back.clear()
    with ReactionRun(echo, misdirecting) as run:
        run.submit("other-1", box_pb2.CreateBox(name="o"))
        run.submit("misdirect", box_pb2.RenameBox(name="go"))
        run.settle()
        parked = run.parked("misdirecting.sends")
    expected = ["UNKNOWN_COMMAND_TYPE", "INVALID_AGGREGATE_ID", "AGGREGATE_TYPE_MISMATCH"]
    assert [r.reason for r in handed_back] == expected
    assert sorted(p.reason for p in parked) == sorted(expected)


retrying = Plugin("retrying")
retries = retrying.reaction("retrying.once", aggregate_types=["Echo"])
stubborn = retrying.reaction("retrying.stubborn", aggregate_types=["Echo"])
compensations: list[str] = []


@retries.on(box_pb2.BoxRenamed)
def ask(event: box_pb2.BoxRenamed, envelope: ProjectedEvent, state: None) -> Send | None:
    return Send("target", box_pb2.RenameBox(name="refuse once")) if envelope.aggregate_id == "ask" else None


@retries.on_refused
def accept_instead(refusal: Refusal, envelope: ProjectedEvent, state: None) -> Send:
    return Send("target", box_pb2.RenameBox(name="accepted"))


@stubborn.on(box_pb2.BoxRenamed)
def insist(event: box_pb2.BoxRenamed, envelope: ProjectedEvent, state: None) -> Send | None:
    return Send("wall", box_pb2.RenameBox(name="refuse")) if envelope.aggregate_id == "insist" else None


@stubborn.on_refused
def insist_again(refusal: Refusal, envelope: ProjectedEvent, state: None) -> Send:
    compensations.append(refusal.command_id)
    return Send("wall", box_pb2.RenameBox(name=f"refuse {len(compensations)}"))


def test_what_on_refused_sends_goes_under_an_id_derived_from_the_refused_command() -> None:
    with ReactionRun(echo, retrying) as run:
        run.submit("ask", box_pb2.RenameBox(name="please"))
        run.settle()
        (cause,) = asyncio.run(run.store.read_aggregate("ask"))
        (accepted,) = asyncio.run(run.store.read_aggregate("target"))
    refused_id = str(uuid.uuid5(REACTION_NAMESPACE, f"retrying.once/{cause.event_id}/0"))
    assert refused_id == command_id_for(f"retrying.once/{cause.event_id}", 0)
    assert accepted.command_id == str(uuid.uuid5(REACTION_NAMESPACE, f"{refused_id}/0"))
    assert accepted.causation_id == cause.event_id


def test_a_command_is_parked_after_eight_compensations_refused_in_a_row() -> None:
    compensations.clear()
    with ReactionRun(echo, retrying) as run:
        run.submit("insist", box_pb2.RenameBox(name="go"))
        run.settle()
        (parked,) = run.parked("retrying.stubborn")
    assert len(compensations) == MAX_ROUNDS == 8
    assert box_pb2.RenameBox.FromString(parked.command.value).name == "refuse 8"  # the last compensation


counting = Plugin("counting")
keyless = counting.reaction("counting.keyless", aggregate_types=["Echo"], state=box_pb2.Box, state_key=lambda e: "")
keyed = counting.reaction("counting.keyed", aggregate_types=["Echo"], state=box_pb2.Box, state_key=lambda e: "k")
states_seen: dict[str, list[str]] = {"counting.keyless": [], "counting.keyed": []}


@keyless.on(box_pb2.BoxRenamed)
def count_keyless(event: box_pb2.BoxRenamed, envelope: ProjectedEvent, state: box_pb2.Box) -> None:
    states_seen["counting.keyless"].append(state.name)
    state.name += "x"


@keyed.on(box_pb2.BoxRenamed)
def count_keyed(event: box_pb2.BoxRenamed, envelope: ProjectedEvent, state: box_pb2.Box) -> None:
    states_seen["counting.keyed"].append(state.name)
    state.name += "x"


def test_an_empty_state_key_gives_a_new_state_that_is_not_kept() -> None:
    for seen in states_seen.values():
        seen.clear()
    with ReactionRun(echo, counting) as run:
        for name in ("a", "b", "c"):
            run.submit("list", box_pb2.RenameBox(name=name))
        run.settle()
        kept = asyncio.run(run.store.load_document("counting.keyed", "state:k"))
        not_kept = asyncio.run(run.store.load_document("counting.keyless", "state:"))
    assert states_seen == {"counting.keyless": ["", "", ""], "counting.keyed": ["", "x", "xx"]}
    assert kept is not None and not_kept is None


# -- plugin middleware -------------------------------------------------------------

order: dict[str, list[str]] = {}


class Named(Middleware):
    """Notes, per command, when its plain hooks ran."""

    def __init__(self, name: str) -> None:
        self.name = name

    def before(self, call: CommandCall) -> None:
        order.setdefault(call.command_id, []).append(f"before {self.name}")

    def after(self, call: CommandCall) -> None:
        order.setdefault(call.command_id, []).append(f"after {self.name}")


async def test_plugin_middleware_runs_in_plugin_load_order_then_in_the_order_added() -> None:
    first, second = Plugin("mw_first"), Plugin("mw_second")
    first.add_middleware(Named("a"))
    first.add_middleware(Named("b"))
    second.add_middleware(Named("c"))
    registry = Registry([bank_account.plugin, second, first])  # second loads before first
    async with running_server(MemoryStore(), registry=registry) as (_, client):
        sent = command("acc-1", bank.OpenAccount(owner="ann"))
        await client.submit(sent)
    assert order[sent.command_id] == ["before c", "before a", "before b", "after b", "after a", "after c"]


class Recorder(Middleware):
    name = "recorder"

    def __init__(self) -> None:
        self.before_ids: list[str] = []
        self.error_ids: list[str] = []

    def before(self, call: CommandCall) -> None:
        self.before_ids.append(call.command_id)

    def on_error(self, call: CommandCall) -> None:
        self.error_ids.append(call.command_id)


ALICE_KEY = "plugin-claims-alice-0123456789abcdef"
BOB_KEY = "plugin-claims-bob-0123456789abcdef"


async def test_plugin_middleware_sees_only_authorized_commands(tmp_path: Path) -> None:
    watching = Plugin("watching")
    recorder = watching.add_middleware(Recorder())
    assert isinstance(recorder, Recorder)
    settings = replace(
        TEST_SETTINGS,
        auth=True,
        policy_file=write(tmp_path / "policy.toml", POLICY),
        api_keys_file=api_key_file(
            tmp_path / "keys.toml", [(ALICE_KEY, "alice", ["teller"]), (BOB_KEY, "bob", ["boxer"])]
        ),
    )
    registry = Registry([bank_account.plugin, watching])
    async with running_server(MemoryStore(), settings=settings, registry=registry) as (app, _):
        async with connect(app.address, interceptors=bearer(ALICE_KEY)) as alice:
            allowed = command("acc-1", bank.OpenAccount(owner="alice"), user_id="")
            await alice.submit(allowed)
        async with connect(app.address, interceptors=bearer(BOB_KEY)) as bob:
            denied = command("acc-2", bank.OpenAccount(owner="bob"), user_id="")
            refused = details_of(await refusal(bob.submit(denied)))
    assert refused.code == grpc.StatusCode.PERMISSION_DENIED
    assert (recorder.before_ids, recorder.error_ids) == ([allowed.command_id], [])


call_id: ContextVar[str] = ContextVar("call_id", default="")


class PerCall(Middleware):
    """Keeps per-call state in a ContextVar, with coroutine hooks."""

    name = "per_call"

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def before(self, call: CommandCall) -> None:
        call_id.set(call.command_id)

    async def after(self, call: CommandCall) -> None:
        self.seen.append((call.command_id, call_id.get()))

    async def on_error(self, call: CommandCall) -> None:
        self.seen.append((call.command_id, call_id.get()))


class PlainPerCall(PerCall):
    """The same with plain hooks, which the server runs inline: ``after``
    and ``on_error`` where the aggregate's worker finishes the command."""

    name = "plain_per_call"

    def before(self, call: CommandCall) -> None:  # type: ignore[override]
        call_id.set(call.command_id)

    def after(self, call: CommandCall) -> None:  # type: ignore[override]
        self.seen.append((call.command_id, call_id.get()))

    def on_error(self, call: CommandCall) -> None:  # type: ignore[override]
        self.seen.append((call.command_id, call_id.get()))


@pytest.mark.parametrize("kind", [PerCall, PlainPerCall], ids=["coroutine hooks", "plain hooks"])
async def test_the_hooks_of_one_call_share_its_context_variables(kind: type[PerCall]) -> None:
    plugin = Plugin(kind.name)
    per_call = plugin.add_middleware(kind())
    assert isinstance(per_call, kind)
    async with running_server(MemoryStore(), registry=Registry([bank_account.plugin, plugin])) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        sent = [command("acc-1", bank.Deposit(amount=1)) for _ in range(40)]
        sent += [command(f"acc-{i}", bank.OpenAccount(owner="bob")) for i in range(2, 22)]
        sent += [command("acc-1", bank.Withdraw(amount=1_000_000)) for _ in range(5)]  # refused
        outcomes = await asyncio.gather(*(client.submit(c) for c in sent), return_exceptions=True)
    assert sum(isinstance(o, grpc.aio.AioRpcError) for o in outcomes) == 5
    assert len(per_call.seen) == 66
    assert [(mine, seen) for mine, seen in per_call.seen if mine != seen] == []


# -- documented defaults and limits ------------------------------------------------


def test_the_documented_defaults_and_limits() -> None:
    from service.api.page_tokens import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
    from service.processing.reaction_documents import MAX_PARKED

    settings = Settings()
    assert (settings.keep_snapshots, settings.slow_handler_seconds, settings.loop_lag_seconds) == (3, 0.1, 0.25)
    assert settings.read_wait_seconds == 5.0
    projection = Plugin("defaults").projection("defaults.view")
    assert (projection.batch_size, projection.catch_up_batch_size, projection.cache_size) == (200, 2_000, 10_000)
    assert (projection.on_failure, projection.max_attempts, projection.retry_seconds) == ("stop", 3, 5.0)
    assert (DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, MAX_PARKED) == (100, 1_000, 1_000)
