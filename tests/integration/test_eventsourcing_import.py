"""Importing from another event store: a bank written with the real Python
``eventsourcing`` library (PyPI) writes into a real PostgreSQL; its table
is converted through a mapping into the bank plugin's events, imported, and
served by Chronicle as if it had always been there."""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import export_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service import cli
from service.app import build_registry
from service.errors import ImportConflict, InvalidInput
from service.store.base import Store
from service.store.sqlite import SqliteStore
from service.transfer.eventsourcing import (
    ChronicleEvent,
    EventsourcingEvent,
    Tally,
    event_id,
    eventsourcing_export,
)
from service.transfer.importer import Importer
from service.transfer.restoring import only_aggregates
from tests.support.eventsourcing_bank import Account, Bank, environment, to_chronicle
from tests.support.grpc_client import TEST_SETTINGS, command, running_server

pytestmark = pytest.mark.postgres
SCHEMA = "legacy"


def legacy_bank(postgres_url: str) -> tuple[Bank, list[UUID]]:
    """Three accounts, their events interleaved, one with an event the
    plugin has no type for."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    app = Bank(env=environment(postgres_url, SCHEMA))
    ids = [app.open_account(owner) for owner in ("ann", "bob", "cy")]
    app.act(ids[0], "deposit", 100)
    app.act(ids[1], "deposit", 50)
    app.act(ids[0], "note", "called the customer")
    app.act(ids[0], "withdraw", 30)
    app.act(ids[2], "deposit", 7)
    app.act(ids[1], "withdraw", 20)
    return app, ids


async def converted(postgres_url: str, mapping: object = to_chronicle) -> list[export_pb2.ExportRecord]:
    stream = eventsourcing_export(
        postgres_url,
        table="bank_events",
        schema=SCHEMA,
        mapping=mapping,  # type: ignore[arg-type]
        registry=build_registry(TEST_SETTINGS),
        page_size=4,
    )
    return [record async for record in stream]


async def replayed(records: list[export_pb2.ExportRecord]) -> AsyncIterator[export_pb2.ExportRecord]:
    for record in records:
        yield record


async def test_the_librarys_events_become_the_plugins_and_chronicle_serves_them(
    postgres_url: str, tmp_path: Path
) -> None:
    app, ids = legacy_bank(postgres_url)
    records = await converted(postgres_url)
    events = [r.event.event for r in records if r.HasField("event")]
    assert len(events) == 8  # nine stored, the note left out
    assert records[0].header.source == "eventsourcing" and records[-1].end.events == 8

    store = SqliteStore(tmp_path / "chronicle.db")
    await store.open()
    summary = await Importer(Store.of(store)).run(replayed(records))
    assert (summary.written["event"], summary.complete) == (8, True)

    library: list[Account] = [app.repository.get(i) for i in ids]
    stored = {str(i): list(app.recorder.select_events(i)) for i in ids}
    async with running_server(store) as (_, client):
        for account in library:
            state = await client.events.GetAggregate(ev.GetAggregateRequest(aggregate_id=str(account.id)))
            served = bank.Account()
            state.state.Unpack(served)
            assert (served.owner, served.balance) == (account.owner, account.balance)
        ann = str(ids[0])
        read = [e async for e in client.events.ReadAggregate(ev.ReadAggregateRequest(aggregate_id=ann))]
        assert [(e.version, e.event_type) for e in read] == [
            (1, "bank.v1.AccountOpened"),
            (2, "bank.v1.MoneyDeposited"),
            (3, "bank.v1.MoneyWithdrawn"),  # renumbered: the note (library version 3) was left out
        ]
        # Ids and times are the library's: stable across conversions, as it recorded them.
        kept = [s for s in stored[ann] if not s.topic.endswith("Noted")]
        assert [e.event_id for e in read] == [event_id(ann, s.originator_version) for s in kept]
        library_events: list[Any] = [app.mapper.to_domain_event(s) for s in kept]
        epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
        assert [e.timestamp.ToMicroseconds() for e in read] == [
            (d.timestamp - epoch) // datetime.timedelta(microseconds=1) for d in library_events
        ]
        assert read[1].metadata["eventsourcing.topic"].endswith("Account.Deposited")
        # Chronicle carries on where the library stopped.
        deposited = await client.submit(command(ann, bank.Deposit(amount=5)))
        assert deposited.version == 4


async def test_converting_again_yields_the_same_stream_and_importing_it_writes_nothing(
    postgres_url: str, tmp_path: Path
) -> None:
    legacy_bank(postgres_url)
    first, second = await converted(postgres_url), await converted(postgres_url)
    assert first[1:] == second[1:]  # the header's time apart
    store = SqliteStore(tmp_path / "chronicle.db")
    await store.open()
    try:
        await Importer(Store.of(store)).run(replayed(first))
        again = await Importer(Store.of(store)).run(replayed(second))
        assert (again.written["event"], again.events_skipped) == (0, 8)
    finally:
        await store.close()


async def test_a_mapping_to_a_type_no_plugin_declares_is_refused(postgres_url: str) -> None:
    legacy_bank(postgres_url)

    def wrong(event: EventsourcingEvent) -> ChronicleEvent | None:
        return ChronicleEvent("Box", bank.AccountOpened(owner="x"))  # a bank event for a box

    with pytest.raises(InvalidInput) as refused:
        await converted(postgres_url, wrong)
    assert refused.value.reason == "BAD_MAPPING"
    assert refused.value.metadata["topic"].endswith("Account.Opened")


@pytest.mark.slow
def test_the_command_line_converts_and_imports(postgres_url: str, tmp_path: Path) -> None:
    legacy_bank(postgres_url)
    out = tmp_path / "legacy.chronicle"
    convert = [
        sys.executable,
        "-m",
        "service",
        "convert-eventsourcing",
        str(out),
        "--from-url",
        postgres_url,
        "--schema",
        SCHEMA,
        "--table",
        "bank_events",
        "--mapping",
        "tests.support.eventsourcing_bank:to_chronicle",
    ]
    done = subprocess.run(convert, capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(done.stdout) == {"file": str(out), "format": "binary", "events": 8, "left_out": 1, "claims": 0}
    imported = subprocess.run(
        [sys.executable, "-m", "service", "import", str(out), "--database-url", f"sqlite:///{tmp_path}/c.db"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(imported.stdout)["events_written"] == 8


ROOT = Path(__file__).resolve().parents[2]
# What pip installs as the `chronicle` command (pyproject.toml's
# [project.scripts]): run from its own folder, which Python puts first on
# its path, instead of the folder it runs in (as `python -m` would).
ENTRY_POINT = """import sys
from service.cli import main
if __name__ == '__main__':
    sys.exit(main())
