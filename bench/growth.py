"""Stores that grow (issue 17, item 5): appends, aggregate loads and
subscription catch-up with the log already holding 0, 1 M and 10 M events,
on PostgreSQL and on SQLite.

    python -m bench.growth                    # 0, 1 M and 10 M on both stores (about 20 minutes)
    python -m bench.growth --sizes 0,1000000  # the quick run (a few minutes)
    python -m bench.growth --stores sqlite    # one store

For each store and size the log is filled in the database itself (INSERT …
SELECT of bank and box events, 50 per aggregate, and a command record for
each, as the server keeps: not through the API, the point is what a big
log does to what comes after), followed by the same
100,000 "probe" events at every size (2,000 aggregates of 50 events). Then,
with a server started on that store (the bank and box plugins):

* start-up: seconds from the process's start to SERVING;
* catch-up: a plain gRPC stub subscribing (pages) from the start of the
  probe events to the end of the log, unfiltered and filtered to the box
  aggregates (a tenth), the median of three;
* aggregate loads: GetAggregate of 200 probe accounts of 50 events, each
  loaded once (not cached, no snapshot), p50 and p99;
* appends through the API: Deposit commands over 1,000 accounts the bench
  opens, at 1 and at 64 in flight (rate, p50, p99);

and, with the server stopped, appends straight on the store (one event per
append, 1 and 64 in flight over 1,000 aggregates, the store's own
group commit), where the database's share of the time is not hidden behind
the server's CPU. The database's size is reported too.

Writes its table into docs/benchmarks.md (the section "Stores that grow")
and the raw figures to docs/benchmarks-growth.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import psycopg

from bench import bank, load, machine, reads, report, servers
from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import event_service_pb2_grpc as ev_grpc
from service.processing.ids import new_event_id
from service.store.factory import open_store
from service.store.records import CommandRecord, NewEvent

ROOT = Path(__file__).resolve().parents[1]
SIZES = [0, 1_000_000, 10_000_000]
STORES = ["postgresql", "sqlite"]
# Every aggregate of the filled log holds this many events (so an aggregate
# load reads the same amount whatever the log's size), every tenth is a box.
EVENTS_PER_AGGREGATE = 50
PROBE_AGGREGATES = 2_000
PROBE_PREFIX = "probe-"
LOADS = 200
CATCH_UPS = 3
APPEND_ACCOUNTS = 1_000
APPEND_SECONDS = float(os.environ.get("GROWTH_APPEND_SECONDS", "8"))
STORE_APPEND_SECONDS = float(os.environ.get("GROWTH_STORE_SECONDS", "5"))
# What runs from the log in the measuring server: the bank read model and
# the transfers reaction (box has neither).
RUNNERS = (bank.PROJECTION, bank.REACTION)
SECTION = report.KEPT_SECTIONS[0]


# -- filling the log --------------------------------------------------------------

# SQLite's form of bench/reads.py's fill: the i-th event goes to aggregate
# i % aggregates at version i / aggregates + 1 (event ids random, as the API
# makes them; payloads the plugins decode).
_SQLITE_FILL = """
WITH RECURSIVE n(i) AS (SELECT :start UNION ALL SELECT i + 1 FROM n WHERE i + 1 < :stop),
s AS (SELECT i, i % :aggregates AS a, i / :aggregates + 1 AS v, lower(hex(randomblob(16))) AS h FROM n)
INSERT INTO events (position, event_id, aggregate_id, aggregate_type, version, event_type, schema_version,
                    payload, metadata, command_id, user_id, origin, correlation_id, causation_id, recorded_at_us)
