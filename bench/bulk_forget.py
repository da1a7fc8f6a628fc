"""Forgetting a tenant's aggregates: one ForgetAggregate call per aggregate
against one ForgetAggregates call by prefix (docs/security.md, "Tenant
offboarding"), through a real server process with encryption at rest, on
SQLite and on a PostgreSQL of its own (default durability).

Each run opens COUNT accounts under a tenant prefix of its own (16 commands
in flight), then forgets them: one call at a time (and, on SQLite, with 8
calls in flight), or with ForgetAggregates at a batch size. The bank's
read model names each account in two documents, which each forget deletes
as well. Not part of `make bench`:

    .venv/bin/python -m bench.bulk_forget [COUNT]
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import servers
from chronicle.v1 import admin_service_pb2 as admin
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.client import ChronicleClient
from service.store.encryption import new_master_key

IN_FLIGHT = 16


async def open_accounts(client: ChronicleClient, prefix: str, count: int) -> None:
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(n: int) -> None:
        async with gate:
            await client.submit(f"{prefix}acc-{n:05}", bank.OpenAccount(owner=f"owner {n}"))

    await asyncio.gather(*(one(n) for n in range(count)))


async def one_at_a_time(client: ChronicleClient, prefix: str, count: int, *, in_flight: int = 1) -> float:
    stub = client.admin._stub
    gate = asyncio.Semaphore(in_flight)

    async def one(n: int) -> None:
        async with gate:
            await stub.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id=f"{prefix}acc-{n:05}"))

    started = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(count)))
    return count / (time.perf_counter() - started)


async def by_prefix(client: ChronicleClient, prefix: str, count: int, batch_size: int) -> float:
    started = time.perf_counter()
    done = await client.admin.forget_aggregates(prefix=prefix, confirm=count, batch_size=batch_size)
    elapsed = time.perf_counter() - started
    assert (done.forgotten, done.remaining) == (count, 0), done
    return count / elapsed


async def measure(address: str, count: int, *, sqlite: bool) -> dict[str, float]:
    results: dict[str, float] = {}
    async with ChronicleClient.connect(address) as client:
        runs: list[tuple[str, int, int]] = [("one-at-a-time", 1, 0)]
        if sqlite:
            runs.append(("8-in-flight", 8, 0))
        runs += [("bulk-batch-100", 0, 100), ("bulk-batch-1000", 0, 1000)]
        for index, (name, in_flight, batch) in enumerate(runs):
            prefix = f"t{index}:"
            await open_accounts(client, prefix, count)
            await asyncio.sleep(2)  # the read model catches up: its documents are deleted too
            if batch:
                results[name] = await by_prefix(client, prefix, count, batch)
            else:
                results[name] = await one_at_a_time(client, prefix, count, in_flight=in_flight)
    return {name: round(rate, 1) for name, rate in results.items()}


@contextmanager
def served(database_url: str, keys: Path) -> Iterator[str]:
    with servers.chronicle(database_url, "--master-key-file", str(keys), "--anonymous-admin") as server:
        yield server.address


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    folder = Path(tempfile.mkdtemp(prefix="bulk-forget-"))
    keys = folder / "master.keys"
    keys.write_text(f"k1:{new_master_key()}\n")
    keys.chmod(0o600)
    report: dict[str, object] = {"aggregates": count, "unit": "aggregates forgotten per second"}
    with served(f"sqlite:///{folder}/events.db", keys) as address:
        report["sqlite"] = asyncio.run(measure(address, count, sqlite=True))
    with servers.postgres() as (_, database_url), served(database_url, keys) as address:
        report["postgres"] = asyncio.run(measure(address, count, sqlite=False))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
