"""``chronicle plugins --check --database-url URL`` on SQLite and on a real
PostgreSQL: the plugins about to be deployed (tests/support/plugins.py's
``ledger``, whose events changed over time, and a reaction whose state type
changed) judged against what a store holds, read only. Exit 0 when every
kind of event, every stored projection name and every reaction state is
readable; 1 with a JSON report naming each kind that is not, with the
reason a reader would fail it with (docs/plugins.md, "Before deploying")."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from chronicle.v1 import reaction_service_pb2 as reaction_pb
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.cli import main
from service.plugins import Plugin, ProjectedEvent
from service.plugins.registry import Registry
from service.processing.reaction_starts import MARKER, START_PREFIX, fix_starts
from service.store.base import StoreAdapter
from service.store.factory import open_store
from service.store.records import DocumentWrite, RecordedEvent
from tests.support.plugins import ledger

REACTION = "minding.books"
LEDGER = "tests.support.plugins:ledger"


def _minding(*, upcasts: bool) -> Plugin:
    """A reaction on Book events whose state is a ``box.CreateBox`` now (it
    was a ``box.Box``), with or without the upcaster of the old type."""
    plugin = Plugin("minding")
    reaction = plugin.reaction(
        REACTION, aggregate_types=["Book"], state=box.CreateBox, state_key=lambda e: e.aggregate_id
    )

    @reaction.on(bank.MoneyDeposited)
    def _noted(event: bank.MoneyDeposited, envelope: ProjectedEvent, state: box.CreateBox) -> None:
        state.name = envelope.aggregate_id

    if upcasts:

        @reaction.upcast_state(box.Box)
        def _from_box(old: box.Box) -> box.CreateBox:
            return box.CreateBox(name=old.name)

    return plugin


minding_without_upcaster = _minding(upcasts=False)
minding_with_upcaster = _minding(upcasts=True)

# Another aggregate type's event: one stored on a Book is no Book's to apply.
shelving = Plugin("shelving")
shelf = shelving.aggregate("Shelf", state=box.Box)


@shelf.apply(box.BoxCreated)
def _shelved(state: box.Box, event: box.BoxCreated) -> None:
    state.name = event.name


def _versioned(version: int, *, rebuild_on_change: bool = False) -> Plugin:
    """A projection of Book events, declared at ``version``."""
    plugin = Plugin("versioned")
    items = plugin.projection(
        "versioned.items", aggregate_types=["Book"], version=version, rebuild_on_change=rebuild_on_change
    )

    @items.on(bank.MoneyDeposited)
    def _deposited(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Any) -> None:
        documents.put(envelope.aggregate_id, event)

    return plugin


versioned_v1 = _versioned(1)
versioned_v2 = _versioned(2)
versioned_v2_rebuilding = _versioned(2, rebuild_on_change=True)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/events.db"
    request.applymarker(pytest.mark.postgres)
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[StoreAdapter]:
    adapter = open_store(database_url, pool_size=1)
    await adapter.open()
    yield adapter
    await adapter.close()


class Events:
    """Stored events of any kind, as an older plugin version (or another
    plugin) left them: written under the store, past any plugin's check."""

    def __init__(self) -> None:
        self.position = 0

    async def put(
        self, store: StoreAdapter, event_type: str, schema_version: int, aggregate_type: str = "Book"
    ) -> None:
        self.position += 1
        await store.import_events(
            [
                RecordedEvent(
                    event_id=f"00000000-0000-4000-8000-{self.position:012d}",
                    aggregate_id=f"{aggregate_type}-{self.position}",  # each its own aggregate
                    aggregate_type=aggregate_type,
                    version=1,
                    position=self.position,
                    event_type=event_type,
                    schema_version=schema_version,
                    payload=b"",
                    timestamp_us=1_700_000_000_000_000 + self.position,
                    command_id=f"cmd-{self.position}",
                    user_id="ann",
                    origin="test",
                    correlation_id="c",
                    causation_id="c",
                    metadata={},
                )
            ]
        )