SELECT i + 1 + :offset,
       substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-4' || substr(h, 14, 3) || '-8' || substr(h, 18, 3)
           || '-' || substr(h, 21, 12),
       :prefix || CASE WHEN a % 10 = 0 THEN 'box-' ELSE 'acc-' END || a,
       CASE WHEN a % 10 = 0 THEN 'Box' ELSE 'Account' END,
       v,
       CASE WHEN a % 10 = 0 THEN (CASE WHEN v = 1 THEN 'box.v1.BoxCreated' ELSE 'box.v1.BoxRenamed' END)
            ELSE (CASE WHEN v = 1 THEN 'bank.v1.AccountOpened' ELSE 'bank.v1.MoneyDeposited' END) END,
       1,
       CASE WHEN a % 10 = 0 THEN x'0a0178'
            WHEN v = 1 THEN CAST(char(10, length('owner-' || (a % 1000))) || 'owner-' || (a % 1000) AS BLOB)
            ELSE x'0801' END,
       '{}', 'c-' || (i + :offset), 'bench', '', 'c-' || (i + :offset), 'c-' || (i + :offset), :now
FROM s
"""


# A command record for each filled event, as the server keeps one per
# command: random command ids, as clients make them (the commands table's
# primary key grows with the log unless --command-retention prunes it).
_POSTGRES_COMMANDS = """
INSERT INTO chronicle.commands (command_id, aggregate_id, command_type, fingerprint, first_version, last_version,
                                user_id, origin, recorded_at)
SELECT gen_random_uuid()::text, aggregate_id, 'bank.v1.Deposit', sha256(convert_to(event_id::text, 'UTF8')),
       version, version, '', 'bench', recorded_at
FROM chronicle.events WHERE position > %(after)s AND position <= %(until)s
"""
_SQLITE_COMMANDS = """
INSERT INTO commands (command_id, aggregate_id, command_type, fingerprint, first_version, last_version,
                      user_id, origin, recorded_at_us)
SELECT lower(hex(randomblob(16))), aggregate_id, 'bank.v1.Deposit', randomblob(32), version, version, '', 'bench',
       recorded_at_us
FROM events WHERE position > :after AND position <= :until
"""
_STEP = 500_000  # rows per transaction


def _aggregates(events: int) -> int:
    return max(1, events // EVENTS_PER_AGGREGATE)


def fill_postgres(url: str, size: int, *, probes: int = PROBE_AGGREGATES) -> None:
    """``size`` events, then the probe aggregates' (``probes`` of them)."""
    if size:
        reads.fill(url, offset=0, start=0, stop=size, aggregates=_aggregates(size), prefix="")
    events = probes * EVENTS_PER_AGGREGATE
    reads.fill(url, offset=reads.log_head(url), start=0, stop=events, aggregates=probes, prefix=PROBE_PREFIX)
    with psycopg.connect(url, autocommit=True) as conn:
        head = reads.log_head(url)
        for after in range(0, head, _STEP):
            conn.execute(_POSTGRES_COMMANDS, {"after": after, "until": after + _STEP})
        # The read model and the transfers reaction are taken as up to date
        # with what was filled: the read model's rebuild is bench/reads.py's
        # business, not this one's.
        for name in RUNNERS:
            conn.execute(bank.CHECKPOINT_AT_HEAD, (name,))
    servers.settle(url)


def _sqlite_path(url: str) -> str:
    return url.removeprefix("sqlite:///")


def fill_sqlite(url: str, size: int, *, probes: int = PROBE_AGGREGATES) -> None:
    """``size`` events, then the probe aggregates' (``probes`` of them)."""
    db = sqlite3.connect(_sqlite_path(url), isolation_level=None)
    try:
        db.execute("PRAGMA cache_size = -2000000")  # 2 GB: the indexes' random inserts stay in memory
        now = time.time_ns() // 1000

        def chunked(offset: int, stop: int, aggregates: int, prefix: str) -> None:
            for first in range(0, stop, _STEP):
                db.execute("BEGIN")
                params = {"start": first, "stop": min(stop, first + _STEP), "aggregates": aggregates}
                db.execute(_SQLITE_FILL, {**params, "offset": offset, "prefix": prefix, "now": now})
                db.execute("COMMIT")

        if size:
            chunked(0, size, _aggregates(size), "")
        head = db.execute("SELECT COALESCE(MAX(position), 0) FROM events").fetchone()[0]
        chunked(head, probes * EVENTS_PER_AGGREGATE, probes, PROBE_PREFIX)
        head = db.execute("SELECT COALESCE(MAX(position), 0) FROM events").fetchone()[0]
        for after in range(0, head, _STEP):
            db.execute("BEGIN")
            db.execute(_SQLITE_COMMANDS, {"after": after, "until": after + _STEP})
            db.execute("COMMIT")
        for name in RUNNERS:
            db.execute(
                "INSERT INTO projection_checkpoints (name, position) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                (name, head),
            )
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