"""


@pytest.mark.slow
def test_migration_mds_command_finds_the_mapping_saved_beside_it(postgres_url: str, tmp_path: Path) -> None:
    """docs/migration.md's legacy_mapping.py saved in the folder the
    command runs in, and its command as printed, run as the installed
    `chronicle` command. Before the fix: a traceback of ModuleNotFoundError
    "No module named 'legacy_mapping'", exit status 1 (it worked only with
    PYTHONPATH=.)."""
    legacy_bank(postgres_url)
    doc = (ROOT / "docs" / "migration.md").read_text()
    mapping = re.search(r"```python\n(# legacy_mapping\.py\n.*?)```", doc, re.DOTALL)
    printed = re.search(r"```sh\n(chronicle convert-eventsourcing .*?)\nchronicle import", doc, re.DOTALL)
    assert mapping is not None and printed is not None
    work, bin_ = tmp_path / "work", tmp_path / "bin"
    work.mkdir()
    bin_.mkdir()
    (work / "legacy_mapping.py").write_text(mapping.group(1))
    (bin_ / "chronicle").write_text(ENTRY_POINT)
    argv = shlex.split(printed.group(1).replace("\\\n", " "))
    assert argv[argv.index("--mapping") + 1] == "legacy_mapping:to_chronicle"
    argv[argv.index("--from-url") + 1] = postgres_url  # this test's database, and the schema the bank writes in
    argv[argv.index("--schema") + 1] = SCHEMA
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(bin_ / "chronicle"), *argv[1:]],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "file": "legacy.chronicle",
        "format": "binary",
        "events": 8,
        "left_out": 1,
        "claims": 0,
    }
    assert (work / "legacy.chronicle").exists()


async def test_a_table_that_is_not_there_or_a_mapping_that_raises_is_said(postgres_url: str) -> None:
    """Before: psycopg's UndefinedTable, or the mapping's own exception, as a traceback."""
    legacy_bank(postgres_url)

    def raising(event: EventsourcingEvent) -> ChronicleEvent | None:
        return ChronicleEvent("Account", bank.AccountOpened(owner=event.state["no such attribute"]))

    with pytest.raises(InvalidInput) as refused:
        await converted(postgres_url, raising)
    assert refused.value.reason == "BAD_MAPPING"
    assert refused.value.message.startswith("the mapping raised KeyError: 'no such attribute' for ")
    records = eventsourcing_export(postgres_url, table="bank_evnts", schema=SCHEMA, mapping=to_chronicle)
    with pytest.raises(InvalidInput) as missing:
        [record async for record in records]
    assert missing.value.reason == "TABLE_NOT_FOUND"
    assert f"there is no table {SCHEMA}.bank_evnts there" in missing.value.message


def convert_command(url: str, out: Path, table: str = "bank_events") -> list[str]:
    """``chronicle convert-eventsourcing`` of ``table`` at ``url`` into ``out``, with the test mapping."""
    return [
        "convert-eventsourcing",
        str(out),
        "--from-url",
        url,
        "--schema",
        SCHEMA,
        "--table",
        table,
        "--mapping",
        "tests.support.eventsourcing_bank:to_chronicle",
    ]


def one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    """Run the command line in-process; its exit status and its one line of error (asserted one line, no traceback)."""
    status = cli.main(argv)
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    return status, err.strip()


def test_bad_sources_are_one_error_line_with_a_reason(
    postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A table of another shape, a role that may not read the table, a
    SQLite URL: before the fix, psycopg's UndefinedColumn,
    InsufficientPrivilege and ProgrammingError as tracebacks."""
    legacy_bank(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {SCHEMA}.other_events (id int, x text)")
        conn.execute("DROP ROLE IF EXISTS es_reader_without_select")
        conn.execute("CREATE ROLE es_reader_without_select LOGIN")
        conn.execute(f"GRANT USAGE ON SCHEMA {SCHEMA} TO es_reader_without_select")
    out = tmp_path / "out.chronicle"
    try:
        status, err = one_error_line(capsys, convert_command(postgres_url, out, table="other_events"))
        assert status == 2
        assert err.startswith(f"error: NOT_AN_EVENTS_TABLE: {SCHEMA}.other_events is not an eventsourcing"), err
        assert "notification_id" in err

        parts = psycopg.conninfo.conninfo_to_dict(postgres_url)
        parts["user"] = "es_reader_without_select"
        parts.pop("password", None)
        reader = psycopg.conninfo.make_conninfo(**parts)  # type: ignore[arg-type]
        status, err = one_error_line(capsys, convert_command(reader, out))
        assert status == 1
        assert err.startswith(
            f"error: SOURCE_PERMISSION_DENIED: the role of --from-url may not read {SCHEMA}.bank_events ("
        ), err
        assert f"GRANT SELECT ON {SCHEMA}.bank_events" in err

        status, err = one_error_line(capsys, convert_command(f"sqlite:///{tmp_path}/app.db", out))
        assert status == 2
        assert err.startswith("error: UNSUPPORTED_SOURCE: --from-url must be the eventsourcing application's"), err
        assert not out.exists()
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"REVOKE ALL ON SCHEMA {SCHEMA} FROM es_reader_without_select")
            conn.execute("DROP ROLE es_reader_without_select")


