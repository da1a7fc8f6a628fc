"""The targets' ratios, measured in alternating rounds.

A ratio is only as good as the moment its two sides were measured in: the
sweep measures the no-op server minutes before Chronicle, and the
``eventsourcing`` library and pgbench minutes after, and on a shared
virtual machine the host's speed drifts by more than any change to
Chronicle in that time (two sweeps of one commit, back to back, gave
SubmitStream 2.47 x and 4.33 x the no-op). Here every server the targets
compare is up at once, each on a database of its own in the one cluster,
and each round measures every side of every ratio in turn, one short
point each, the order reversed every other round so that a steady drift
weighs on both sides alike. Each round gives its own ratios; the report
judges the targets by their median and shows every round's.
"""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

from bench import bank, load, memory, peer, pgbench, servers
from bench.points import measure, per_command
from tests.support.postgres import Cluster

ROUNDS = 3
CONCURRENCY = 64
TALLY_AGGREGATES = 10_000
# The ways of submitting that the bench measures (bench/load.py).
MODES = ("unary", "stream", "pages")
# A page carries many commands each way: its floor per command is still
# gRPC's per streamed message, what SubmitStream pays.
FLOOR_OF = {"unary": "unary", "stream": "stream", "pages": "stream"}
# Each round's points, in the order of an even round (odd rounds reverse it).
POINTS = (
    "noop unary",
    "noop stream",
    "tally unary",
    "tally stream",
    "tally pages",
    "bank unary",
    "bank stream",
    "bank pages",
    "library",
    "pgbench",
)


def run(
    cluster: Cluster, postmaster: int, *, seconds: float, library_threads: int, rounds: int = ROUNDS
) -> dict[str, Any]:
    """Every round's points (``POINTS``: rows as ``bench.points.measure``
    makes them, the library's and pgbench's as theirs) and its ratios."""
    tally_url, bank_url, others_url = (cluster.create_database() for _ in range(3))
    measured: list[dict[str, Any]] = []
    with (
        servers.noop() as noop,
        servers.chronicle(tally_url, *servers.BENCH_PLUGIN_ARGS, "--idle-timeout", "600") as tally,
        servers.chronicle(bank_url, *bank.BANK_PLUGIN_ARGS, "--idle-timeout", "600") as bank_server,
    ):
        asyncio.run(memory.touch(tally.address, TALLY_AGGREGATES, prefix="agg"))
        asyncio.run(bank.open_accounts(bank_server.address, bank.ACCOUNTS, "acct"))
        bank.caught_up(bank_url)
        for url in (tally_url, bank_url):
            servers.settle(url)

        def spec(address: str, mode: str, **more: Any) -> load.LoadSpec:
            return load.LoadSpec(address, mode, CONCURRENCY, seconds, **more)

        def take(name: str) -> dict[str, Any]:
            side, _, mode = name.partition(" ")
            if side == "library":
                return peer.deposits(
                    others_url, postmaster, accounts=bank.ACCOUNTS, threads=library_threads, seconds=seconds
                )
            if side == "pgbench":
                return pgbench.insert_point(cluster, others_url, CONCURRENCY, seconds, postmaster)
            if side == "noop":
                return measure(spec(noop.address, mode), noop.pid, None)
            if side == "tally":
                return measure(
                    spec(tally.address, mode, aggregates=TALLY_AGGREGATES),
                    tally.pid,
                    postmaster,
                    database_url=tally_url,
                )
            return measure(
                spec(bank_server.address, mode, aggregates=bank.ACCOUNTS, domain="bank", prefix="acct"),
                bank_server.pid,
                postmaster,
                database_url=bank_url,
            )

        for index in range(rounds):
            order = POINTS if index % 2 == 0 else tuple(reversed(POINTS))
            print(f"  round {index + 1} of {rounds}:", flush=True)
            rows = {name: take(name) for name in order}
            measured.append(rows)
            print(f"  round {index + 1}: {_described(ratios(rows))}", flush=True)
    return {"rounds": measured, "seconds": seconds, "library_threads": library_threads}


def ratios(rows: dict[str, Any]) -> dict[str, float]:
    """One round's ratios, by name: ``server/noop {domain} {mode}`` (the
    server's CPU per command against the no-op server's per call or
    streamed message), ``rate/library bank {mode}`` (deposits per second
    against the library's) and ``db/pgbench bank {mode}`` (PostgreSQL's CPU
    per command against pgbench's per insert)."""
    found: dict[str, float] = {}
    for domain in ("tally", "bank"):
        for mode in MODES:
            row, floor = rows.get(f"{domain} {mode}"), rows.get(f"noop {FLOOR_OF[mode]}")
            if row and floor and row["completed"] and floor["completed"]:
                found[f"server/noop {domain} {mode}"] = per_command(row, "server_cpu") / per_command(
                    floor, "server_cpu"
                )
    library, inserts = rows.get("library"), rows.get("pgbench")
    for mode in MODES:
        row = rows.get(f"bank {mode}")
        if not row or not row["completed"]:
            continue
        if library and library["rate"]:
            found[f"rate/library bank {mode}"] = row["rate"] / library["rate"]
        if inserts and inserts.get("completed") and inserts.get("db_cpu"):
            found[f"db/pgbench bank {mode}"] = per_command(row, "db_cpu") / per_command(inserts, "db_cpu")
    return found


def medians(result: dict[str, Any]) -> dict[str, tuple[float, list[float]]]:
    """Each ratio's median over the rounds, with every round's value."""
    per_round = [ratios(rows) for rows in result["rounds"]]
    names = [name for name in per_round[0] if all(name in r for r in per_round)] if per_round else []
    return {name: (statistics.median(r[name] for r in per_round), [r[name] for r in per_round]) for name in names}


def _described(found: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.2f}" for name, value in found.items())