async def check(url: str, capsys: pytest.CaptureFixture[str], *plugins: str) -> tuple[int, dict[str, Any]]:
    """The CLI's exit status and report (in a thread: it runs its own event loop)."""
    loaded = [flag for name in plugins for flag in ("--plugin", name)]
    argv = ["plugins", "--check", "--database-url", url, "--no-discover-plugins", *loaded]
    code = await asyncio.to_thread(main, argv)
    out = capsys.readouterr().out
    return code, json.loads(out)


def reasons(report: dict[str, Any]) -> list[tuple[str, ...]]:
    return sorted(
        (f["reason"], *(str(f[k]) for k in ("aggregate_type", "event_type", "schema_version", "name") if k in f))
        for f in report["findings"]
    )


async def readable_history(store: StoreAdapter, events: Events) -> None:
    """Every version the ledger plugin reads: current ones, and older ones
    its upcasters bring forward (retired types included)."""
    for event_type, version in [
        ("bank.v1.AccountOpened", 1),
        ("bank.v1.AccountOpened", 2),
        ("bank.v1.AccountOpened", 3),
        ("bank.v1.MoneyDeposited", 1),
        ("bank.v1.MoneyDeposited", 2),
        ("legacy.v1.OwnerChanged", 1),
        ("legacy.v1.AuditNote", 1),
        ("bank.v1.AccountClosed", 2),
    ]:
        await events.put(store, event_type, version)


async def test_a_store_the_plugins_read_whole_passes(
    database_url: str, store: StoreAdapter, capsys: pytest.CaptureFixture[str]
) -> None:
    await readable_history(store, Events())
    code, report = await check(database_url, capsys, LEDGER)
    assert (code, report["readable"], report["findings"]) == (0, True, [])
    assert report["event_kinds_checked"] == 8


async def test_each_kind_no_plugin_reads_is_reported_with_its_reason(
    database_url: str, store: StoreAdapter, capsys: pytest.CaptureFixture[str]
) -> None:
    events = Events()
    await readable_history(store, events)
    await events.put(store, "bank.v1.AccountClosed", 1)  # v2 now, no upcaster from v1
    await events.put(store, "bank.v1.MoneyDeposited", 3)  # written by a newer plugin
    await events.put(store, "legacy.v1.OwnerChanged", 2)  # an upcast type, at a version none reads
    await events.put(store, "legacy.v1.Unknown", 1)  # retired, and nothing upcasts it
    await events.put(store, "bank.v1.AccountOpened", 3, aggregate_type="Wallet")  # a plugin not loaded
    await events.put(store, "box.v1.BoxCreated", 1)  # the box plugin's event, stored on a Book
    await store.start_projection("renamed.away", 0)
    code, report = await check(database_url, capsys, LEDGER, f"{__name__}:shelving")
    assert (code, report["readable"]) == (1, False)
    assert reasons(report) == [
        ("AGGREGATE_TYPE_MISMATCH", "Book", "box.v1.BoxCreated", "1"),
        ("ORPHANED_PROJECTION", "renamed.away"),
        ("SCHEMA_VERSION_TOO_NEW", "Book", "bank.v1.MoneyDeposited", "3"),
        ("UNKNOWN_AGGREGATE_TYPE", "Wallet", "bank.v1.AccountOpened", "3"),
        ("UNKNOWN_EVENT_TYPE", "Book", "legacy.v1.Unknown", "1"),
        ("UNSUPPORTED_SCHEMA_VERSION", "Book", "bank.v1.AccountClosed", "1"),
        ("UNSUPPORTED_SCHEMA_VERSION", "Book", "legacy.v1.OwnerChanged", "2"),
    ]
    too_new = next(f for f in report["findings"] if f["reason"] == "SCHEMA_VERSION_TOO_NEW")
    assert too_new["plugin_schema_version"] == 2
    unknown = next(f for f in report["findings"] if f["reason"] == "UNKNOWN_AGGREGATE_TYPE")
    assert unknown["message"] == (
        "Wallet/bank.v1.AccountOpened v3: no loaded plugin declares aggregate type 'Wallet': load the plugin that does"
    )
    # Read only: the check wrote nothing (the same kinds, the same names).
    assert len(await store.stored_event_kinds()) == report["event_kinds_checked"] == 14
    assert await store.stored_projections() == [("renamed.away", 0)]


