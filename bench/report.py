"""docs/benchmarks.md and its chart, from one run's results."""

from __future__ import annotations

import datetime
import operator
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench import paired
from bench.paired import FLOOR_OF, MODES
from bench.points import per_command


def _row(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def _cpu(row: dict[str, Any]) -> str:
    wall = row["wall"] or 1
    return f"{row['server_cpu'] / wall:.0%} / {row['db_cpu'] / wall:.0%} / {row['client_cpu'] / wall:.0%}"


def cpuper_command(row: dict[str, Any]) -> tuple[float, float, float]:
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
        ("no-op gRPC, stream in pages", _row(results.get("ceiling_pages", []), concurrency=64)),
        ("Chronicle unary Submit, 10,000 aggregates", _row(results["unary"], concurrency=64, aggregates=10_000)),
        ("Chronicle SubmitStream", _row(results["stream"], concurrency=64)),
        ("Chronicle SubmitStreamPages", _row(results.get("pages", []), concurrency=64)),
        ("Chronicle bank, unary (read model running)", _row(results.get("bank", []), mode="unary")),
        ("Chronicle bank, SubmitStream (read model running)", _row(results.get("bank", []), mode="stream")),
        ("Chronicle bank, SubmitStreamPages (read model running)", _row(results.get("bank", []), mode="pages")),
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
        server, db, clients = cpuper_command(row)
        total = server + db + clients
        lines.append(
            f"| {name} | {row['rate']:.0f} | {server:.0f} | {db:.0f} | {clients:.0f} | {total:.0f}"
            f" | {cores * 1e6 / total:,.0f}/s |"
        )
    pg64 = _row(results.get("pgbench", []), concurrency=64)
    if pg64 and pg64.get("completed"):
        lines.append(
            f"| pgbench single-row insert, 64 clients | {pg64['rate']:.0f} | | {per_command(pg64, 'db_cpu'):.0f}"
            " | | | |"
        )
    for row in results.get("peer", []):
        lines.append(
            f"| eventsourcing library, bank deposits, {row['threads']} threads (in-process: its CPU is the"
            f" client's) | {row['rate']:.0f} | | {per_command(row, 'db_cpu'):.0f}"
            f" | {per_command(row, 'client_cpu'):.0f} | | |"
        )
    return lines


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    checks: list[tuple[str, str, bool]] = []
    ceilings = {"unary": results["ceiling"], "stream": results["ceiling_stream"]}
    noop = {mode: _row(ceilings[FLOOR_OF[mode]], concurrency=64) for mode in MODES}
    tally = {
        "unary": _row(results["unary"], concurrency=64, aggregates=10_000),
        "stream": _row(results["stream"], concurrency=64),
        "pages": _row(results.get("pages", []), concurrency=64),
    }
    bank = {mode: _row(results.get("bank", []), mode=mode) for mode in MODES}
    names = {"unary": "unary Submit", "stream": "SubmitStream", "pages": "SubmitStreamPages"}
    floors = {
        "unary": "per call",
        "stream": "per streamed message",
        "pages": "per streamed message (one command a message)",
    }
    rounds = paired.medians(results["paired"]) if results.get("paired") else {}

    def judged(name: str, sweep: str, sweep_ratio: float, passes: Callable[[float], bool]) -> tuple[str, bool]:
        """The measured cell and the verdict: the paired rounds' median when
        the run has them (the sweep's single pass beside it), else the sweep's."""
        if name not in rounds:
            return sweep, passes(sweep_ratio)
        median, each = rounds[name]
        shown = ", ".join(f"{value:.2f}" for value in each)
        return f"{median:.2f} x (median of {len(each)} alternating rounds: {shown}; the sweep: {sweep})", passes(median)

    for key, domain, rows in (("tally", "tally", tally), ("bank", "bank, read model included", bank)):
        for mode in MODES:
            row, floor = rows[mode], noop[mode]
            if row is None or floor is None:
                continue
            ours, theirs = per_command(row, "server_cpu"), per_command(floor, "server_cpu")
            cell, ok = judged(
                f"server/noop {key} {mode}",
                f"{ours:.0f} / {theirs:.0f} µs = {ours / theirs:.2f} x",
                ours / theirs,
                lambda ratio: ratio <= 2,
            )
            checks.append(
                (
                    f"Server CPU per command ≤ 2 x the no-op gRPC server's {floors[mode]}: {names[mode]} ({domain})",
                    cell,
                    ok,
                )
            )
    pg64 = _row(results.get("pgbench", []), concurrency=64)
    if pg64 and pg64.get("completed"):
        insert = per_command(pg64, "db_cpu")
        for mode in MODES:
            row = bank[mode]
            if row is None:
                continue
            ours = per_command(row, "db_cpu")
            cell, ok = judged(
                f"db/pgbench bank {mode}",
                f"{ours:.0f} / {insert:.0f} µs = {ours / insert:.2f} x",
                ours / insert,
                lambda ratio: ratio <= 3,
            )
            checks.append(
                (f"PostgreSQL CPU per command ≤ 3 x pgbench's per single-row insert: {names[mode]} (bank)", cell, ok)
            )
    peers = results.get("peer", [])
    if peers:
        best = max(peers, key=lambda r: r["rate"])
        for mode, factor in (("pages", 3.0), ("stream", 3.0), ("unary", 1.5)):
            row = bank[mode]
            if row is None:
                continue
            ratio = row["rate"] / best["rate"]
            cell, ok = judged(
                f"rate/library bank {mode}",
                f"{row['rate']:.0f} / {best['rate']:.0f} = {ratio:.2f} x",
                ratio,
                partial(operator.le, factor),  # factor <= the ratio
            )
            checks.append((f"{names[mode]} (bank) ≥ {factor:g} x the eventsourcing library's deposits/s", cell, ok))
    for label, row in (
        ("unary, tally", tally["unary"]),
        ("stream, tally", tally["stream"]),
        ("unary, bank", bank["unary"]),
        ("stream, bank", bank["stream"]),
        ("stream in pages, tally", tally["pages"]),
        ("stream in pages, bank", bank["pages"]),
    ):
        if row is None:
            continue
        checks.append(
            (
                f"p99 latency at 64 in flight ≤ 5 x p50 ({label})",
                f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms: {row['p99_ms'] / row['p50_ms']:.1f} x",
                row["p99_ms"] <= 5 * row["p50_ms"],
            )
        )
    for mode in MODES:
        row = bank[mode]
        if row is None or "projection_catch_up_s" not in row:
            continue
        checks.append(
            (
                f"The read model keeps up ({names[mode]}, bank): caught up ≤ 2 s after the load stops",
                f"{row['projection_lag_at_end']} events behind at the end, caught up in"
                f" {row['projection_catch_up_s']:.2f} s",
                row["projection_catch_up_s"] <= 2.0,
            )
        )
        balances = row["balances"]
        checks.append(
            (
                f"Nothing acknowledged is lost ({names[mode]}, bank)",
                f"{balances['acknowledged']:,} deposits acknowledged, {balances['deposits_in_log']:,} in the log,"
                f" read model balances {balances['read_model_balances']:,}",
                balances["deposits_in_log"] >= balances["acknowledged"]
                and balances["read_model_balances"] == balances["deposits_in_log"],
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
    checks += read_targets(results.get("reads"))
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


def paired_lines(result: dict[str, Any] | None) -> list[str]:
    """The alternating rounds (bench/paired.py): each round's ratios and the
    points they come from."""
    if not result or not result["rounds"]:
        return []
    rounds = result["rounds"]
    found = paired.medians(result)
    header = " | ".join(f"round {index + 1}" for index in range(len(rounds)))
    lines = [
        "",
        "## The targets' ratios, in alternating rounds",
        "",
        f"Every side of every ratio above, measured in {len(rounds)} rounds with all the servers up at once"
        f" (each Chronicle on a database of its own), one {result['seconds']:g}-second point each at"
        f" {paired.CONCURRENCY} in flight, the order reversed every other round; the library at"
        f" {result['library_threads']} threads (its best in the sweep). The targets are judged by the median.",
        "",
        f"| ratio | {header} | median |",
        "|---|" + "---|" * (len(rounds) + 1),
    ]
    for name, (median, each) in found.items():
        lines.append(f"| {name} | " + " | ".join(f"{value:.2f}" for value in each) + f" | {median:.2f} |")
    lines += [
        "",
        f"| point | {header} |",
        "|---|" + "---|" * len(rounds),
    ]
    for name in paired.POINTS:
        cells = []
        for rows in rounds:
            row = rows.get(name)
            if row is None or not row.get("completed"):
                cells.append("")
                continue
            server = f", server {per_command(row, 'server_cpu'):.0f} µs" if "server_cpu" in row else ""
            database = f", PostgreSQL {per_command(row, 'db_cpu'):.0f} µs" if row.get("db_cpu") else ""
            cells.append(f"{row['rate']:,.0f}/s{server}{database}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


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
        ("Chronicle SubmitStreamPages", results.get("pages", [])),
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


def read_targets(reads: dict[str, Any] | None) -> list[tuple[str, str, bool]]:
    """Issue 19's targets for the read path, from ``bench/reads.py``'s run."""
    if not reads:
        return []
    rows = reads["sizes"]
    checks: list[tuple[str, str, bool]] = []
    largest = max(rows, key=lambda r: r["size"])
    for who, key in (("the Python client", "client"), ("a plain gRPC client (pages)", "stub")):
        worst = min(rows, key=lambda r: r[key]["rate"])
        checks.append(
            (
                f"Catch-up from a position to {who} ≥ 100,000 events/s (slowest log size)",
                f"{worst[key]['rate']:,.0f}/s at {worst['size']:,} events",
                worst[key]["rate"] >= 100_000,
            )
        )
    ratios = [(r["client"]["rate"] / r["psycopg"], r) for r in rows]
    ratio, row = min(ratios, key=lambda pair: pair[0])
    checks.append(
        (
            "…and ≥ 0.3 x a psycopg server-side cursor reading the same rows (same run)",
            f"{row['client']['rate']:,.0f} / {row['psycopg']:,.0f} = {ratio:.2f} x at {row['size']:,} events",
            ratio >= 0.3,
        )
    )
    filtered = min(rows, key=lambda r: r["filtered_ratio"])
    as_many = filtered["stub_as_many"]
    checks.append(
        (
            "A filtered catch-up (one aggregate type in ten) at least as fast per matching event"
            " (against an unfiltered catch-up of as many events, in alternating pairs; slowest log size)",
            f"{filtered['stub_filtered']['rate']:,.0f} against {as_many['rate']:,.0f} events/s"
            f" ({filtered['stub_filtered']['events']:,} events each): {filtered['filtered_ratio']:.2f} x"
            f" (median of the pairs) at {filtered['size']:,} events",
            filtered["filtered_ratio"] >= 1,
        )
    )
    worst_read = max(rows, key=lambda r: r["ratio"])
    checks.append(
        (
            "ReadAggregate of 100 events ≤ 2 x GetAggregate of the same (p50)",
            f"{worst_read['read_aggregate_ms']:.1f} / {worst_read['get_aggregate_ms']:.1f} ms"
            f" = {worst_read['ratio']:.2f} x",
            worst_read["ratio"] <= 2,
        )
    )
    rebuilt = [r for r in rows if "rebuild" in r]
    if rebuilt:
        rebuild = rebuilt[0]["rebuild"]
        checks.append(
            (
                "The bank read model rebuilt from the start ≥ 30,000 events/s",
                f"{rebuild['events']:,} events in {rebuild['seconds']:.1f} s: {rebuild['rate']:,.0f}/s",
                rebuild["rate"] >= 30_000,
            )
        )
    flat = reads["flatness"]
    smallest, largest = flat["sizes"][0], flat["sizes"][-1]
    checks.append(
        (
            "Catch-up flat as the log grows (the Python client's, largest log against the smallest, the sizes"
            " in turn; within 25 %)",
            f"{smallest['rate']:,.0f}/s at {smallest['size']:,}, {largest['rate']:,.0f}/s at"
            f" {largest['size']:,} events: {flat['ratio']:.2f} x (median of {len(largest['rates'])} rounds)",
            flat["ratio"] >= 0.75,
        )
    )
    return checks


def read_lines(reads: dict[str, Any] | None) -> list[str]:
    if not reads:
        return []
    rows, flat = reads["sizes"], reads["flatness"]
    lines = [
        "",
        "## Reading the log",
        "",
        "The log filled in the database (bank and box events over 10,000 aggregates, a tenth boxes), then,",
        f"for each size, a catch-up of the newest {rows[0]['window']:,} events: a plain psycopg client (binary,",
        "one server-side cursor, the store's own columns) as the ceiling; the Python client",
        "(`ChronicleClient.subscribe`, pages); a plain gRPC stub asking for pages, unfiltered and filtered to",
        "boxes, and unfiltered over as many of the newest events as the filtered one matched (the filtered",
        "catch-up's comparison: the same number of events, so the same share of a run's fixed costs; the",
        f"two in {len(rows[0]['stub_filtered']['rates'])} alternating pairs, compared by the median of the pairs'",
        "ratios, filtered against unfiltered);",
        "ReadAggregate (the client's `read`, pages) and GetAggregate of 100-event aggregates (p50",
        "of 40 each). Each catch-up figure is the median of three runs, rates over the whole run (the",
        "connection and the first page included). CPU columns: microseconds per event of the server and of",
        "the client process. First event: from the call to the stub's first page, unfiltered / filtered.",
        "",
        "| log size | psycopg rows/s | Python client events/s | server / client µs per event"
        " | stub events/s | stub, filtered | unfiltered, as many | paired ratio | first event ms"
        " | ReadAggregate ms | GetAggregate ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        client = row["client"]
        as_many = row["stub_as_many"]
        first = f"{row['stub']['first_ms']:.1f} / {row['stub_filtered']['first_ms']:.1f}"
        lines.append(
            f"| {row['size']:,} | {row['psycopg']:,.0f} | {client['rate']:,.0f} | {client['server_us']:.1f} /"
            f" {client['client_us']:.1f} | {row['stub']['rate']:,.0f} | {row['stub_filtered']['rate']:,.0f}"
            f" | {as_many['rate']:,.0f} ({as_many['events']:,} events) | {row['filtered_ratio']:.2f}"
            f" | {first}"
            f" | {row['read_aggregate_ms']:.1f} | {row['get_aggregate_ms']:.1f} |"
        )
    for row in rows:
        if "rebuild" in row:
            rebuild = row["rebuild"]
            lines += [
                "",
                f"The bank read model, started by a server on a log of {rebuild['events']:,} events it had not read,"
                f" applied them in {rebuild['seconds']:.1f} s ({rebuild['rate']:,.0f} events/s, documents written"
                f" included; the server's CPU {rebuild['server_cpu'] / rebuild['events'] * 1e6:.0f} µs per event).",
            ]
    wide = reads.get("wide_rebuild")
    if wide is not None:
        lines += [
            "",
            f"A read model larger than its document cache: the same read model over {wide['events']:,} events of"
            " 90,000 accounts and 50,000 owners (about 140,000 documents against a cache of 10,000, so most"
            f" batches read their documents from the database), rebuilt at {wide['rate']:,.0f} events/s (the"
            f" server's CPU {wide['server_cpu'] / wide['events'] * 1e6:.0f} µs per event).",
        ]
    lines += [
        "",
        "The sizes above are measured one after the other, minutes apart. Then, with a server on each size's",
        f"log at once, the Python client's catch-up of each window in turn, {len(flat['sizes'][0]['rates'])} rounds"
        " (the order rotating): "
        + ", ".join(f"{entry['rate']:,.0f} events/s at {entry['size']:,}" for entry in flat["sizes"])
        + f" (medians); the largest log against the smallest, median of the rounds: {flat['ratio']:.2f} x.",
    ]
    return lines


# Sections of docs/benchmarks.md that other runs write (bench/growth.py):
# ``make bench`` rewrites the document and keeps them as they are.
KEPT_SECTIONS = ("## Stores that grow",)


def section_of(text: str, heading: str) -> str:
    """The section under ``heading`` (to the next ``## ``), or ''."""
    _, found, after = text.partition("\n" + heading + "\n")
    if not found:
        return ""
    return heading + "\n" + after.split("\n## ", 1)[0].rstrip("\n") + "\n"


def replace_section(text: str, heading: str, section: str) -> str:
    """``text`` with the section under ``heading`` replaced by ``section``
    (added at the end if it had none)."""
    old = section_of(text, heading)
    if old:
        return text.replace(old, section.rstrip("\n") + "\n", 1)
    return text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"


def write(results: dict[str, Any], markdown: Path, png: Path) -> None:
    chart(results, png)
    previous = markdown.read_text() if markdown.exists() else ""
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
        "  90 % of commands to existing aggregates and 10 % to new ones; the bank points run the bank",
        "  example (deposits of 1 over 1,000 accounts, its read model `bank.balances_by_owner` running",
        "  in the server), and the peer is the `eventsourcing` library doing the same deposits in-process",
        "  on the same PostgreSQL.",
        "- Checked at every Chronicle point: each acknowledged command is recorded with its events; at",
        "  the bank points, the read model's balances equal the deposits in the log.",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {value} | {'yes' if ok else '**no**'} |" for name, value, ok in targets(results)]
    lines += paired_lines(results.get("paired"))
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
    for name, rows in (("SubmitStream", results["stream"]), ("SubmitStreamPages", results.get("pages", []))):
        for row in rows:
            lines.append(
                f"| {name} | {row['concurrency']} | {row['rate']:.0f} | {row['rate']:.0f} | {row['p50_ms']:.1f}"
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
    for row in results.get("ceiling_pages", []):
        lines.append(f"| {row['concurrency']} (no-op stream in pages) | {row['rate']:.0f} | |")
    if results.get("bank"):
        lines += ["", "## The bank example, with its read model", ""]
        lines += [
            "| mode | commands/s | p50 ms | p99 ms | CPU server / db / clients | read model behind at the end"
            " | caught up after |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in results["bank"]:
            lines.append(
                f"| {row['mode']} | {row['rate']:.0f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {_cpu(row)}"
                f" | {row['projection_lag_at_end']} events | {row['projection_catch_up_s']:.2f} s |"
            )
        for row in results.get("peer", []):
            lines.append(
                f"| eventsourcing library, {row['threads']} threads | {row['rate']:.0f} | | |"
                f" {row['client_cpu'] / row['wall']:.0%} (in-process) / {row['db_cpu'] / row['wall']:.0%} / none | | |"
            )
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
    lines += read_lines(results.get("reads"))
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
    markdown.write_text(keep_sections("\n".join(lines) + "\n", previous=previous))


def keep_sections(text: str, *, previous: str) -> str:
    """``text`` with the KEPT_SECTIONS ``previous`` had."""
    for heading in KEPT_SECTIONS:
        kept = section_of(previous, heading)
        if kept:
            text = replace_section(text, heading, kept)
    return text