def control_character_id(event: EventsourcingEvent) -> ChronicleEvent | None:
    mapped = to_chronicle(event)
    return mapped and ChronicleEvent(mapped.aggregate_type, mapped.message, aggregate_id="a\nb")


def two_types_for_one_originator(event: EventsourcingEvent) -> ChronicleEvent | None:
    if event.originator_version == 1:
        return ChronicleEvent("Account", bank.AccountOpened(owner="x"))
    return ChronicleEvent("Box", box.BoxCreated(name="b"))


@pytest.mark.parametrize(
    ("mapping", "import_reason", "said"),
    [
        (control_character_id, "BAD_RECORD", "control characters"),
        (two_types_for_one_originator, "AGGREGATE_TYPE_MISMATCH", "are of another type"),
    ],
)
async def test_what_the_import_would_refuse_is_refused_at_conversion(
    postgres_url: str, mapping: object, import_reason: str, said: str
) -> None:
    """Before the fix, both converted (exit 0) and the import refused them."""
    legacy_bank(postgres_url)
    with pytest.raises(InvalidInput) as refused:
        await converted(postgres_url, mapping)
    assert refused.value.reason == "BAD_MAPPING"
    assert refused.value.metadata["import_reason"] == import_reason
    assert said in refused.value.message, refused.value.message
    assert "originator_id" in refused.value.metadata