async def test_a_reaction_state_of_a_type_it_no_longer_reads_is_reported_until_it_upcasts_it(
    database_url: str, store: StoreAdapter, capsys: pytest.CaptureFixture[str]
) -> None:
    old = reaction_pb.ProcessState(subjects=["Book-1"])
    old.state.Pack(box.Box(name="Book-1"))
    current = reaction_pb.ProcessState(subjects=["Book-2"])
    current.state.Pack(box.CreateBox(name="Book-2"))
    await store.start_projection(REACTION, 0)
    await store.commit_projection(
        REACTION,
        expected_position=0,
        new_position=0,
        writes=[
            DocumentWrite(f"state:Book-{n}", "chronicle.v1.ProcessState", state.SerializeToString(), (f"Book-{n}",))
            for n, state in ((1, old), (2, current))
        ],
    )
    code, report = await check(database_url, capsys, LEDGER, f"{__name__}:minding_without_upcaster")
    assert code == 1
    (finding,) = report["findings"]
    assert finding == {
        "reason": "DOCUMENT_TYPE_MISMATCH",
        "message": finding["message"],
        "reaction": REACTION,
        "stored_type": "box.v1.Box",
        "expected_type": "box.v1.CreateBox",
        "states": 1,
        "example_key": "Book-1",  # the key --drop-state takes, as the reaction's own error names it
    }
    code, report = await check(database_url, capsys, LEDGER, f"{__name__}:minding_with_upcaster")
    assert (code, report["findings"]) == (0, [])


async def test_a_pending_deadline_no_function_handles_any_more_is_reported(
    database_url: str, store: StoreAdapter, capsys: pytest.CaptureFixture[str]
) -> None:
    # Scheduled by a version whose reaction had @on_deadline("remind"): this
    # one has none, and would stop when it falls due (UNKNOWN_DEADLINE).
    states = []
    for n in (1, 2):
        state = reaction_pb.ProcessState(subjects=[f"Book-{n}"])
        state.state.Pack(box.CreateBox(name=f"Book-{n}"))
        state.deadlines.add(name="remind", due_us=1_800_000_000_000_000)
        states.append(DocumentWrite(f"state:Book-{n}", "chronicle.v1.ProcessState", state.SerializeToString()))
    await store.start_projection(REACTION, 0)
    await store.commit_projection(REACTION, expected_position=0, new_position=0, writes=states)
    code, report = await check(database_url, capsys, LEDGER, f"{__name__}:minding_with_upcaster")
    assert code == 1
    (finding,) = report["findings"]
    assert finding == {
        "reason": "UNKNOWN_DEADLINE",
        "message": finding["message"],
        "reaction": REACTION,
        "deadline": "remind",
        "states": 2,
        "example_key": "Book-1",
    }
    assert "@on_deadline('remind')" in finding["message"]


