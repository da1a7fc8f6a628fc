"""Where the server's event loop spends its CPU under the benchmark's load.

    python -m bench.profile_server                      # SubmitStream, 64 in flight
    python -m bench.profile_server --mode unary --seconds 10
    python -m bench.profile_server --mode pages         # SubmitStreamPages

Starts a throwaway PostgreSQL and a Chronicle server (the ``bench`` plugin)
in a child process whose event-loop thread runs under cProfile, measured
with thread CPU time, only over the load's measured window (the load
generator's ``sample`` hook switches it on and off). Prints the loop
thread's CPU per command, its share by layer, and the functions with the
most CPU of their own. cProfile slows Python code down (roughly doubles
it), so read the shares, not the absolute microseconds; the CPU per command
without a profiler is in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import logging
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import load, memory, servers
from tests.support.processes import free_port

# Layers, by where a function is defined; the first match wins.
_LAYERS = (
    ("service/api/", "API: interceptors, decoding, encoding, the stream"),
    ("service/processing/", "processing: middleware, router, worker, executor, handler"),
    ("service/store/", "store: the loop's side of group commit and loads"),
    ("service/", "service: other (metrics, logs, security)"),
    ("grpc/", "gRPC's Python layer"),
    ("asyncio/", "asyncio: scheduling tasks and callbacks"),
    ("google/protobuf", "protobuf"),
)


def _layer(filename: str, function: str) -> str:
    for fragment, name in _LAYERS:
        if fragment in filename:
            return name
    if filename == "~" and "_contextvars.Context" in function:
        # Callbacks of gRPC's Cython core (and asyncio's) run inside
        # Context.run; their own time is C code that cProfile cannot see into.
        return "gRPC core callbacks and other C code run by the loop"
    return "other (standard library, C built-ins)"


def _serve(database_url: str, address: str, stats_path: str) -> None:
    """The child: serve, and profile the loop thread between the 'start'
    and 'stop' lines on stdin."""
    from service import app as application
    from service.settings import settings_from

    logging.basicConfig(level=logging.WARNING)
    settings = settings_from(
        [
            "--listen",
            address,
            "--database-url",
            database_url,
            *servers.BENCH_PLUGIN_ARGS,
            "--idle-timeout",
            "600",
        ],
        {},
    )
    profiler = cProfile.Profile(time.thread_time)

    async def main() -> None:
        app = await application.start(settings)
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def control() -> None:
            for line in sys.stdin:
                word = line.strip()
                if word == "start":
                    loop.call_soon_threadsafe(profiler.enable)
                elif word == "stop":
                    loop.call_soon_threadsafe(profiler.disable)
                    loop.call_soon_threadsafe(done.set)
                    return

        threading.Thread(target=control, daemon=True).start()
        await done.wait()
        profiler.dump_stats(stats_path)
        await app.stop(grace=1)

    asyncio.run(main())


def _report(stats_path: str, commands: int, top: int) -> str:
    listing = io.StringIO()
    stats = pstats.Stats(stats_path, stream=listing)
    raw = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in raw.values())
    layers: dict[str, float] = {}
    for (filename, _line, function), entry in raw.items():
        name = _layer(filename, function)
        layers[name] = layers.get(name, 0.0) + entry[2]
    out = io.StringIO()
    out.write(
        f"event-loop thread: {total:.2f} s CPU under cProfile for {commands:,} commands"
        f" = {total / max(commands, 1) * 1e6:.0f} µs per command (profiled)\n\n"
    )
    out.write("share of the loop's CPU by layer (own time of the functions in it):\n")
    for name, seconds in sorted(layers.items(), key=lambda item: -item[1]):
        out.write(f"  {seconds / total:6.1%}  {name}\n")
    out.write(f"\nthe {top} functions with the most CPU of their own:\n")
    stats.sort_stats("tottime").print_stats(top)
    out.write(listing.getvalue().split("\n\n", 2)[-1])
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_server")
    parser.add_argument("--mode", choices=("stream", "pages", "unary"), default="stream")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--aggregates", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--save", type=Path, help="keep the raw cProfile stats (for pstats or snakeviz) here")
    parser.add_argument("--serve", nargs=3, metavar=("URL", "ADDRESS", "STATS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(*args.serve)
        return 0

    with servers.postgres() as (_cluster, database_url), tempfile.TemporaryDirectory() as scratch:
        address = f"127.0.0.1:{free_port()}"
        stats_path = str(Path(scratch) / "server.prof")
        child = subprocess.Popen(
            [sys.executable, "-m", "bench.profile_server", "--serve", database_url, address, stats_path],
            stdin=subprocess.PIPE,
            text=True,
        )
        assert child.stdin is not None
        control = child.stdin
        try:
            servers.wait_until_serving(address, child)
            # As in the benchmark: the aggregates exist and are cached.
            asyncio.run(memory.touch(address, args.aggregates, prefix="agg"))
            servers.settle(database_url)
            edges = iter(("start", "stop"))

            def toggle() -> None:
                control.write(next(edges) + "\n")
                control.flush()

            spec = load.LoadSpec(address, args.mode, args.concurrency, args.seconds, aggregates=args.aggregates)
            result = load.run(spec, toggle)
            child.wait(60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        print(
            f"{args.mode} at {args.concurrency} in flight over {args.aggregates:,} aggregates:"
            f" {result.rate:.0f} commands/s under the profiler\n"
        )
        print(_report(stats_path, result.completed, args.top))
        if args.save:
            shutil.copyfile(stats_path, args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
