"""The read path against the database's own speed, with the log at several sizes.

    python -m bench.reads                     # log sizes 0, 1M, 5M (about ten minutes)
    python -m bench.reads --sizes 0,1000000   # fewer sizes

For each size the log is filled in the database itself (one INSERT … SELECT
of bank and box events, not through the API: the point is reading), then,
in one run on one machine:

* the baseline: a plain psycopg client reading the same rows (the same
  columns the store reads, binary, one server-side cursor) as fast as
  PostgreSQL and the driver go;
* Subscribe's catch-up of the last ``--window`` events, to the project's own
  Python client (``ChronicleClient.subscribe``) and to a plain gRPC stub,
  unfiltered and filtered to one aggregate type (a tenth of the events),
  and, for the filtered one to be compared with, an unfiltered catch-up of
  as many events as it matched (the same work per run: a run's fixed costs,
  the connection and the first page, weigh ten times more in a run of a
  tenth of the events), the two run in alternating pairs and compared by
  the median of the pairs' ratios;
* ReadAggregate of a 100-event aggregate against GetAggregate of another
  like it (no snapshot: both read the 100 events), p50 over many;
* once, at the first size of a million events or more, the bank read model
  rebuilt from the start by a server that finds the log already there;
* at the end, with a server on every size's log at once, the Python
  client's catch-up at each size in turn, round after round: the figure
  for flatness (sizes measured minutes apart take the machine's drift for
  the log's growth).

Rates are events per second of wall time; the ratios are what to compare
across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from contextlib import ExitStack
from typing import Any

import grpc
import psycopg

from bench import bank, machine, servers
from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import event_service_pb2_grpc as ev_grpc
from service.client import ChronicleClient
from service.store.postgres.sql import EVENT_COLUMNS

# Every tenth aggregate is a box: the filtered catch-up reads a tenth of the log.
BOX_EVERY = 10
# Aggregates the filled log spreads over (so each has log-size / this events).
FILL_AGGREGATES = 10_000
# Each catch-up figure is the median of this many runs.
CATCH_UPS = 3
# The filtered catch-up and its comparison: this many runs of each, in
# alternating pairs (a run is a fifth of a second: its rate swings by a
# tenth from one to the next on a shared machine).
PAIRS = 7
# Flatness: this many rounds of catch-ups, every size in turn.
FLAT_ROUNDS = 5
# A read model larger than its document cache: this many events over this
# many aggregates (nine in ten accounts), half as many owners.
WIDE_EVENTS = 300_000
WIDE_ACCOUNTS = 100_000
# ReadAggregate against GetAggregate: this many aggregates of this many events.
READ_AGGREGATES = 40
READ_EVENTS = 100
# The plugins the reading server loads (bank's read model runs in it).
PLUGIN_ARGS = (
    "--no-discover-plugins",
    "--plugin",
    "domain_plugins.bank_account",
    "--plugin",
    "domain_plugins.box",
)

# Each stored event's payload, built in SQL: the i-th event of the log goes
# to aggregate i % aggregates at version i / aggregates + 1.
_FILL = f"""
INSERT INTO chronicle.events (position, event_id, aggregate_id, aggregate_type, version, event_type,
                              schema_version, payload, command_id, user_id, origin, correlation_id,
                              causation_id, recorded_at)