async def test_the_servers_own_rows_beside_a_reactions_are_not_reported_as_orphans(
    database_url: str, store: StoreAdapter, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server with a reaction fixes its start as it starts (the marker
    ``#reaction-starts`` and ``#start/NAME``): rows of its own, which
    DeleteProjection refuses, so never an orphan to delete; a retired
    plugin's name beside them still is."""
    await readable_history(store, Events())
    plugins = [LEDGER, f"{__name__}:minding_with_upcaster"]
    await fix_starts(store, store, Registry([ledger, minding_with_upcaster]).reactions)
    assert {name for name, _ in await store.stored_projections()} == {MARKER, START_PREFIX + REACTION, REACTION}
    code, report = await check(database_url, capsys, *plugins)
    assert (code, report["readable"], report["findings"]) == (0, True, [])
    assert report["stored_projections_checked"] == 1  # the reaction's checkpoint, not the server's rows

    await store.start_projection("retired.reaction", 3)
    code, report = await check(database_url, capsys, *plugins)
    assert (code, reasons(report)) == (1, [("ORPHANED_PROJECTION", "retired.reaction")])


@pytest.mark.postgres
async def test_the_check_writes_nothing_not_even_a_schema(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database that takes no writes is checked all the same; one without
    a Chronicle schema is refused as such (SCHEMA_MISSING, exit 2), not
    migrated (docs/plugins.md: read only, as an export opens its source)."""
    argv = ["plugins", "--check", "--database-url", postgres_url, "--no-discover-plugins", "--plugin", LEDGER]
    assert await asyncio.to_thread(main, argv) == 2
    assert "SCHEMA_MISSING" in capsys.readouterr().err
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('chronicle.events')").fetchone() == (None,)

    adapter = open_store(postgres_url, pool_size=1)
    await adapter.open()
    await Events().put(adapter, "bank.v1.AccountClosed", 1)
    await adapter.close()
    name = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
    code, report = await check(postgres_url, capsys, LEDGER)
    assert (code, reasons(report)) == (1, [("UNSUPPORTED_SCHEMA_VERSION", "Book", "bank.v1.AccountClosed", "1")])


async def test_a_projection_whose_documents_another_version_built_is_reported(
    database_url: str, store: StoreAdapter, capsys: pytest.CaptureFixture[str]
) -> None:
    # Built by version 1 (its first run recorded it with the checkpoint).
    assert await store.start_projection_version("versioned.items", 1) == 1
    await store.commit_projection("versioned.items", expected_position=0, new_position=3, writes=[])
    code, report = await check(database_url, capsys, LEDGER, f"{__name__}:versioned_v1")
    assert (code, report["findings"]) == (0, [])

    code, report = await check(database_url, capsys, LEDGER, f"{__name__}:versioned_v2")
    assert (code, report["readable"]) == (1, False)
    (finding,) = report["findings"]
    assert finding == {
        "reason": "PROJECTION_VERSION_CHANGED",
        "message": "projection versioned.items is declared at version 2 and its stored documents were built by"
        " version 1: it would stop (PROJECTION_VERSION_CHANGED) until rebuilt: rebuild it once deployed"
        " (chronicle projection rebuild versioned.items), or deploy it under a new name (blue/green)",
        "name": "versioned.items",
        "version": 2,
        "stored_version": 1,
        "rebuild_on_change": False,
    }
    # Declared to rebuild itself: still said, since its reads go partial for a while.
    code, report = await check(database_url, capsys, LEDGER, f"{__name__}:versioned_v2_rebuilding")
    assert code == 1
    assert [(f["reason"], f["rebuild_on_change"]) for f in report["findings"]] == [("PROJECTION_VERSION_CHANGED", True)]
    assert "it rebuilds itself from the start of the log once deployed" in report["findings"][0]["message"]
    # Read only: the stored version and checkpoint are as they were.
    assert (await store.projection_version("versioned.items"), await store.projection_position("versioned.items")) == (
        1,
        3,
    )

    # A rolled-back plugin (declared below what built them) is reported too.
    await store.reset_projection("versioned.items", version=2)
    code, report = await check(database_url, capsys, LEDGER, f"{__name__}:versioned_v1")
    assert code == 1
    assert [(f["reason"], f["version"], f["stored_version"]) for f in report["findings"]] == [
        ("PROJECTION_VERSION_CHANGED", 1, 2)
    ]
