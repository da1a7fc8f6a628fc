"""What `make bench-scale` (bench/growth.py) relies on: the log it fills in
the database, on either store, is a log the server serves as if the events
had come through the API (ids, versions, positions, payloads the plugins
decode, a command record for each, the read model's checkpoint at the
end); and its table goes into
docs/benchmarks.md without taking `make bench`'s part, nor `make bench`
taking it."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from pathlib import Path

import psycopg
import pytest

from bench import growth, report
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.store.factory import open_store
from service.store.records import LogFilter

pytestmark = pytest.mark.postgres

SIZE = 1_000  # 20 aggregates of 50 events
PROBES = 4


@pytest.fixture(params=["postgresql", "sqlite"])
def filled_url(request: pytest.FixtureRequest, postgres_url: str, tmp_path: Path) -> str:
    return postgres_url if request.param == "postgresql" else f"sqlite:///{tmp_path}/events.db"


async def test_the_filled_log_is_a_log_the_store_serves(filled_url: str) -> None:
    store = open_store(filled_url)
    await store.open()  # the schema, as the server makes it
    try:
        fill = growth.fill_postgres if filled_url.startswith("postgresql") else growth.fill_sqlite
        fill(filled_url, SIZE, probes=PROBES)
        total = SIZE + PROBES * growth.EVENTS_PER_AGGREGATE
        assert await store.log_head() == total
        # the read model and the transfers reaction: up to date (or the
        # reaction would work through the filled deposits under the measurements)
        assert [await store.projection_position(name) for name in growth.RUNNERS] == [total, total]
        assert set(growth.RUNNERS) == {p.name for p in bank_account.plugin.projections} | {
            r.name for r in bank_account.plugin.reactions
        }
        page = await store.read_log(0, LogFilter(), total + 1)
        assert [e.position for e in page.events] == list(range(1, total + 1))
        assert len({uuid.UUID(e.event_id) for e in page.events}) == total
        # every aggregate has versions 1..50 in log order, of the plugins' types
        account = await store.read_aggregate("acc-1")
        assert [e.version for e in account] == list(range(1, growth.EVENTS_PER_AGGREGATE + 1))
        assert bank.AccountOpened.FromString(account[0].payload).owner == "owner-1"
        assert [bank.MoneyDeposited.FromString(e.payload).amount for e in account[1:]] == [1] * 49
        probe = await store.read_aggregate(f"{growth.PROBE_PREFIX}box-0")
        assert (probe[0].aggregate_type, probe[0].event_type) == ("Box", "box.v1.BoxCreated")
        assert probe[0].position == SIZE + 1  # the probes come after the filled log
        box.BoxCreated.FromString(probe[0].payload)
        # a command record for each event, as the server keeps one per command
        assert commands_in(filled_url) == total
        # the next append goes after them, at the next position
        (appended,) = await store.append("acc-1", [growth.deposit(1)], growth.EVENTS_PER_AGGREGATE)
        assert (appended.version, appended.position) == (growth.EVENTS_PER_AGGREGATE + 1, total + 1)
    finally:
        await store.close()


def commands_in(url: str) -> int:
    if url.startswith("postgresql"):
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(DISTINCT command_id) FROM chronicle.commands").fetchone()
    else:
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db:
            row = db.execute("SELECT count(DISTINCT command_id) FROM commands").fetchone()
    assert row is not None
    return int(row[0])


def test_the_growth_table_replaces_its_section_and_make_bench_keeps_it(tmp_path: Path) -> None:
    markdown = tmp_path / "benchmarks.md"
    markdown.write_text("# Benchmarks\n\n## Targets\n\nmake bench's\n")
    growth.write_section(markdown, f"{growth.SECTION}\n\nfirst run\n")
    growth.write_section(markdown, f"{growth.SECTION}\n\nsecond run\n")
    assert markdown.read_text() == "# Benchmarks\n\n## Targets\n\nmake bench's\n\n## Stores that grow\n\nsecond run\n"
    # make bench writes the document anew from its results, and keeps the section
    rewritten = "# Benchmarks\n\n## Targets\n\nnew figures\n\n## Memory\n\nm\n"
    assert report.keep_sections(rewritten, previous=markdown.read_text()) == (
        rewritten + "\n## Stores that grow\n\nsecond run\n"
    )