SELECT i + 1 + %(offset)s, gen_random_uuid(),
       CASE WHEN a %% {BOX_EVERY} = 0 THEN %(prefix)s || 'box-' ELSE %(prefix)s || 'acc-' END || a,
       CASE WHEN a %% {BOX_EVERY} = 0 THEN 'Box' ELSE 'Account' END,
       v,
       CASE WHEN a %% {BOX_EVERY} = 0 THEN (CASE WHEN v = 1 THEN 'box.v1.BoxCreated' ELSE 'box.v1.BoxRenamed' END)
            ELSE (CASE WHEN v = 1 THEN 'bank.v1.AccountOpened' ELSE 'bank.v1.MoneyDeposited' END) END,
       1,
       CASE WHEN a %% {BOX_EVERY} = 0 THEN '\\x0a0178'::bytea
            WHEN v = 1 THEN '\\x0a'::bytea || set_byte('\\x00'::bytea, 0, length('owner-' || a %% %(owners)s))
                                           || convert_to('owner-' || a %% %(owners)s, 'UTF8')
            ELSE '\\x0801'::bytea END,
       'c-' || (i + %(offset)s), 'bench', '', 'c-' || (i + %(offset)s), 'c-' || (i + %(offset)s), now()
FROM (SELECT i, i %% %(aggregates)s AS a, i / %(aggregates)s + 1 AS v
      FROM generate_series(%(start)s::bigint, %(stop)s::bigint - 1) AS i) AS s
"""


def fill(
    database_url: str, *, offset: int, start: int, stop: int, aggregates: int, prefix: str, owners: int = 1_000
) -> None:
    """Events ``start`` … ``stop - 1`` of a log over ``aggregates``
    aggregates named ``prefix…``, at positions after ``offset``; account
    ``i`` belongs to owner ``i % owners``."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        step = 500_000  # one transaction per half a million rows
        for first in range(start, stop, step):
            last = min(stop, first + step)
            params = {"offset": offset, "start": first, "stop": last, "aggregates": aggregates, "prefix": prefix}
            params["owners"] = owners
            conn.execute(_FILL, params)
        conn.execute("UPDATE chronicle.log_head SET last_position = (SELECT max(position) FROM chronicle.events)")


