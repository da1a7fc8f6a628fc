"""``make bench``: Chronicle against its ceilings, in one run.

    python -m bench                 # the full run (about 25 minutes)
    python -m bench --quick         # fewer points, shorter (about four)
    python -m bench --aggregates 1000 --concurrency 8,32 --out /tmp/mine.md

Starts a throwaway PostgreSQL with default durability, then measures, in
this order: the no-op gRPC ceiling (unary, stream, stream in pages);
Chronicle's unary Submit over 10,000 aggregates at concurrency 1, 16, 64
and 256 (and over 1 and 100 aggregates at 64); SubmitStream and
SubmitStreamPages with 64 and 256 commands in flight; several events per
command; the bank example with its read model (deposits over 1,000
accounts: unary, stream, stream in pages); pgbench's single-row inserts at the
same concurrencies, with PostgreSQL's CPU per insert; the peer (the Python
``eventsourcing`` library, the same bank deposits in-process); the targets'
ratios again in alternating rounds, every side of each ratio measured in
each round (``bench/paired.py``: the report judges those targets by the
rounds' median, since the host's speed drifts between the sweep's points); aggregate load
time with and without a snapshot; the server's memory with 100,000
aggregates touched once and after eviction; the read path with the log at 0,
1 M and 5 M events (``bench/reads.py``). Every Chronicle point checks
that each acknowledged command is stored; the bank point that the read
model's balances equal the deposits in the log. Writes docs/benchmarks.md,
docs/benchmarks.png and docs/benchmarks.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from bench import bank, load, machine, memory, paired, peer, pgbench, reads, replay, report, servers
from bench.points import measure

ROOT = Path(__file__).resolve().parent.parent
# The peer runs at each of these thread counts; the best counts.
PEER_THREADS = (4, 16)
# The read path, with the log at these sizes (full run, --quick), each
# catch-up reading this many events.
READ_SIZES = {False: [0, 1_000_000, 5_000_000], True: [0, 1_000_000]}
READ_WINDOW = 200_000


def _counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("positive whole numbers, comma-separated")
    return counts


def _sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="fewer points and shorter runs")
    parser.add_argument("--seconds", type=float, help="measured seconds per point")
    parser.add_argument("--aggregates", type=_counts, help="aggregate counts, comma-separated (1,100,10000)")
    parser.add_argument("--concurrency", type=_counts, help="concurrencies, comma-separated (1,16,64,256)")
    parser.add_argument("--read-sizes", type=_sizes, help="log sizes for the read path, comma-separated")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    seconds = args.seconds or (4.0 if args.quick else 8.0)
    concurrencies = args.concurrency or [1, 16, 64, 256]
    aggregate_counts = args.aggregates or ([10_000] if args.quick else [1, 100, 10_000])
    results: dict[str, Any] = {
        "machine": machine.describe(),
        "seconds": seconds,
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
    }
    print(f"machine: {results['machine']}", flush=True)

    with servers.postgres() as (cluster, database_url):
        postmaster = servers.postmaster_pid(cluster)

        print("gRPC ceiling (no-op server):", flush=True)
        with servers.noop() as noop:
            results["ceiling"] = [
                measure(load.LoadSpec(noop.address, "unary", c, seconds), noop.pid, None) for c in concurrencies
            ]
            results["ceiling_stream"] = [
                measure(load.LoadSpec(noop.address, "stream", c, seconds), noop.pid, None) for c in (64, 256)
            ]
            results["ceiling_pages"] = [
                measure(load.LoadSpec(noop.address, "pages", c, seconds), noop.pid, None) for c in (64, 256)
            ]

        print("Chronicle (bench plugin, PostgreSQL):", flush=True)
        with servers.chronicle(database_url, *servers.BENCH_PLUGIN_ARGS, "--idle-timeout", "600") as server:
            # The aggregates exist and are live before measuring: a server in
            # steady state has its active aggregates cached (new ones are
            # still 10 % of the load).
            for count in aggregate_counts:
                asyncio.run(memory.touch(server.address, count, prefix="agg"))
            servers.settle(database_url)

            def point(spec: load.LoadSpec) -> dict[str, Any]:
                return measure(spec, server.pid, postmaster, database_url=database_url)

            results["unary"] = [
                point(load.LoadSpec(server.address, "unary", c, seconds, aggregates=n))
                for n in aggregate_counts
                for c in (concurrencies if n == max(aggregate_counts) else [64])
            ]
            results["stream"] = [point(load.LoadSpec(server.address, "stream", c, seconds)) for c in (64, 256)]
            results["pages"] = [point(load.LoadSpec(server.address, "pages", c, seconds)) for c in (64, 256)]
            results["events"] = [
                point(load.LoadSpec(server.address, "unary", 64, seconds, events_per_command=n)) for n in (5, 20)
            ]

        print("Chronicle (bank example with its read model, PostgreSQL):", flush=True)
        with servers.chronicle(database_url, *bank.BANK_PLUGIN_ARGS, "--idle-timeout", "600") as server:
            asyncio.run(bank.open_accounts(server.address, bank.ACCOUNTS, "acct"))
            bank.caught_up(database_url)
            servers.settle(database_url)
            results["bank"] = [
                measure(
                    load.LoadSpec(
                        server.address, mode, 64, seconds, aggregates=bank.ACCOUNTS, domain="bank", prefix="acct"
                    ),
                    server.pid,
                    postmaster,
                    database_url=database_url,
                )
                for mode in ("unary", "stream", "pages")
            ]

        print("pgbench (single-row durable inserts):", flush=True)
        results["pgbench"] = [
            pgbench.insert_point(cluster, database_url, c, seconds, postmaster) for c in concurrencies
        ]
        for row in results["pgbench"]:
            print(
                f"  pgbench c={row['concurrency']:<4} {row['rate']:8.0f}/s"
                f"  PostgreSQL {row['db_cpu'] / max(row['completed'], 1) * 1e6:.0f} µs per insert",
                flush=True,
            )

        print("peer (the eventsourcing library, bank deposits, in-process):", flush=True)
        results["peer"] = [
            peer.deposits(database_url, postmaster, accounts=bank.ACCOUNTS, threads=t, seconds=seconds)
            for t in PEER_THREADS
        ]
        for row in results["peer"]:
            print(f"  eventsourcing threads={row['threads']:<3} {row['rate']:8.0f}/s", flush=True)

        print("the targets' ratios, in alternating rounds:", flush=True)
        best_threads = max(results["peer"], key=lambda row: row["rate"])["threads"]
        results["paired"] = paired.run(
            cluster, postmaster, seconds=seconds / 2, library_threads=best_threads, rounds=2 if args.quick else 3
        )

        print("aggregate load time:", flush=True)
        results["replay"] = asyncio.run(replay.load_times(database_url))
        print(f"  {results['replay']}", flush=True)

        print("reads (catch-up, paged reads, the read model rebuilt):", flush=True)
        results["reads"] = reads.run(cluster, args.read_sizes or READ_SIZES[args.quick], READ_WINDOW)

        print("memory:", flush=True)
        results["memory"] = memory.memory_profile(database_url, 30_000 if args.quick else 100_000)
        print(f"  {results['memory']}", flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    report.write(results, args.out, args.out.with_suffix(".png"))
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
