"""Memory per cached aggregate, for sizing ``--max-workers`` against a
container's memory limit (docs/deployment.md quotes the results).

Two measurements for each state size (a bank account whose owner is a few
bytes, and one whose owner is 2,000 bytes):

- ``tracemalloc``: what Python objects the router's cache holds per idle
  aggregate, in process over the memory store (the objects freed when the
  cached aggregates are dropped, so the store's own copy is not counted);
- RSS: how much a real server on PostgreSQL grows per aggregate opened
  (the bank plugin alone, idle timeout an hour, so every one stays cached),
  which adds the allocators' overhead and what the process keeps around
  each command.

Run::

    PYTHONPATH=$PWD .venv/bin/python -m bench.cache_memory [--aggregates 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
import tracemalloc
import uuid

from bench import bank as bank_load
from bench.bank import BANK_PLUGIN_ARGS
from bench.machine import rss_bytes
from bench.servers import chronicle, postgres
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins.registry import Registry
from service.processing.commands import CommandRequest
from service.processing.executor import CommandExecutor
from service.processing.router import Router
from service.store.base import Store
from service.store.memory import MemoryStore

OWNER_SIZES = (3, 2000)


async def held_in_process(count: int, owner_size: int) -> float:
    """Bytes of Python objects per cached idle aggregate (tracemalloc)."""
    registry = Registry([bank_account.plugin])
    spec = registry.command(bank.OpenAccount.DESCRIPTOR.full_name)
    assert spec is not None
    router = Router(CommandExecutor(Store.of(MemoryStore()), registry), idle_timeout=3600, max_workers=count + 1)
    tracemalloc.start()
    try:
        for start in range(0, count, 256):
            await asyncio.gather(
                *(
                    router.submit(
                        CommandRequest(
                            command_id=str(uuid.uuid4()),
                            aggregate_id=f"acc-{n}",
                            spec=spec,
                            message=bank.OpenAccount(owner=owner_of(n, owner_size)),
                        )
                    )
                    for n in range(start, min(start + 256, count))
                )
            )
        gc.collect()
        cached = tracemalloc.get_traced_memory()[0]
        assert router.drop_idle(idle_before=float("inf")) == count
        gc.collect()
        dropped = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        await router.close()
    return (cached - dropped) / count


def owner_of(n: int, size: int) -> str:
    """An owner of its own per account: the bank's read model keeps a
    document per owner listing their accounts, which one shared owner
    would grow without bound (and rewrite whole on every event)."""
    return f"{n}-".ljust(size, "x")


async def open_accounts(address: str, count: int, owner_size: int) -> None:
    """``count`` accounts of new ids, each with an owner of its own ``owner_size`` characters long."""
    run = uuid.uuid4().hex[:6]
    await bank_load.open_accounts(address, count, f"mem-{run}", in_flight=64, owner=lambda n: owner_of(n, owner_size))


def rss_per_aggregate(count: int, owner_size: int, max_workers: int) -> tuple[float, float]:
    """The server's RSS before (MiB) and its growth per aggregate (bytes)."""
    options = ("--idle-timeout", "3600", "--max-workers", str(max_workers))
    with postgres() as (_, url), chronicle(url, *BANK_PLUGIN_ARGS, *options) as server:
        asyncio.run(open_accounts(server.address, 2000, owner_size))  # every code path warm first
        time.sleep(2)
        before = rss_bytes(server.pid)
        asyncio.run(open_accounts(server.address, count, owner_size))
        time.sleep(2)
        after = rss_bytes(server.pid)
    return before / 2**20, (after - before) / count


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cache_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--aggregates", type=int, default=20_000)
    parser.add_argument("--no-server", action="store_true", help="tracemalloc only (no PostgreSQL)")
    args = parser.parse_args()
    for owner_size in OWNER_SIZES:
        held = asyncio.run(held_in_process(args.aggregates, owner_size))
        line = f"owner of {owner_size} bytes: Python objects {held:,.0f} bytes per cached aggregate"
        if not args.no_server:
            base, grown = rss_per_aggregate(args.aggregates, owner_size, args.aggregates + 2000)
            # The same with a cache of 1,000: what the server grows by
            # besides the cache (the bank read model's document cache, up to
            # 10,000 documents; what the allocators keep).
            _, uncached = rss_per_aggregate(args.aggregates, owner_size, 1000)
            line += (
                f"; server RSS {base:.0f} MiB before, +{grown:,.0f} bytes per aggregate cached"
                f" (+{uncached:,.0f} with --max-workers 1000)"
            )
        print(line, flush=True)


if __name__ == "__main__":
    main()