def log_head(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT last_position FROM chronicle.log_head").fetchone()
    return int(row[0]) if row else 0


def psycopg_rate(database_url: str, after: int, count: int) -> float:
    """Rows per second a plain psycopg client reads the log at (binary, one
    server-side cursor, the store's own columns)."""
    with psycopg.connect(database_url) as conn, conn.cursor(name="reads", binary=True) as cursor:
        cursor.itersize = 10_000
        began = time.perf_counter()
        cursor.execute(
            f"SELECT {EVENT_COLUMNS} FROM chronicle.events WHERE position > %s ORDER BY position LIMIT %s",
            (after, count),
        )
        read = sum(1 for _ in cursor)
        elapsed = time.perf_counter() - began
    assert read == count, (read, count)
    return read / elapsed


async def client_catch_up(
    address: str, after: int, until: int, aggregate_types: tuple[str, ...] = ()
) -> tuple[int, float]:
    """Events the project's client delivered from ``after`` to ``until``, and
    the seconds it took."""
    seen = 0
    async with ChronicleClient.connect(address) as client:
        subscription = client.subscribe(after_position=after, aggregate_types=aggregate_types)
        began = time.perf_counter()
        async for event in subscription:
            seen += 1
            if event.position >= until:
                break
        return seen, time.perf_counter() - began


async def stub_catch_up(address: str, after: int, aggregate_types: tuple[str, ...] = ()) -> tuple[int, float, float]:
    """Events a plain gRPC stub received until the caught-up mark, the
    seconds it took (pages, if the server sends them, counted by event), and
    the seconds until the first event arrived."""
    seen = 0
    first = 0.0
    async with grpc.aio.insecure_channel(address) as channel:
        call = ev_grpc.EventServiceStub(channel).Subscribe(
            ev.SubscribeRequest(after_position=after, aggregate_types=aggregate_types, pages=True)
        )
        began = time.perf_counter()
        async for message in call:
            kind = message.WhichOneof("kind")
            if kind == "event":
                seen += 1
            elif kind == "page":
                seen += len(message.page.events)
            elif kind == "caught_up":
                break
            if seen and not first:
                first = time.perf_counter() - began
        elapsed = time.perf_counter() - began
        call.cancel()
        return seen, elapsed, first


async def read_against_get(address: str, prefix: str) -> dict[str, float]:
    """p50 of ReadAggregate (all 100 events) and of GetAggregate, each on
    aggregates no other call touched (nothing cached, no snapshot)."""
    reads, gets = [], []
    async with ChronicleClient.connect(address) as client:
        for i in range(READ_AGGREGATES):
            began = time.perf_counter()
            events = [event async for event in client.read(f"{prefix}acc-{2 * i + 1}")]
            reads.append(time.perf_counter() - began)
            assert len(events) == READ_EVENTS, len(events)
            began = time.perf_counter()
            await client.get_aggregate(f"{prefix}acc-{2 * i + 3}", bank_state())
            gets.append(time.perf_counter() - began)
    read_ms, get_ms = statistics.median(reads) * 1000, statistics.median(gets) * 1000
    return {"read_aggregate_ms": read_ms, "get_aggregate_ms": get_ms, "ratio": read_ms / get_ms}


def bank_state() -> Any:
    from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2

    return bank_account_pb2.Account


def rebuild_rate(database_url: str, server_pid: int) -> dict[str, float]:
    """The bank read model, started on a log it has not read: events per
    second until it has applied everything (documents written included)."""
    began = time.perf_counter()
    cpu_before = machine.cpu_seconds(server_pid)
    lag = to_apply = bank.projection_lag(database_url)
    while lag > 0:
        time.sleep(0.2)
        lag = bank.projection_lag(database_url)
    elapsed = time.perf_counter() - began
    return {
        "events": to_apply,
        "seconds": elapsed,
        "rate": to_apply / elapsed,
        "server_cpu": machine.cpu_seconds(server_pid) - cpu_before,
    }


def _one_catch_up(server_pid: int, run: Any) -> dict[str, Any]:
    """One catch-up (``run()`` gives (events, seconds[, seconds to the first
    event])) with the server's and this process's (the client's) CPU per
    event over it."""
    server_before, client_before = machine.cpu_seconds(server_pid), machine.cpu_seconds_self()
    seen, seconds, *first = asyncio.run(run())
    server, client = machine.cpu_seconds(server_pid) - server_before, machine.cpu_seconds_self() - client_before
    return {
        "events": seen,
        "rate": seen / seconds,
        "server_us": server / seen * 1e6,
        "client_us": client / seen * 1e6,
    } | ({"first_ms": first[0] * 1000} if first else {})


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median rate (one run alone swings with whatever else the
    machine does, and the first pays for what the next find cached), with
    every run's rate."""
    ordered = sorted(runs, key=lambda r: r["rate"])
    return ordered[len(ordered) // 2] | {"rates": [r["rate"] for r in runs]}


def _timed_catch_up(server_pid: int, run: Any) -> dict[str, Any]:
    """``CATCH_UPS`` catch-ups; the one of median rate."""
    return _median_run([_one_catch_up(server_pid, run) for _ in range(CATCH_UPS)])


def _paired_catch_ups(server_pid: int, first: Any, second: Any) -> tuple[dict[str, Any], dict[str, Any], float]:
    """``PAIRS`` catch-ups of each of two kinds, alternating (first, second,
    then second, first, ...) so that the machine's drift and what one run
    leaves cached for the next fall on both alike; each kind's run of
    median rate, and the median of the pairs' rate ratios (first against
    second), the figure to compare them by."""
    ones, others = [], []
    for pair in range(PAIRS):
        if pair % 2 == 0:
            ones.append(_one_catch_up(server_pid, first))
            others.append(_one_catch_up(server_pid, second))
        else:
            others.append(_one_catch_up(server_pid, second))
            ones.append(_one_catch_up(server_pid, first))
    ratio = statistics.median(one["rate"] / other["rate"] for one, other in zip(ones, others, strict=True))
    return _median_run(ones), _median_run(others), ratio


def measure_size(database_url: str, size: int, window: int, *, rebuild: bool) -> dict[str, Any]:
    """Fill the log to ``size`` events (at least ``window``), then measure."""
    total = max(size, window)
    bench_prefix = f"r{uuid.uuid4().hex[:6]}-"
    # The schema, made by the server as it would be.
    with servers.chronicle(database_url, *PLUGIN_ARGS):
        pass
    began = time.perf_counter()
    fill(database_url, offset=0, start=0, stop=total, aggregates=FILL_AGGREGATES, prefix="")
    # Aggregates of exactly READ_EVENTS events for ReadAggregate/GetAggregate.
    fill(
        database_url,
        offset=log_head(database_url),
        start=0,
        stop=READ_EVENTS * (2 * READ_AGGREGATES + 3),
        aggregates=2 * READ_AGGREGATES + 3,
        prefix=bench_prefix,
    )
    with psycopg.connect(database_url, autocommit=True) as conn:
        # The reaction and the read model up to date with what was filled,
        # or they would work through it under the measurements below (the
        # read model's documents are not what this bench reads); the read
        # model from the start where its rebuild is measured.
        conn.execute(bank.CHECKPOINT_AT_HEAD, (bank.REACTION,))
        if not rebuild:
            conn.execute(bank.CHECKPOINT_AT_HEAD, (bank.PROJECTION,))
    servers.settle(database_url)
    head = log_head(database_url)
    after = head - window - READ_EVENTS * (2 * READ_AGGREGATES + 3)
    row: dict[str, Any] = {
        "size": size,
        "head": head,
        "window": window,
        "after": after,
        "fill_s": time.perf_counter() - began,
    }
    with servers.chronicle(database_url, *PLUGIN_ARGS, "--idle-timeout", "600") as server:
        if rebuild:
            row["rebuild"] = rebuild_rate(database_url, server.pid)
            print(f"    read model rebuilt: {row['rebuild']['rate']:,.0f} events/s", flush=True)
            servers.settle(database_url)  # the documents' dead rows and WAL, out of the way
        row["psycopg"] = statistics.median(psycopg_rate(database_url, after, window) for _ in range(CATCH_UPS))
        row["client"] = _timed_catch_up(server.pid, lambda: client_catch_up(server.address, after, after + window))
        row["stub"] = _timed_catch_up(server.pid, lambda: stub_catch_up(server.address, after))
        matched = asyncio.run(stub_catch_up(server.address, after, ("Box",)))[0]
        row["stub_filtered"], row["stub_as_many"], row["filtered_ratio"] = _paired_catch_ups(
            server.pid,
            lambda: stub_catch_up(server.address, after, ("Box",)),
            lambda: stub_catch_up(server.address, head - matched),
        )
        row.update(asyncio.run(read_against_get(server.address, bench_prefix)))
    print(
        f"  log {size:>9,}: psycopg {row['psycopg']:9,.0f}/s  client {row['client']['rate']:9,.0f}/s"
        f" ({row['client']['rate'] / row['psycopg']:.2f}x, server {row['client']['server_us']:.1f} µs/event)"
        f"  stub {row['stub']['rate']:9,.0f}/s  filtered {row['stub_filtered']['rate']:9,.0f}/s"
        f" (unfiltered, as many: {row['stub_as_many']['rate']:9,.0f}/s; paired {row['filtered_ratio']:.2f}x)"
        f"  ReadAggregate {row['read_aggregate_ms']:.1f} ms / GetAggregate {row['get_aggregate_ms']:.1f} ms"
        f" = {row['ratio']:.2f}x",
        flush=True,
    )
    return row


def wide_rebuild(database_url: str) -> dict[str, Any]:
    """The bank read model rebuilt over a log whose documents do not fit the
    runner's cache (``WIDE_ACCOUNTS`` aggregates, nine in ten of them
    accounts, spread over half as many owners: about 140,000 documents
    against a cache of 10,000), so most batches read their documents from
    the database."""
    with servers.chronicle(database_url, *PLUGIN_ARGS):
        pass
    fill(
        database_url,
        offset=0,
        start=0,
        stop=WIDE_EVENTS,
        aggregates=WIDE_ACCOUNTS,
        prefix="",
        owners=WIDE_ACCOUNTS // 2,
    )
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(bank.CHECKPOINT_AT_HEAD, (bank.REACTION,))
        conn.execute("VACUUM ANALYZE chronicle.events")
    servers.settle(database_url)
    with servers.chronicle(database_url, *PLUGIN_ARGS) as server:
        measured = rebuild_rate(database_url, server.pid)
    print(
        f"  read model larger than its cache: {measured['events']:,} events rebuilt at {measured['rate']:,.0f}/s"
        f" (server {measured['server_cpu'] / measured['events'] * 1e6:.0f} µs per event)",
        flush=True,
    )
    return measured


def flatness(urls: dict[int, str], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The Python client's catch-up at every size in turn: one server per
    size, each size's window caught up in rotating order for ``FLAT_ROUNDS``
    rounds. Sizes measured one after the other, minutes apart, take the
    machine's drift for the log's growth; in turn, both fall on every size
    alike. Each size's median rate, and the median over the rounds of the
    largest size's rate against the smallest's."""
    by_size = {row["size"]: row for row in rows}
    order = sorted(by_size)
    rates: dict[int, list[float]] = {size: [] for size in order}
    with ExitStack() as stack:
        started = {
            size: stack.enter_context(servers.chronicle(urls[size], *PLUGIN_ARGS, "--idle-timeout", "600"))
            for size in order
        }
        for turn in range(FLAT_ROUNDS):
            for size in order[turn % len(order) :] + order[: turn % len(order)]:
                after, window = by_size[size]["after"], by_size[size]["window"]
                seen, seconds = asyncio.run(client_catch_up(started[size].address, after, after + window))
                rates[size].append(seen / seconds)
    smallest, largest = order[0], order[-1]
    ratio = statistics.median(big / small for big, small in zip(rates[largest], rates[smallest], strict=True))
    return {
        "sizes": [{"size": size, "rate": statistics.median(rates[size]), "rates": rates[size]} for size in order],
        "ratio": ratio,
    }


def run(cluster: Any, sizes: list[int], window: int) -> dict[str, Any]:
    """Each size on a database of its own in ``cluster``, measured in turn;
    the read model is rebuilt once, at the first size of a million events or
    more; then catch-up at every size again, the sizes in turn
    (``flatness``)."""
    rows = []
    urls: dict[int, str] = {}
    rebuilt = False
    try:
        for size in sizes:
            wants_rebuild = not rebuilt and size >= 1_000_000
            urls[size] = cluster.create_database()
            rows.append(measure_size(urls[size], size, window, rebuild=wants_rebuild))
            rebuilt = rebuilt or wants_rebuild
        flat = flatness(urls, rows)
        urls[-1] = cluster.create_database()
        wide = wide_rebuild(urls[-1])
        print(
            "  in turn: "
            + ", ".join(f"{entry['size']:,} events {entry['rate']:,.0f}/s" for entry in flat["sizes"])
            + f"; largest against smallest {flat['ratio']:.2f}x",
            flush=True,
        )
    finally:
        with psycopg.connect(cluster.admin_url, autocommit=True) as conn:  # the disk back
            for url in urls.values():
                name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    return {"sizes": rows, "flatness": flat, "wide_rebuild": wide}


def _sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reads")
    parser.add_argument("--sizes", type=_sizes, default=[0, 1_000_000, 5_000_000])
    parser.add_argument("--window", type=int, default=200_000, help="events each catch-up reads")
    args = parser.parse_args(argv)
    print(f"machine: {machine.describe()}", flush=True)
    with servers.postgres() as (cluster, _):
        measured = run(cluster, args.sizes, args.window)
    print(json.dumps(measured, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
