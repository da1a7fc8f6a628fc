"""``make scale``: the scale-out figures of docs/scaling.md, in one run.

    python -m bench.scale                # about four minutes
    python -m bench.scale --seconds 5    # shorter load phases

Starts a throwaway PostgreSQL (default durability) and real server
processes on it, and measures:

1. **Routing.** Three replicas, 64 clients on 256 shared aggregates (a
   command each, as fast as they are answered), twice from cold replicas:
   with routing clients (``ChronicleClient(routing=True)``), then with
   plain clients spread over the replicas as a connection balancer would
   (client i on replica i mod 3). From each replica's metrics: conflicts
   (appends that lost a version race and were decided again) and aggregate
   loads from the store (a cold load, or a reload after a conflict).
2. **A replica killed under load.** Three replicas, 32 routing clients;
   one replica gets SIGKILL. How long until the survivors own its
   partitions (by the topology), how long until the clients' own topology
   has followed, and the invariant checker over every command
   (tests/support/history.py): nothing acknowledged is lost or doubled.
3. **A projection in three replicas.** Every call of its handler is written
   down (bench/counted.py): how many times each event was applied in the
   whole cluster, before and after the replica running it is killed.
4. **Sixteen replicas** share 64 partitions (then four leave).

Writes the figures between the markers of docs/scaling.md and the raw
numbers to docs/scaling.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import wrappers_pb2

from bench import machine, servers
from bench import plugin as bench_plugin
from chronicle.v1 import (
    cluster_service_pb2,
    cluster_service_pb2_grpc,
    command_service_pb2,
    projection_service_pb2,
    projection_service_pb2_grpc,
)
from service.client import ChronicleClient, RetryPolicy
from service.client.errors import RemoteError
from service.cluster.leases import fair_shares
from service.plugins.registry import Registry
from tests.support.history import History, Operation, check_invariants
from tests.support.processes import Replica

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = ("--no-discover-plugins", "--plugin", "bench.plugin", "--log-level", "WARNING")
REGISTRY = Registry([bench_plugin.plugin])
PATIENT = RetryPolicy(max_attempts=30, initial_backoff=0.02, max_backoff=0.5)
BEGIN, END = "<!-- scale:begin -->", "<!-- scale:end -->"


# -- replicas ---------------------------------------------------------------------


@contextmanager
def replicas(database_url: str, count: int, logs: Path, *extra: str, metrics: bool = False) -> Iterator[list[Replica]]:
    """``count`` server processes on one database, started together."""
    started: list[Replica] = []
    logs.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        for n in range(count):
            server = Replica(
                database_url, log_path=logs / f"replica-{n}.log", extra=[*PLUGINS, *extra], metrics=metrics
            )
            stack.callback(server.close)
            server.start(wait=False)
            started.append(server)
        for server in started:
            server.wait_until_serving(timeout=120)
        yield started


def topology(address: str) -> cluster_service_pb2.Topology:
    with grpc.insecure_channel(address) as channel:
        stub = cluster_service_pb2_grpc.ClusterServiceStub(channel)
        response: cluster_service_pb2.GetTopologyResponse = stub.GetTopology(
            cluster_service_pb2.GetTopologyRequest(), timeout=5
        )
    return response.topology


def shares(found: cluster_service_pb2.Topology) -> list[int]:
    owners = list(found.partition_owners)
    return sorted(owners.count(member.member_id) for member in found.members)


def fair(found: cluster_service_pb2.Topology, members: int) -> bool:
    """``members`` members, each holding exactly its fair share: the shares
    are within one of each other, and no partition will move any more."""
    owners = list(found.partition_owners)
    expected = fair_shares([m.member_id for m in found.members], found.partition_count)
    return len(found.members) == members and all(owners.count(m) == n for m, n in expected.items())


def agreed(servers: Sequence[Replica]) -> bool:
    """Every replica's topology fair and the same: a client seeded on any of
    them routes alike (a replica's view is up to a heartbeat old)."""
    found = [topology(server.address) for server in servers]
    return all(fair(t, len(servers)) for t in found) and len({tuple(t.partition_owners) for t in found}) == 1


def wait_for(check: Callable[[], bool], *, within: float, poll: float = 0.05) -> float:
    """Seconds until ``check()`` held (polled), or raise after ``within``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within:
            raise TimeoutError(f"not within {within} s")
        time.sleep(poll)
    return time.monotonic() - started


def scrape(server: Replica) -> dict[str, float]:
    """The metrics this benchmark reads, from one replica."""
    assert server.metrics_address
    with urllib.request.urlopen(f"http://{server.metrics_address}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = {"conflicts": 0.0, "loads": 0.0}
    for line in text.splitlines():
        if line.startswith("chronicle_concurrency_conflicts_total "):
            found["conflicts"] = float(line.split()[1])
        elif re.match(r'chronicle_store_operation_duration_seconds_count\{operation="load_snapshot"\} ', line):
            found["loads"] = float(line.split()[1])
    return found


# -- load -----------------------------------------------------------------------------


def tally(aggregate_id: str) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=1)


async def drive(
    clients: Sequence[ChronicleClient],
    aggregates: Sequence[str],
    *,
    tasks: int,
    seconds: float,
    history: History | None = None,
    seed: int = 7,
    stop: asyncio.Event | None = None,
) -> dict[str, Any]:
    """``tasks`` callers, caller i through ``clients[i % len(clients)]``,
    each submitting to a random one of ``aggregates`` until the time is up."""
    rng = random.Random(seed)
    done = failed = 0
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    errors: Counter[str] = Counter()

    async def caller(index: int) -> None:
        nonlocal done, failed
        client = clients[index % len(clients)]
        while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            aggregate = rng.choice(aggregates)
            message = tally(aggregate)
            op: Operation | None = history.begin(aggregate, message) if history is not None else None
            started = time.monotonic()
            try:
                submitted = await client.submit(
                    aggregate, message, command_id=op.command_id if op is not None else None
                )
            except RemoteError as error:
                failed += 1
                errors[error.reason] += 1
                if op is not None and history is not None:
                    history.unknown(op, error.reason)
                continue
            latencies.append(time.monotonic() - started)
            done += 1
            if op is not None and history is not None:
                history.ok(
                    op,
                    command_service_pb2.SubmitResponse(
                        events=[e.envelope for e in submitted.events],
                        version=submitted.version,
                        replayed=submitted.replayed,
                    ),
                )

    started = time.monotonic()
    await asyncio.gather(*(caller(i) for i in range(tasks)))
    elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "completed": done,
        "failed": failed,
        "errors": dict(errors),
        "rate": done / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else 0.0,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else 0.0,
    }


async def open_clients(addresses: Sequence[str], *, routing: bool) -> list[ChronicleClient]:
    clients = [ChronicleClient.connect(address, routing=routing, retry=PATIENT) for address in addresses]
    for client in clients:
        await client.__aenter__()
    return clients


async def close_clients(clients: Sequence[ChronicleClient]) -> None:
    for client in clients:
        await client.close()


# -- 1. routing against round robin -------------------------------------------------------


async def _routing_load(
    seeds: Sequence[str], aggregates: Sequence[str], *, routing: bool, seconds: float
) -> tuple[dict[str, Any], int]:
    clients = await open_clients(seeds, routing=routing)
    try:
        result = await drive(clients, aggregates, tasks=len(seeds), seconds=seconds)
        return result, sum(c.routes.not_owner for c in clients if c.routes is not None)
    finally:
        await close_clients(clients)


def routing_point(cluster: Any, logs: Path, *, seconds: float) -> dict[str, Any]:
    rows = {}
    for mode in ("routing", "round-robin"):
        database_url = cluster.create_database()
        with replicas(database_url, 3, logs / mode, metrics=True) as three:
            wait_for(lambda: agreed(three), within=60)
            aggregates = [f"{mode}-{n}" for n in range(256)]
            # Routing: one client per caller, each with a channel per replica.
            # Plain: caller i on replica i mod 3, as a connection balancer spreads them.
            seeds = [three[n % 3].address for n in range(64)]
            result, hints = asyncio.run(_routing_load(seeds, aggregates, routing=mode == "routing", seconds=seconds))
            scraped = [scrape(server) for server in three]
        row = {
            **result,
            "conflicts": sum(s["conflicts"] for s in scraped),
            "loads": sum(s["loads"] for s in scraped),
            "aggregates": len(aggregates),
            "not_owner_hints": hints if mode == "routing" else None,
            "per_replica": scraped,
        }
        rows[mode] = row
        print(
            f"  {mode:11} {row['rate']:7.0f}/s  p50 {row['p50_ms']:5.1f} ms  p99 {row['p99_ms']:6.1f} ms"
            f"  conflicts {row['conflicts']:.0f}  loads {row['loads']:.0f} (aggregates {row['aggregates']})"
            f"  failed {row['failed']}",
            flush=True,
        )
    return rows


# -- 2. a replica killed under load -------------------------------------------------------


def kill_point(cluster: Any, logs: Path, *, seconds: float, lease: float) -> dict[str, Any]:
    database_url = cluster.create_database()
    with replicas(database_url, 3, logs / "kill", "--lease-seconds", str(lease)) as three:
        wait_for(lambda: agreed(three), within=60)
        victim, survivors = three[2], three[:2]
        victim_id = topology(victim.address).answered_by
        history = History()
        aggregates = [f"kill-{n}" for n in range(128)]
        figures: dict[str, Any] = {}

        async def run() -> dict[str, Any]:
            clients = await open_clients([three[n % 2].address for n in range(32)], routing=True)
            try:
                load = asyncio.ensure_future(
                    drive(clients, aggregates, tasks=32, seconds=seconds + lease + 2, history=history)
                )
                await asyncio.sleep(seconds / 2)
                killed = time.monotonic()
                victim.stop(signal.SIGKILL, timeout=10)

                def taken_over() -> bool:
                    found = topology(survivors[0].address)
                    return victim_id not in found.partition_owners and fair(found, 2)

                def without_victim(found: cluster_service_pb2.Topology) -> bool:
                    return victim_id not in found.partition_owners and all(found.partition_owners)

                async def clients_follow() -> float:
                    await asyncio.gather(
                        *(c.routes.wait_for_topology(without_victim) for c in clients if c.routes is not None)
                    )
                    return time.monotonic() - killed

                following = asyncio.ensure_future(clients_follow())
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, lambda: wait_for(taken_over, within=60, poll=0.02))
                figures["takeover_s"] = time.monotonic() - killed
                figures["clients_followed_s"] = await asyncio.wait_for(following, 60)
                figures["failovers"] = sum(c.routes.failovers for c in clients if c.routes is not None)
                return await load
            finally:
                await close_clients(clients)

        result = asyncio.run(run())
    check_invariants(history, database_url, REGISTRY)  # raises if anything promised was broken
    row = {
        **result,
        **figures,
        "lease_s": lease,
        "acknowledged": len(history.acknowledged),
        "sent_again_to_another_member": figures["failovers"],
        "unsettled": len(history.in_flight),
        "invariants": "hold",
    }
    print(
        f"  takeover {row['takeover_s']:.2f} s (lease {lease:g} s), clients followed in"
        f" {row['clients_followed_s']:.2f} s; {row['acknowledged']} acknowledged,"
        f" {row['sent_again_to_another_member']} sent again to another member, {row['failed']} failed;"
        " invariants hold",
        flush=True,
    )
    return row


# -- 3. a projection in three replicas ------------------------------------------------------


def applied_counts(folder: Path) -> Counter[str]:
    calls: Counter[str] = Counter()
    for path in folder.glob("calls-*.txt"):
        calls.update(line for line in path.read_text().splitlines() if line)
    return calls


def committed_event_ids(database_url: str) -> list[str]:
    import psycopg

    with psycopg.connect(database_url) as conn:
        return [str(r[0]) for r in conn.execute("SELECT event_id FROM chronicle.events ORDER BY position")]


def caught_up(database_url: str) -> bool:
    """Whether counted.applied's checkpoint is at the log's end."""
    import psycopg

    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT position FROM chronicle.projection_checkpoints WHERE name = 'counted.applied'")
        found = row.fetchone()
        head = conn.execute("SELECT last_position FROM chronicle.log_head").fetchone()
    return found is not None and head is not None and found[0] == head[0]


def running_here(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        stub = projection_service_pb2_grpc.ProjectionServiceStub(channel)
        status = stub.GetProjection(projection_service_pb2.GetProjectionRequest(name="counted.applied"), timeout=5)
    return bool(status.running)


def projection_point(cluster: Any, logs: Path, *, lease: float) -> dict[str, Any]:
    database_url = cluster.create_database()
    folder = Path(tempfile.mkdtemp(prefix="chronicle-counted-"))
    os.environ["CHRONICLE_BENCH_COUNT_DIR"] = str(folder)  # the replicas inherit it
    extra = ("--plugin", "bench.counted", "--lease-seconds", str(lease), "--poll-seconds", "0.2")
    with replicas(database_url, 3, logs / "projection", *extra) as three:
        wait_for(lambda: agreed(three), within=60)

        async def write(count: int, prefix: str, address: str) -> None:
            clients = await open_clients([address] * 8, routing=True)
            try:
                aggregates = [f"{prefix}-{n}" for n in range(50)]
                for _ in range(count // len(aggregates)):
                    await asyncio.gather(*(clients[n % 8].submit(a, tally(a)) for n, a in enumerate(aggregates)))
            finally:
                await close_clients(clients)

        asyncio.run(write(1000, "before", three[0].address))
        wait_for(lambda: caught_up(database_url), within=60)
        before = applied_counts(folder)
        committed = committed_event_ids(database_url)
        runners = {path.name for path in folder.glob("calls-*.txt")}
        (holder,) = [server for server in three if running_here(server.address)]
        survivor = next(server for server in three if server is not holder)

        others = [server for server in three if server is not holder]

        async def kill_while_writing() -> tuple[float, bool]:
            # The replica running the projection dies while new events stream
            # in: its runner may be in the middle of a batch.
            writing = asyncio.ensure_future(write(3000, "after", survivor.address))
            await asyncio.sleep(0.5)
            under_load = not writing.done()
            holder.stop(signal.SIGKILL, timeout=10)
            killed = time.monotonic()
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(
                None, lambda: wait_for(lambda: any(running_here(s.address) for s in others), within=60)
            )
            taken_over = time.monotonic() - killed
            await writing
            return taken_over, under_load

        taken_over, under_load = asyncio.run(kill_while_writing())
        written = time.monotonic()
        wait_for(lambda: caught_up(database_url), within=60)
        resumed_after = time.monotonic() - written
        calls = applied_counts(folder)
        committed = committed_event_ids(database_url)
    repeated = {event_id: n for event_id, n in calls.items() if n > 1}
    row = {
        "events": len(committed),
        "handler_calls": sum(calls.values()),
        "events_applied_once": sum(1 for event_id in committed if calls[event_id] == 1),
        "events_applied_more_than_once": len(repeated),
        "events_never_applied": sum(1 for event_id in committed if calls[event_id] == 0),
        "replicas_that_ran_it_before_the_kill": len(runners),
        "calls_before_the_kill": sum(before.values()),
        "killed_while_writing": under_load,
        "taken_over_after_s": taken_over,
        "caught_up_after_the_last_write_s": resumed_after,
        "lease_s": lease,
    }
    print(
        f"  {row['events']} events, {row['handler_calls']} handler calls in the cluster:"
        f" {row['events_applied_once']} applied once, {row['events_applied_more_than_once']} more than once,"
        f" {row['events_never_applied']} never; taken over {taken_over:.2f} s after the kill"
        f" (under load: {under_load}), caught up {resumed_after:.2f} s after the last write",
        flush=True,
    )
    return row


# -- 4. sixteen replicas ------------------------------------------------------------------------


def sixteen_point(cluster: Any, logs: Path, *, lease: float) -> dict[str, Any]:
    database_url = cluster.create_database()
    started = time.monotonic()
    with replicas(database_url, 16, logs / "sixteen", "--lease-seconds", str(lease), "--db-pool-size", "3") as all16:
        serving = time.monotonic() - started
        settled = wait_for(lambda: fair(topology(all16[0].address), 16), within=120)
        first = topology(all16[0].address)

        # A little load through routing clients, to show the shares serve.
        async def some_load() -> dict[str, Any]:
            clients = await open_clients([all16[0].address] * 4, routing=True)
            try:
                return await drive(clients, [f"s-{n}" for n in range(200)], tasks=16, seconds=3)
            finally:
                await close_clients(clients)

        load = asyncio.run(some_load())
        leaving = all16[-4:]
        left_at = time.monotonic()
        for server in leaving:
            server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: fair(topology(all16[0].address), 12), within=120)
        rebalanced_after = time.monotonic() - left_at
        for server in leaving:
            server.process.wait(60)
        after = topology(all16[0].address)
    row = {
        "serving_after_s": serving,
        "fair_after_serving_s": settled,
        "shares_of_16": shares(first),
        "load": load,
        "shares_of_12": shares(after),
        "rebalanced_after_leaving_s": rebalanced_after,
        "lease_s": lease,
    }
    print(
        f"  16 replicas: shares {row['shares_of_16']} ({settled:.1f} s after all served);"
        f" four stopped: shares {row['shares_of_12']} within {rebalanced_after:.1f} s",
        flush=True,
    )
    return row


# -- the report -----------------------------------------------------------------------------------


def _machine(described: dict[str, str]) -> str:
    parts = [described[key] for key in ("cpu", "memory", "postgresql") if key in described]
    if "load average at start" in described:
        parts.append(f"load average {described['load average at start']} at the start")
    return ", ".join(parts)


def _counts(shares: list[int]) -> str:
    counted = Counter(shares)
    parts = [f"{replicas} replicas {share} each" for share, replicas in sorted(counted.items(), reverse=True)]
    return " and ".join(parts)


def report(results: dict[str, Any]) -> str:
    routing, plain = results["routing"]["routing"], results["routing"]["round-robin"]
    kill, projection, sixteen = results["kill"], results["projection"], results["sixteen"]
    lines = [
        BEGIN,
        "",
        f"Measured by `make scale` ({results['date']}; {_machine(results['machine'])}):",
        "one PostgreSQL with default durability, every replica a server process, all on the same two",
        "cores as the clients (throughput is this machine's, not the design's).",
        "",
        f"**Routing.** Three replicas, 64 clients on {routing['aggregates']} shared aggregates, each",
        f"client one command at a time for {results['seconds']:g} s, from cold replicas:",
        "",
        "| clients | commands/s | p50 | p99 | conflicts | aggregate loads | not-owner hints |",
        "|---|---|---|---|---|---|---|",
        f"| routing (`routing=True`) | {routing['rate']:,.0f} | {routing['p50_ms']:.1f} ms"
        f" | {routing['p99_ms']:.1f} ms | {routing['conflicts']:,.0f} | {routing['loads']:,.0f}"
        f" | {routing['not_owner_hints']} |",
        f"| plain, spread over the replicas | {plain['rate']:,.0f} | {plain['p50_ms']:.1f} ms"
        f" | {plain['p99_ms']:.1f} ms | {plain['conflicts']:,.0f} | {plain['loads']:,.0f} | (not read) |",
        "",
        "Conflicts: appends that lost a version race to another replica and were decided",
        "again (`chronicle_concurrency_conflicts_total`); aggregate loads: snapshot + events",
        "read from the store, cold or after a conflict (the count of `load_snapshot`).",
        f"With routing each aggregate is loaded once, by its owner ({routing['aggregates']} aggregates).",
        "",
        f"**A replica killed under load** (SIGKILL, leases of {kill['lease_s']:g} s, 32 routing clients):",
        f"its partitions were owned by the survivors {kill['takeover_s']:.2f} s after the kill (the lease, plus",
        "up to a heartbeat, after its last heartbeat), and",
        f"every client's topology had followed after {kill['clients_followed_s']:.2f} s. Of",
        f"{kill['acknowledged']:,} commands acknowledged, {kill['sent_again_to_another_member']} had found their"
        " owner dead and were",
        "sent again, with the same command id, to another member; the invariant",
        f"checker over every command holds: nothing acknowledged lost or doubled; {kill['failed']} commands",
        "failed after their retries.",
        "",
        f"**A projection in three replicas** ({projection['events']:,} events; the replica running it",
        "killed with SIGKILL while the second half was being written):",
        f"{projection['handler_calls']:,} handler calls in the whole cluster, {projection['events_applied_once']:,}"
        f" events applied once, {projection['events_applied_more_than_once']} more than once,"
        f" {projection['events_never_applied']} never.",
        f"Before the kill {projection['replicas_that_ran_it_before_the_kill']} replica(s) ran it;"
        f" another ran it {projection['taken_over_after_s']:.2f} s after the kill",
        f"(leases of {projection['lease_s']:g} s), and had caught up"
        f" {projection['caught_up_after_the_last_write_s']:.2f} s after the last write.",
        "An event is applied twice only if it was in a batch the killed runner had applied and not",
        "committed: its successor applies that batch again from the checkpoint (the read model holds",
        "each event once either way).",
        "",
        f"**Sixteen replicas** (leases of {sixteen['lease_s']:g} s) share the 64 partitions as"
        f" {_counts(sixteen['shares_of_16'])}: fair",
        f"{sixteen['fair_after_serving_s']:.1f} s after the last of the sixteen reported SERVING (they took"
        f" {sixteen['serving_after_s']:.0f} s to start, on two cores).",
        f"Four stopped at once (SIGTERM): the twelve share them as {_counts(sixteen['shares_of_12'])}"
        f" {sixteen['rebalanced_after_leaving_s']:.1f} s later.",
        "",
        END,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale")
    parser.add_argument("--seconds", type=float, default=15.0, help="load seconds of the routing points")
    parser.add_argument("--lease", type=float, default=3.0, help="lease seconds of the failure points")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "scaling.md")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "scaling.json")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {
        "machine": machine.describe(),
        "date": time.strftime("%Y-%m-%d"),
        "seconds": args.seconds,
        "command": " ".join(["python -m bench.scale", *sys.argv[1:]]),
    }
    print(f"machine: {results['machine']}", flush=True)
    logs = Path(tempfile.mkdtemp(prefix="chronicle-scale-"))
    print(f"server logs in {logs}", flush=True)
    with servers.postgres() as (cluster, _):
        print("1. routing against round robin:", flush=True)
        results["routing"] = routing_point(cluster, logs, seconds=args.seconds)
        print("2. a replica killed under load:", flush=True)
        results["kill"] = kill_point(cluster, logs, seconds=args.seconds / 2, lease=args.lease)
        print("3. a projection in three replicas:", flush=True)
        results["projection"] = projection_point(cluster, logs, lease=args.lease)
        print("4. sixteen replicas:", flush=True)
        results["sixteen"] = sixteen_point(cluster, logs, lease=args.lease)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    text = args.out.read_text()
    section = report(results)
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    args.out.write_text(text)
    print(f"wrote {args.out} and {args.json}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