def head_of(kind: str, url: str) -> int:
    if kind == "postgresql":
        return reads.log_head(url)
    db = sqlite3.connect(_sqlite_path(url))
    try:
        return int(db.execute("SELECT COALESCE(MAX(position), 0) FROM events").fetchone()[0])
    finally:
        db.close()


def size_bytes(kind: str, url: str) -> int:
    if kind == "postgresql":
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else 0
    path = Path(_sqlite_path(url))
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


# -- measuring through a server ---------------------------------------------------


async def catch_up(address: str, after: int, aggregate_types: tuple[str, ...] = ()) -> dict[str, float]:
    """The median of three catch-ups (the machine is shared: one can be
    unlucky)."""
    runs = [await reads.stub_catch_up(address, after, aggregate_types) for _ in range(CATCH_UPS)]
    seen, seconds, _ = sorted(runs, key=lambda run: run[1])[len(runs) // 2]
    return {"events": seen, "seconds": seconds, "rate": seen / seconds, "all_events": sum(run[0] for run in runs)}


async def aggregate_loads(address: str) -> dict[str, float]:
    """GetAggregate of probe accounts, each once (so read from the store)."""
    accounts = [a for a in range(PROBE_AGGREGATES) if a % 10][:LOADS]
    took = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = ev_grpc.EventServiceStub(channel)
        for a in accounts:
            began = time.perf_counter()
            response = await stub.GetAggregate(ev.GetAggregateRequest(aggregate_id=f"{PROBE_PREFIX}acc-{a}"))
            took.append(time.perf_counter() - began)
            assert response.version == EVENTS_PER_AGGREGATE, response.version
    return _latencies(took)


def _latencies(took: list[float]) -> dict[str, float]:
    ordered = sorted(took)
    return {
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    }


def api_appends(address: str, concurrency: int, cpu: Cpu) -> dict[str, float]:
    spec = load.LoadSpec(
        address=address,
        mode="unary",
        concurrency=concurrency,
        seconds=APPEND_SECONDS,
        aggregates=APPEND_ACCOUNTS,
        prefix="g",
        domain="bank",
        processes=1 if concurrency == 1 else 2,
    )
    result = load.run(spec, sample=cpu.now)
    if result.errors:
        raise RuntimeError(f"appends failed: {result.error_reasons}")
    assert result.window is not None
    first, last = result.window
    return {
        "rate": result.rate,
        "p50_ms": result.percentile(0.5) * 1000,
        "p99_ms": result.percentile(0.99) * 1000,
        "cpu_us": (last - first) / result.completed * 1e6,
    }


class Cpu:
    """CPU seconds the server process and the database have used so far
    (PostgreSQL: the postmaster and its backends; SQLite runs inside the
    server, or inside this process for the store's own appends). CPU per
    operation is what to compare on a shared machine: wall times there
    also measure everyone else's load."""

    def __init__(self, server_pid: int | None, postmaster: int | None) -> None:
        self.server_pid, self.postmaster = server_pid, postmaster

    def now(self) -> float:
        server = machine.cpu_seconds(self.server_pid) if self.server_pid else machine.cpu_seconds_self()
        return server + (machine.tree_cpu_seconds(self.postmaster) if self.postmaster else 0.0)


def through_server(url: str, probes_from: int, postmaster: int | None) -> dict[str, Any]:
    row: dict[str, Any] = {}
    began = time.perf_counter()
    with servers.chronicle(url, *reads.PLUGIN_ARGS, "--idle-timeout", "600") as server:
        row["startup_s"] = time.perf_counter() - began
        cpu = Cpu(server.pid, postmaster)
        for key, types in (("catch_up", ()), ("catch_up_filtered", ("Box",))):
            before = cpu.now()
            row[key] = asyncio.run(catch_up(server.address, probes_from, types))
            row[key]["cpu_us"] = (cpu.now() - before) / row[key]["all_events"] * 1e6
        before = cpu.now()
        row["load"] = asyncio.run(aggregate_loads(server.address))
        row["load"]["cpu_ms"] = (cpu.now() - before) / LOADS * 1000
        asyncio.run(bank.open_accounts(server.address, APPEND_ACCOUNTS, "g"))
        row["api_append_1"] = api_appends(server.address, 1, cpu)
        row["api_append_64"] = api_appends(server.address, 64, cpu)
    return row


# -- measuring on the store itself ------------------------------------------------


def deposit(n: int) -> NewEvent:
    """A deposit as the server makes it (a UUIDv7 event id; the command id
    random, as clients make them)."""
    return NewEvent(
        event_id=new_event_id(),
        aggregate_type="Account",
        event_type="bank.v1.MoneyDeposited",
        schema_version=1,
        payload=b"\x08" + bytes([n % 100 + 1]),
        timestamp_us=time.time_ns() // 1000,
        command_id=str(uuid.uuid4()),
        origin="bench",
    )


async def store_appends(url: str, in_flight: int, postmaster: int | None) -> dict[str, float]:
    """Appends of one event straight on the store for a few seconds: each
    lane has aggregates of its own (one append per aggregate in flight, as
    an aggregate's worker makes them)."""
    store = open_store(url, pool_size=4)
    await store.open()
    run = uuid.uuid4().hex[:6]
    versions = dict.fromkeys(range(APPEND_ACCOUNTS), 0)
    took: list[float] = []
    stop = time.perf_counter() + STORE_APPEND_SECONDS

    async def lane(number: int) -> None:
        mine = list(range(number, APPEND_ACCOUNTS, in_flight))
        n = 0
        while time.perf_counter() < stop:
            account = mine[n % len(mine)]
            began = time.perf_counter()
            aggregate_id, version = f"s{run}-{account}", versions[account] + 1
            record = CommandRecord(str(uuid.uuid4()), aggregate_id, "bank.v1.Deposit", os.urandom(32), version, version)
            await store.append(aggregate_id, [deposit(n)], versions[account], commands=[record])
            took.append(time.perf_counter() - began)
            versions[account] += 1
            n += 1

    try:
        await store.append(f"s{run}-warm", [deposit(0)], 0)  # connections and statements ready
        wal_from = _wal_position(url)
        cpu = Cpu(None, postmaster)
        cpu_from = cpu.now()
        began = time.perf_counter()
        await asyncio.gather(*(lane(i) for i in range(in_flight)))
        elapsed = time.perf_counter() - began
        spent = cpu.now() - cpu_from
        wal = _wal_since(url, wal_from)
    finally:
        await store.close()
    figures = {"rate": len(took) / elapsed, **_latencies(took), "cpu_us": spent / len(took) * 1e6}
    if wal is not None:
        figures["wal_bytes"] = wal / len(took)
    return figures


def _wal_position(url: str) -> str | None:
    """PostgreSQL's WAL position (None on SQLite)."""
    if not url.startswith("postgresql"):
        return None
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    return str(row[0]) if row else None


def _wal_since(url: str, position: str | None) -> int | None:
    """Bytes of WAL written since ``position`` (every session's: during a
    measurement only the store's appends write)."""
    if position is None:
        return None
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)", (position,)).fetchone()
    return int(row[0]) if row else None


