"""Versions of the server, measured apart on the read model larger than its
cache (``bench.reads``' point: the bank read model rebuilt over 300,000
events of 100,000 aggregates): the server's CPU per event of each, in
alternating rounds on one filled database, the read model emptied before
each run (``docs/performance.md`` quotes its results).

Prepare each version as a directory of its own, protos generated, as
``bench.ab``'s docstring says, then run from a directory that holds no
``service`` package::

    cd /tmp && /path/to/repo/.venv/bin/python -m bench.rebuild_ab /tmp/ab/A /tmp/ab/B --rounds 5

The first directory's server makes the schema. ``--profile DIR`` also
records each run's server with py-spy (raw, 200 Hz, the whole rebuild)
into ``DIR/<version>-<round>.txt``."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import psycopg

from bench import bank, servers
from bench.reads import PLUGIN_ARGS, WIDE_ACCOUNTS, WIDE_EVENTS, fill, rebuild_rate

# Long enough for a whole rebuild on a slow hour (py-spy stops when the server does).
PROFILE_SECONDS = 600


def _emptied(database_url: str) -> None:
    """The read model back to nothing, as a rebuild starts from; its dead
    rows vacuumed, so each run writes into a table in the same shape."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE chronicle.projection_checkpoints SET position = 0 WHERE name = %s", (bank.PROJECTION,))
        conn.execute("DELETE FROM chronicle.projection_documents WHERE projection = %s", (bank.PROJECTION,))
        conn.execute("VACUUM ANALYZE chronicle.projection_documents")
        conn.execute("CHECKPOINT")


def _filled(database_url: str, first: str) -> None:
    os.environ["PYTHONPATH"] = first
    with servers.chronicle(database_url, *PLUGIN_ARGS):
        pass  # the schema, by the first version
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


def _one_run(database_url: str, directory: str, profile: Path | None) -> float:
    """One rebuild by ``directory``'s server: its CPU µs per event."""
    _emptied(database_url)
    os.environ["PYTHONPATH"] = directory
    with servers.chronicle(database_url, *PLUGIN_ARGS) as server:
        spy = None
        if profile is not None:
            py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            command = [py_spy, "record", "-r", "200", "-f", "raw", "-d", str(PROFILE_SECONDS)]
            spy = subprocess.Popen(
                [*command, "-p", str(server.pid), "-o", str(profile)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        measured = rebuild_rate(database_url, server.pid)
    if spy is not None:
        spy.wait()
    return measured["server_cpu"] / measured["events"] * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rebuild_ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("directories", nargs="+", help="each version's directory (on PYTHONPATH for its server)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", type=Path, default=None, help="a directory for py-spy's records")
    args = parser.parse_args()
    names = [Path(directory).name for directory in args.directories]
    cpu: dict[str, list[float]] = {name: [] for name in names}
    with servers.postgres() as (_, database_url):
        _filled(database_url, args.directories[0])
        for round_ in range(args.rounds):
            order = list(zip(args.directories, names, strict=True))
            for directory, name in order if round_ % 2 == 0 else reversed(order):
                profile = None if args.profile is None else args.profile / f"{name}-{round_}.txt"
                cpu[name].append(_one_run(database_url, directory, profile))
                print(f"round {round_} {name}: {cpu[name][-1]:.1f} µs per event", flush=True)
    for name, values in cpu.items():
        runs = " / ".join(f"{value:.1f}" for value in values)
        print(f"{name}: median {statistics.median(values):.1f} µs per event (runs {runs})", flush=True)


if __name__ == "__main__":
    main()
