"""docs/benchmarks.md and its chart, from one run's results."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any


def _row(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def _cpu(row: dict[str, Any]) -> str:
    wall = row["wall"] or 1
    return f"{row['server_cpu'] / wall:.0%} / {row['db_cpu'] / wall:.0%} / {row['client_cpu'] / wall:.0%}"


def cpu_per_command(row: dict[str, Any]) -> tuple[float, float, float]:
    """Microseconds of CPU per command for the server, PostgreSQL and the
    clients: each side's CPU over the measured window divided by the
    commands completed in it."""
    commands = row["completed"] or 1
    server, db, clients = (row[side] / commands * 1e6 for side in ("server_cpu", "db_cpu", "client_cpu"))
    return server, db, clients


def _cpu_budget_lines(results: dict[str, Any]) -> list[str]:
    points = [
        ("no-op gRPC, unary", _row(results["ceiling"], concurrency=64)),
        ("no-op gRPC, stream", _row(results.get("ceiling_stream", []), concurrency=64)),
        ("Chronicle unary Submit, 10,000 aggregates", _row(results["unary"], concurrency=64, aggregates=10_000)),
        ("Chronicle SubmitStream", _row(results["stream"], concurrency=64)),
    ]
    cores = int(results["machine"]["cpu"].split(" x ", 1)[0])
    lines = [
        "",
        "## CPU per command",
        "",
        "Where the time goes, from the same points (concurrency 64): CPU microseconds per command",
        f"on each side, and the rate the {cores} cores could sustain if every one of them were busy",
        f"with this work and nothing else ({cores} x 10^6 / the total). See [performance](performance.md).",
        "",
        "| point | commands/s | µs server | µs PostgreSQL | µs clients | µs total | bound at full CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in points:
        if row is None:
            continue
        server, db, clients = cpu_per_command(row)
        total = server + db + clients
        lines.append(
            f"| {name} | {row['rate']:.0f} | {server:.0f} | {db:.0f} | {clients:.0f} | {total:.0f}"
            f" | {cores * 1e6 / total:,.0f}/s |"
        )
    return lines


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    checks: list[tuple[str, str, bool]] = []
    ceiling = _row(results["ceiling"], concurrency=64)
    unary = _row(results["unary"], concurrency=64, aggregates=10_000)
    if ceiling and unary:
        ratio = unary["rate"] / ceiling["rate"]
        checks.append(
            (
                "Unary Submit at concurrency 64 over 10,000 aggregates ≥ 0.5 x the no-op gRPC ceiling",
                f"{unary['rate']:.0f} / {ceiling['rate']:.0f} = {ratio:.2f}",
                ratio >= 0.5,
            )
        )
        checks.append(
            (
                "p99 latency at concurrency 64 ≤ 5 x p50",
                f"p50 {unary['p50_ms']:.1f} ms, p99 {unary['p99_ms']:.1f} ms:"
                f" {unary['p99_ms'] / unary['p50_ms']:.1f} x",
                unary["p99_ms"] <= 5 * unary["p50_ms"],
            )
        )
    stream = _row(results["stream"], concurrency=64)
    pg64 = _row(results["pgbench"], concurrency=64)
    if stream and pg64:
        checks.append(
            ("SubmitStream, 64 in flight ≥ 5,000 durable commands/s", f"{stream['rate']:.0f}/s", stream["rate"] >= 5000)
        )
        ratio = stream["rate"] / pg64["rate"]
        checks.append(
            (
                "SubmitStream, 64 in flight ≥ 0.3 x pgbench single-row inserts at 64 clients",
                f"{stream['rate']:.0f} / {pg64['rate']:.0f} = {ratio:.2f}",
                ratio >= 0.3,
            )
        )
    replay = results.get("replay")
    if replay:
        checks.append(
            (
                "10,000-event aggregate, full replay ≤ 135 ms",
                f"{replay['full_replay_ms']:.1f} ms",
                replay["full_replay_ms"] <= 135,
            )
        )
        speedup = replay["full_replay_ms"] / replay["with_snapshot_ms"]
        checks.append(
            (
                "…with a snapshot ≥ 20 x faster",
                f"{replay['with_snapshot_ms']:.2f} ms: {speedup:.0f} x",
                speedup >= 20,
            )
        )
    mem = results.get("memory")
    if mem:
        growth = mem["rss_after_eviction_mib"] / mem["rss_before_mib"] - 1
        checks.append(
            (
                f"RSS after idle eviction within 20 % of before {mem['aggregates']:,} aggregates",
                f"{mem['rss_before_mib']:.0f} → {mem['rss_with_aggregates_mib']:.0f}"
                f" → {mem['rss_after_eviction_mib']:.0f} MiB ({growth:+.0%})",
                growth <= 0.2,
            )
        )
    return checks


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rate_ax, p99_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = [
        ("no-op gRPC (unary)", results["ceiling"]),
        ("Chronicle unary, 10,000 aggregates", [r for r in results["unary"] if r["aggregates"] == 10_000]),
        ("Chronicle unary, 100 aggregates", [r for r in results["unary"] if r["aggregates"] == 100]),
        ("Chronicle unary, 1 aggregate", [r for r in results["unary"] if r["aggregates"] == 1]),
        ("Chronicle SubmitStream", results["stream"]),
        ("pgbench single-row inserts", results["pgbench"]),
    ]
    for label, rows in series:
        if not rows:
            continue
        rows = sorted(rows, key=lambda r: r["concurrency"])
        xs = [r["concurrency"] for r in rows]
        rate_ax.plot(xs, [r["rate"] for r in rows], marker="o", label=label)
        if "p99_ms" in rows[0]:
            p99_ax.plot(xs, [r["p99_ms"] for r in rows], marker="o", label=label)
    for ax, title, unit in ((rate_ax, "Throughput", "per second"), (p99_ax, "p99 latency", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (calls or commands in flight)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    p99_ax.set_yscale("log")
    rate_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write(results: dict[str, Any], markdown: Path, png: Path) -> None:
    chart(results, png)
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Measured by `make bench` (`python -m bench`), in one run, on one machine; every figure",
        "below comes from that run. Ratios matter more than absolute numbers: run it on your",
        "hardware.",
        "",
        f"- Command: `{results['command']}` ({results['seconds']:.0f} s measured per point, after 1 s of warm-up)",
        f"- Date: {datetime.date.today().isoformat()}",
        *(f"- {k}: {v}" for k, v in m.items()),
        "- PostgreSQL: a throwaway cluster with default durability (`fsync` and `synchronous_commit` on).",
        "- Load: two client processes (Python, grpc.aio) on the same machine; CPU columns are the",
        "  share of one core used by the server / PostgreSQL / the clients over each point's",
        "  measured seconds (warm-up excluded).",
        "- Chronicle runs the `bench` plugin (`bench/plugin.py`): one event per command unless stated,",
        "  90 % of commands to existing aggregates and 10 % to new ones.",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {value} | {'yes' if ok else '**no**'} |" for name, value, ok in targets(results)]
    lines += ["", f"![throughput and p99 against concurrency]({png.name})", "", "## Unary Submit", ""]
    lines += [
        "| aggregates | concurrency | commands/s | p50 ms | p99 ms | CPU server / db / clients | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["unary"]:
        lines.append(
            f"| {row['aggregates']:,} | {row['concurrency']} | {row['rate']:.0f} | {row['p50_ms']:.1f}"
            f" | {row['p99_ms']:.1f} | {_cpu(row)} | {row['errors'] or ''} |"
        )
    lines += ["", "## SubmitStream and events per command", ""]
    lines += [
        "| what | in flight | commands/s | events/s | p50 ms | p99 ms | CPU server / db / clients |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["stream"]:
        lines.append(
            f"| SubmitStream | {row['concurrency']} | {row['rate']:.0f} | {row['rate']:.0f} | {row['p50_ms']:.1f}"
            f" | {row['p99_ms']:.1f} | {_cpu(row)} |"
        )
    for row in results["events"]:
        lines.append(
            f"| unary, {row['events_per_command']} events per command | {row['concurrency']} | {row['rate']:.0f}"
            f" | {row['rate'] * row['events_per_command']:.0f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f}"
            f" | {_cpu(row)} |"
        )
    lines += ["", "## Ceilings", ""]
    lines += ["| concurrency | no-op gRPC unary calls/s | pgbench single-row inserts/s |", "|---|---|---|"]
    for row in results["ceiling"]:
        pg = _row(results["pgbench"], concurrency=row["concurrency"])
        lines.append(
            f"| {row['concurrency']} | {row['rate']:.0f} | {pg['rate']:.0f} |"
            if pg
            else f"| {row['concurrency']} | {row['rate']:.0f} | |"
        )
    for row in results.get("ceiling_stream", []):
        lines.append(f"| {row['concurrency']} (no-op stream) | {row['rate']:.0f} | |")
    lines += _cpu_budget_lines(results)
    replay = results.get("replay")
    if replay:
        lines += [
            "",
            "## Loading an aggregate",
            "",
            f"{replay['events']:,} events: full replay {replay['full_replay_ms']:.1f} ms, from a snapshot"
            f" {replay['with_snapshot_ms']:.2f} ms (median of 7 loads each).",
        ]
    mem = results.get("memory")
    if mem:
        lines += [
            "",
            "## Memory",
            "",
            f"Server RSS {mem['rss_before_mib']:.0f} MiB before; {mem['rss_with_aggregates_mib']:.0f} MiB right"
            f" after one command to each of {mem['aggregates']:,} new aggregates"
            f" ({mem['touch_seconds']:.0f} s over SubmitStream);"
            f" {mem['rss_after_eviction_mib']:.0f} MiB once their workers left (idle timeout 5 s).",
        ]
    markdown.write_text("\n".join(lines) + "\n")