# -- a run -------------------------------------------------------------------------


@contextmanager
def database(kind: str, cluster: Any, folder: Path) -> Iterator[str]:
    if kind == "postgresql":
        url = cluster.create_database()
        try:
            yield url
        finally:
            name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
            with psycopg.connect(cluster.admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    else:
        path = folder / f"growth-{uuid.uuid4().hex[:6]}.db"
        try:
            yield f"sqlite:///{path}"
        finally:
            for file in folder.glob(path.name + "*"):
                file.unlink()


def measure(kind: str, size: int, cluster: Any, folder: Path) -> dict[str, Any]:
    with database(kind, cluster, folder) as url:
        with servers.chronicle(url, *reads.PLUGIN_ARGS):
            pass  # the schema, made by the server as it would be
        began = time.perf_counter()
        (fill_postgres if kind == "postgresql" else fill_sqlite)(url, size)
        row: dict[str, Any] = {"store": kind, "size": size, "fill_s": time.perf_counter() - began}
        row["head"] = head_of(kind, url)
        row["bytes"] = size_bytes(kind, url)
        row["load_average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        postmaster = servers.postmaster_pid(cluster) if kind == "postgresql" else None
        row.update(through_server(url, size, postmaster))
        row["store_append_1"] = asyncio.run(store_appends(url, 1, postmaster))
        row["store_append_64"] = asyncio.run(store_appends(url, 64, postmaster))
    print(
        f"  {kind:10} {size:>11,}: start {row['startup_s']:.1f} s, catch-up {row['catch_up']['rate']:,.0f}/s"
        f" (Box {row['catch_up_filtered']['rate']:,.0f}/s), load p50 {row['load']['p50_ms']:.2f} ms,"
        f" API appends {row['api_append_1']['p50_ms']:.2f} ms / {row['api_append_64']['rate']:,.0f}/s,"
        f" store appends {row['store_append_1']['p50_ms']:.2f} ms / {row['store_append_64']['rate']:,.0f}/s"
        f" (filled in {row['fill_s']:.0f} s)",
        flush=True,
    )
    return row


# -- the report ----------------------------------------------------------------------


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base else "-"


# Each line of the table: its title, and how to get its figure from a row.
_FIGURES: list[tuple[str, Any]] = [
    ("start-up s", lambda r: r["startup_s"]),
    ("catch-up events/s", lambda r: r["catch_up"]["rate"]),
    ("catch-up, CPU µs per event", lambda r: r["catch_up"]["cpu_us"]),
    ("filtered catch-up events/s", lambda r: r["catch_up_filtered"]["rate"]),
    ("filtered catch-up, CPU µs per event", lambda r: r["catch_up_filtered"]["cpu_us"]),
    ("GetAggregate p50 ms", lambda r: r["load"]["p50_ms"]),
    ("GetAggregate p99 ms", lambda r: r["load"]["p99_ms"]),
    ("GetAggregate, CPU ms per load", lambda r: r["load"]["cpu_ms"]),
    ("Submit, 1 in flight, p50 ms", lambda r: r["api_append_1"]["p50_ms"]),
    ("Submit, 1 in flight, CPU µs per command", lambda r: r["api_append_1"]["cpu_us"]),
    ("Submit, 64 in flight, commands/s", lambda r: r["api_append_64"]["rate"]),
    ("Submit, 64 in flight, p99 ms", lambda r: r["api_append_64"]["p99_ms"]),
    ("Submit, 64 in flight, CPU µs per command", lambda r: r["api_append_64"]["cpu_us"]),
    ("store append, 1 in flight, p50 ms", lambda r: r["store_append_1"]["p50_ms"]),
    ("store append, 1 in flight, CPU µs per append", lambda r: r["store_append_1"]["cpu_us"]),
    ("store append, 64 in flight, appends/s", lambda r: r["store_append_64"]["rate"]),
    ("store append, 64 in flight, p99 ms", lambda r: r["store_append_64"]["p99_ms"]),
    ("store append, 64 in flight, CPU µs per append", lambda r: r["store_append_64"]["cpu_us"]),
    ("store append, 64 in flight, WAL bytes per append", lambda r: r["store_append_64"]["wal_bytes"]),
]


def section(rows: list[dict[str, Any]], command: str, described: dict[str, str]) -> str:
    lines = [
        SECTION,
        "",
        "What a log that has grown does to what comes after it (issue 17): the same measurements with"
        " the log already holding 0, 1 M and 10 M events (filled in the database with INSERT … SELECT,"
        f" {EVENTS_PER_AGGREGATE} events per aggregate, then the same {PROBE_AGGREGATES * EVENTS_PER_AGGREGATE:,}"
        " probe events at every size). Catch-up: a plain gRPC stub subscribing (pages) over the probe events,"
        " unfiltered and to the box aggregates (a tenth); GetAggregate: 200 probe accounts of"
        f" {EVENTS_PER_AGGREGATE} events loaded once each; Submit: bank deposits over {APPEND_ACCOUNTS:,} accounts"
        f" for {APPEND_SECONDS:.0f} s; store append: one event per append straight on the store (no server),"
        f" {STORE_APPEND_SECONDS:.0f} s. CPU per operation: the server's and the database's (PostgreSQL's"
        " postmaster and backends; SQLite works inside the server, or inside the bench's process for the store's"
        " own appends), the figure to compare on a shared machine, where wall times also measure everyone"
        " else's load. The ratio columns divide by the figure at 0 (for rates, below 1 is slower; for times"
        " and CPU, above 1 is slower).",
        "",
        f"- Command: `{command}`",
        f"- Date: {time.strftime('%Y-%m-%d')}",
        *(f"- {key}: {value}" for key, value in described.items()),
        "",
    ]
    for kind in dict.fromkeys(row["store"] for row in rows):
        mine = [row for row in rows if row["store"] == kind]
        sizes = [f"{row['size']:,}" for row in mine]
        lines.append(f"### {'PostgreSQL' if kind == 'postgresql' else 'SQLite'}")
        lines.append("")
        heading = ["log before"] + [f"{s} events" for s in sizes] + [f"x at {s}" for s in sizes[1:]]
        lines.append("| " + " | ".join(heading) + " |")
        lines.append("|" + "---|" * len(heading))
        for title, get in _FIGURES:
            try:
                values = [get(row) for row in mine]
            except KeyError:
                continue  # a figure only one store has (PostgreSQL's WAL)
            shown = [f"{v:,.0f}" if v >= 100 else f"{v:.2f}" for v in values]
            lines.append("| " + " | ".join([title, *shown, *(_ratio(v, values[0]) for v in values[1:])]) + " |")
        database = [f"{row['bytes'] / 2**20:,.0f} MiB" for row in mine]
        lines.append("| database size | " + " | ".join(database) + " |" + " |" * (len(mine) - 1))
        fills = [f"{row['fill_s']:.0f} s" for row in mine]
        lines.append("| (filled in) | " + " | ".join(fills) + " |" + " |" * (len(mine) - 1))
        loads = [row["load_average"] for row in mine]
        lines.append("| (load average before) | " + " | ".join(loads) + " |" + " |" * (len(mine) - 1))
        lines.append("")
    return "\n".join(lines)


def write_section(markdown: Path, text: str) -> None:
    """Replace the section in docs/benchmarks.md (or add it at the end); the
    rest of the document is ``make bench``'s, which keeps this section."""
    current = markdown.read_text() if markdown.exists() else "# Benchmarks\n"
    markdown.write_text(report.replace_section(current, SECTION, text))


def _sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _stores(text: str) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = set(chosen) - set(STORES)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown stores {sorted(unknown)}; choose among {STORES}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.growth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=_sizes, default=SIZES, help="log sizes to measure at, comma-separated")
    parser.add_argument("--stores", type=_stores, default=STORES, help="postgresql, sqlite or both")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "benchmarks.md", help="the document the table goes into"
    )
    parser.add_argument("--no-write", action="store_true", help="print the figures only")
    args = parser.parse_args(argv)
    described = machine.describe()
    print(f"machine: {described}", flush=True)
    rows = []
    with servers.postgres() as (cluster, _), tempfile.TemporaryDirectory(prefix="growth-") as folder:
        for kind in args.stores:
            for size in args.sizes:
                rows.append(measure(kind, size, cluster, Path(folder)))
                # Each row as soon as it is measured: a long run stopped
                # half-way keeps what it measured.
                print(json.dumps(rows[-1]), flush=True)
    if not args.no_write:
        command = "python -m bench.growth " + " ".join(argv if argv is not None else sys.argv[1:])
        write_section(args.out, section(rows, command.strip(), described))
        args.out.with_name("benchmarks-growth.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
