"""``make bench``: Chronicle against its ceilings, in one run.

    python -m bench                 # the full run (about thirteen minutes)
    python -m bench --quick         # fewer points, shorter (about four)
    python -m bench --aggregates 1000 --concurrency 8,32 --out /tmp/mine.md

Starts a throwaway PostgreSQL with default durability, then measures, in
this order: the no-op gRPC ceiling; Chronicle's unary Submit over 1, 100
and 10,000 aggregates at concurrency 1, 16, 64 and 256; SubmitStream with
64 and 256 commands in flight; several events per command; the bank example
(with its projection); pgbench's single-row insert rate at the same
concurrency; aggregate load time with and without a snapshot; the server's
memory with 100,000 aggregates touched once and after eviction. Writes
docs/benchmarks.md, docs/benchmarks.png and docs/benchmarks.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from bench import load, machine, memory, pgbench, replay, report, servers

ROOT = Path(__file__).resolve().parent.parent


def measure(spec: load.LoadSpec, server_pid: int, postmaster: int | None) -> dict[str, Any]:
    def sample() -> tuple[float, float]:
        return machine.cpu_seconds(server_pid), machine.tree_cpu_seconds(postmaster) if postmaster else 0.0

    result = load.run(spec, sample)
    assert result.window is not None
    before, after = result.window
    server_before, db_before = before
    server_after, db_after = after
    row = {
        "mode": spec.mode,
        "concurrency": spec.concurrency,
        "aggregates": spec.aggregates,
        "events_per_command": spec.events_per_command,
        "rate": result.rate,
        "p50_ms": result.percentile(0.5) * 1000,
        "p99_ms": result.percentile(0.99) * 1000,
        "completed": result.completed,
        "errors": result.errors,
        "error_reasons": result.error_reasons,
        # CPU seconds of each side over the measured window only
        "server_cpu": server_after - server_before,
        "db_cpu": db_after - db_before,
        "client_cpu": result.client_cpu,
        "wall": spec.seconds,
    }
    print(
        f"  {spec.mode:6} c={spec.concurrency:<4} aggs={spec.aggregates:<6} ev={spec.events_per_command}"
        f"  {row['rate']:8.0f}/s  p50 {row['p50_ms']:6.1f} ms  p99 {row['p99_ms']:6.1f} ms"
        f"  cpu s/db/c {row['server_cpu']:.1f}/{row['db_cpu']:.1f}/{row['client_cpu']:.1f}"
        + (f"  errors {result.error_reasons}" if result.errors else ""),
        flush=True,
    )
    return row


def _counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("positive whole numbers, comma-separated")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="fewer points and shorter runs")
    parser.add_argument("--seconds", type=float, help="measured seconds per point")
    parser.add_argument("--aggregates", type=_counts, help="aggregate counts, comma-separated (1,100,10000)")
    parser.add_argument("--concurrency", type=_counts, help="concurrencies, comma-separated (1,16,64,256)")
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

        print("Chronicle (bench plugin, PostgreSQL):", flush=True)
        with servers.chronicle(database_url, *servers.BENCH_PLUGIN_ARGS, "--idle-timeout", "600") as server:
            # The aggregates exist and are live before measuring: a server in
            # steady state has its active aggregates cached (new ones are
            # still 10 % of the load).
            for count in aggregate_counts:
                asyncio.run(memory.touch(server.address, count, prefix="agg"))
            servers.settle(database_url)
            results["unary"] = [
                measure(load.LoadSpec(server.address, "unary", c, seconds, aggregates=n), server.pid, postmaster)
                for n in aggregate_counts
                for c in concurrencies
            ]
            results["stream"] = [
                measure(load.LoadSpec(server.address, "stream", c, seconds), server.pid, postmaster) for c in (64, 256)
            ]
            results["events"] = [
                measure(
                    load.LoadSpec(server.address, "unary", 64, seconds, events_per_command=n), server.pid, postmaster
                )
                for n in (1, 5, 20)
            ]

        print("pgbench (single-row durable inserts):", flush=True)
        results["pgbench"] = [
            {"concurrency": c, "rate": pgbench.insert_rate(cluster, database_url, c, seconds)} for c in concurrencies
        ]
        for row in results["pgbench"]:
            print(f"  pgbench c={row['concurrency']:<4} {row['rate']:8.0f}/s", flush=True)

        print("aggregate load time:", flush=True)
        results["replay"] = asyncio.run(replay.load_times(database_url))
        print(f"  {results['replay']}", flush=True)

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
