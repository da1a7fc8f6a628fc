"""Two versions of the server, measured apart: server CPU per command of
code A against code B on one PostgreSQL cluster, in alternating rounds
beside the no-op gRPC server (``docs/performance.md`` quotes its results).

Prepare each version as a directory of its own, protos generated::

    git archive REV | tar -x -C /tmp/ab/REV
    (cd /tmp/ab/REV && PYTHONPATH=$PWD .venv/bin/python tools/gen_protos.py)

then run from a directory that holds no ``service`` package (``python -m
service`` puts the current directory before PYTHONPATH, so run from the
repository, both servers would be the working tree)::

    cd /tmp && /path/to/repo/.venv/bin/python -m bench.ab /tmp/ab/A /tmp/ab/B --domain bank --mode stream

(with the repository on PYTHONPATH for ``bench`` itself, or its venv's
editable install)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics

from bench import bank, load, servers
from bench.memory import touch
from bench.points import measure, per_command

TALLY_AGGREGATES = 10_000


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="directory of version A (on PYTHONPATH for its server)")
    parser.add_argument("b", help="directory of version B")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mode", default="stream", help="the load's mode: stream, unary or pages")
    parser.add_argument("--domain", default="tally", choices=("tally", "bank"))
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    bank_domain = args.domain == "bank"
    plugin = bank.BANK_PLUGIN_ARGS if bank_domain else servers.BENCH_PLUGIN_ARGS
    aggregates = bank.ACCOUNTS if bank_domain else TALLY_AGGREGATES
    prefix = "acct" if bank_domain else "agg"
    with servers.postgres() as (cluster, _), contextlib.ExitStack() as stack:
        postmaster = servers.postmaster_pid(cluster)
        chronicles = {}
        for name, directory in (("A", args.a), ("B", args.b)):
            url = cluster.create_database()
            os.environ["PYTHONPATH"] = directory
            try:
                server = stack.enter_context(servers.chronicle(url, *plugin, "--idle-timeout", "600"))
            finally:
                os.environ.pop("PYTHONPATH", None)
            if bank_domain:
                asyncio.run(bank.open_accounts(server.address, aggregates, prefix))
            else:
                asyncio.run(touch(server.address, aggregates, prefix=prefix))
            servers.settle(url)
            chronicles[name] = (server, url)
        noop = stack.enter_context(servers.noop())
        cpu: dict[str, list[float]] = {"A": [], "B": [], "noop": []}
        for round_ in range(args.rounds):
            for name in ("noop", "A", "B") if round_ % 2 == 0 else ("B", "A", "noop"):
                if name == "noop":
                    row = measure(load.LoadSpec(noop.address, args.mode, 64, args.seconds), noop.pid, None)
                else:
                    server, url = chronicles[name]
                    spec = load.LoadSpec(
                        server.address,
                        args.mode,
                        64,
                        args.seconds,
                        aggregates=aggregates,
                        domain=args.domain,
                        prefix=prefix,
                    )
                    row = measure(spec, server.pid, postmaster, database_url=url)
                cpu[name].append(per_command(row, "server_cpu"))
            print(round_, {name: round(values[-1]) for name, values in cpu.items()}, flush=True)
        for name, values in cpu.items():
            print(name, "median µs", round(statistics.median(values)), [round(v) for v in values], flush=True)


if __name__ == "__main__":
    main()