async def test_the_events_left_out_are_counted(postgres_url: str) -> None:
    legacy_bank(postgres_url)
    tally = Tally()
    stream = eventsourcing_export(
        postgres_url, table="bank_events", schema=SCHEMA, mapping=to_chronicle, tally=tally, page_size=4
    )
    events = [record async for record in stream if record.HasField("event")]
    assert (len(events), tally.read, tally.left_out) == (8, 9, 1)  # the note left out


async def test_a_final_import_after_chronicle_took_commands_names_every_diverged_aggregate(
    postgres_url: str, tmp_path: Path
) -> None:
    """docs/migration.md's cutover order broken: an import while the
    library still runs, Chronicle then serves commands for two accounts,
    the library writes more for all three, and the last import is refused.
    Before the fix the refusal named the first account alone; it names
    both that diverged (not the third), and writes nothing of the batch:
    the third's new event waits for the operator's decision."""
    app, ids = legacy_bank(postgres_url)
    ann, bob, cy = (str(i) for i in ids)
    served = SqliteStore(tmp_path / "chronicle.db")
    await served.open()
    await Importer(Store.of(served)).run(replayed(await converted(postgres_url)))
    async with running_server(served) as (_, client):  # closes the store when it stops
        await client.submit(command(ann, bank.Deposit(amount=1)))
        await client.submit(command(bob, bank.Deposit(amount=2)))
    store = SqliteStore(tmp_path / "chronicle.db")
    await store.open()
    try:
        for account in ids:
            app.act(account, "deposit", 10)
        with pytest.raises(ImportConflict) as refused:
            await Importer(Store.of(store)).run(replayed(await converted(postgres_url)))
        assert refused.value.reason == "AGGREGATE_NOT_EMPTY"
        assert json.loads(refused.value.metadata["diverged_aggregates"]) == [ann, bob]
        assert refused.value.metadata["diverged_count"] == "2"
        assert f"{ann!r}, {bob!r}" in refused.value.message and cy not in refused.value.message
        assert "--leave-out" in refused.value.message
        assert len(await store.read_aggregate(cy)) == 2  # opened, deposited 7: its new deposit not written

        # Leaving the diverged ones out, the rest imports.
        left = only_aggregates(iter(await converted(postgres_url)), set(), leaving_out={ann, bob})
        summary = await Importer(Store.of(store)).run(replayed(list(left)))
        assert summary.written["event"] == 1 and len(await store.read_aggregate(cy)) == 3
    finally:
        await store.close()
