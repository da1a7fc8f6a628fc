"""One principal flooding a command stream, another submitting one command
at a time: the second's latency, with and without a commands-per-second
limit (docs/security.md, "Quotas", quotes the results).

A real server (memory store, ``--auth``, API keys) is started for each
case; "acme" floods ``SubmitStreamPages`` from a process of its own (the
Python client's ``submit_stream``, new accounts without end) while
"globex", from this process, opens ``--probes`` accounts one ``Submit``
after another and records each one's latency. Cases: globex alone; with
acme flooding and no limit; with acme flooding and both tenants limited
by their role (``commands_per_second``, ``burst``).

Run::

    PYTHONPATH=$PWD .venv/bin/python -m bench.principal_fairness [--probes 300] [--rate 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.connection_memory import _wait_for_port
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.client import ChronicleClient, Command
from tests.support.processes import free_port
from tests.support.security import api_key_file, write

ACME_KEY = "chr_acme-fairness-bench-key-0123456789abcdef0123456789"
GLOBEX_KEY = "chr_globex-fairness-bench-key-0123456789abcdef01234567"
POLICY = """
[roles.tenant]
submit = ["bank.v1.OpenAccount"]
{rate}

[principals."acme"]
roles = ["tenant"]

[principals."globex"]
roles = ["tenant"]
"""


async def flood(address: str) -> None:
    """acme: new accounts over one stream, as fast as the server takes them."""

    async def endless() -> object:
        number = 0
        while True:
            number += 1
            yield Command(f"acme-{number}", bank.OpenAccount(owner="acme"))

    async with ChronicleClient.connect(address, token=ACME_KEY) as acme:
        async for _ in acme.submit_stream(endless()):  # type: ignore[arg-type]
            pass


async def probe(address: str, count: int) -> list[float]:
    """globex: ``count`` accounts opened one after another; each one's seconds."""
    latencies = []
    async with ChronicleClient.connect(address, token=GLOBEX_KEY) as globex:
        for number in range(count):
            began = time.perf_counter()
            await globex.submit(f"globex-{number}-{time.time_ns()}", bank.OpenAccount(owner="globex"))
            latencies.append(time.perf_counter() - began)
    return latencies


def case(folder: Path, probes: int, *, flooding: bool, rate: int) -> tuple[list[float], int]:
    """globex's latencies, and how many commands acme had run by the end."""
    limit = f"commands_per_second = {rate}\nburst = {2 * rate}" if rate else ""
    keys = api_key_file(folder / "keys.toml", [(ACME_KEY, "acme", []), (GLOBEX_KEY, "globex", [])])
    policy = write(folder / "policy.toml", POLICY.format(rate=limit))
    address = f"127.0.0.1:{free_port()}"
    serve = [
        *("serve", "--listen", address, "--database-url", "memory://", "--log-level", "WARNING"),
        *("--auth", "--api-keys-file", keys, "--policy-file", policy),
    ]
    server = subprocess.Popen([sys.executable, "-m", "service", *serve], stdout=subprocess.DEVNULL)
    flooder = None
    try:
        _wait_for_port(address)
        asyncio.run(probe(address, 20))  # warm
        if flooding:
            flooder = subprocess.Popen([sys.executable, "-m", "bench.principal_fairness", "--flood", address])
            time.sleep(3)  # the flood under way
        latencies = asyncio.run(probe(address, probes))
        flooded = asyncio.run(accounts_of_acme(address))
    finally:
        if flooder is not None:
            flooder.terminate()
            flooder.wait(30)
        server.terminate()
        server.wait(30)
    return latencies, flooded


async def accounts_of_acme(address: str) -> int:
    """The log's head: acme's accounts and globex's (a rough count of acme's work)."""
    async with ChronicleClient.connect(address, token=GLOBEX_KEY) as globex:
        submitted = await globex.submit(f"globex-end-{time.time_ns()}", bank.OpenAccount(owner="globex"))
        return submitted.events[0].envelope.position


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.principal_fairness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--probes", type=int, default=300)
    parser.add_argument("--rate", type=int, default=200, help="commands per second of the limited case")
    parser.add_argument("--flood", help=argparse.SUPPRESS)  # the flooding child: its server's address
    args = parser.parse_args()
    if args.flood:
        asyncio.run(flood(args.flood))
        return
    for name, flooding, rate in (
        ("globex alone", False, 0),
        ("acme flooding, no limit", True, 0),
        (f"acme flooding, {args.rate}/s burst {2 * args.rate} per tenant", True, args.rate),
    ):
        with tempfile.TemporaryDirectory() as folder:
            began = time.monotonic()
            latencies, head = case(Path(folder), args.probes, flooding=flooding, rate=rate)
            took = time.monotonic() - began
        print(
            f"{name}: globex p50 {statistics.median(latencies) * 1000:.1f} ms, p99"
            f" {percentile(latencies, 0.99) * 1000:.1f} ms, mean {statistics.mean(latencies) * 1000:.1f} ms over"
            f" {len(latencies)} submits; log head {head} after {took:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
