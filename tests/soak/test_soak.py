"""The soak: minutes of load at the benchmark's concurrency (64 clients) on
two server processes sharing one PostgreSQL, with a fault every few seconds,
rotating through every kind the fault tests inject one at a time.

Not part of ``make test``: run it with ``make soak`` (``SOAK_SECONDS``, 180
by default, is the length of the fault phase). It ends with the invariant
checker over every command and every subscriber, and compares the steady
replica's memory and open file descriptors with what they were before the
faults began. It prints the figures that docs/reliability.md reports.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import command_service_pb2, command_service_pb2_grpc
from domain_plugins import bank_account
from service.plugins.registry import Registry
from tests.support.faults import log_head, terminate_backends
from tests.support.grpc_client import Client, command, connect
from tests.support.history import History, SubscriberLog, check_invariants
from tests.support.load import Bank, Followers, caught_up, health_becomes
from tests.support.postgres import Cluster
from tests.support.processes import Footprint, Replica

pytestmark = [pytest.mark.soak, pytest.mark.postgres]

REGISTRY = Registry([bank_account.plugin])
CLIENTS = 64  # concurrent clients, as in the benchmark
CHANNELS = 8  # connections per replica that the clients share
ACCOUNTS = 200
FAULT_EVERY = 5.0  # seconds between the end of one fault and the next
WARM_UP = 15.0
QUIET = 15.0
SECONDS = float(os.environ.get("CHRONICLE_SOAK_SECONDS", "180"))
# Longer than the suite's per-test timeout (pyproject.toml): the soak runs for
# minutes by design, and still fails rather than hangs.
SOAK_TIMEOUT = int(WARM_UP + SECONDS + QUIET) + 600
FLAGS = ["--health-interval", "0.5", "--shutdown-drain", "0.5", "--shutdown-grace", "10", "--idle-timeout", "5"]
# Tolerances for "back to where they started": the steady replica's RSS may
# grow by allocator fragmentation and caches filling, not by a leak per
# command (that would be hundreds of MiB over this many commands).
RSS_TOLERANCE = 48 * 1024 * 1024
FD_TOLERANCE = 8


@dataclass
class Soak:
    cluster: Cluster
    url: str
    steady: Replica
    victim: Replica
    load: Bank
    victim_clients: list[Client]
    injected: Counter[str] = field(default_factory=Counter)

    # -- the faults, one kind each ----------------------------------------

    async def sigkill(self) -> None:
        self.victim.stop(signal.SIGKILL)
        await asyncio.to_thread(self.victim.start)

    async def sigterm(self) -> None:
        code = await asyncio.to_thread(self.victim.stop, signal.SIGTERM)
        assert code == 0, f"SIGTERM: the victim exited with {code}:\n{self.victim.log_tail()}"
        await asyncio.to_thread(self.victim.start)

    async def postgres_immediate(self) -> None:
        await asyncio.to_thread(self.cluster.stop, "immediate")
        await health_becomes(self.steady.address, "NOT_SERVING")
        await asyncio.to_thread(self.cluster.start)
        await health_becomes(self.steady.address, "SERVING")

    async def terminate_backends(self) -> None:
        await asyncio.to_thread(terminate_backends, self.url)

    async def clients_leave(self) -> None:
        """Commands sent with a deadline far shorter than they take, and on a
        channel closed right after sending; then sent again, same ids."""
        left = [self.load.history.begin(*self.load.next_message()) for _ in range(20)]
        stub = command_service_pb2_grpc.CommandServiceStub(self.victim_clients[0].channel)
        leaving = grpc.aio.insecure_channel(self.steady.address)
        closing = command_service_pb2_grpc.CommandServiceStub(leaving)
        calls = []
        for index, op in enumerate(left):
            request = command_service_pb2.SubmitRequest(
                command=command(op.aggregate_id, op.message, command_id=op.command_id)
            )
            if index % 2:
                calls.append(stub.Submit(request, timeout=0.001))
            else:
                calls.append(closing.Submit(request))
        await asyncio.sleep(0.005)
        await leaving.close()
        for op, call in zip(left, calls, strict=True):
            try:
                self.load.history.ok(op, await call)
            except (grpc.aio.AioRpcError, asyncio.CancelledError):
                self.load.history.unknown(op, "left")
        await asyncio.gather(*(self.load.settle(self.victim_clients, op) for op in left if op.outcome != "ok"))

    async def started_without_database(self) -> None:
        await asyncio.to_thread(self.cluster.stop, "immediate")
        self.victim.stop(signal.SIGKILL)
        self.victim.start(wait=False)
        await health_becomes(self.victim.address, "NOT_SERVING")
        await asyncio.to_thread(self.cluster.start)
        await health_becomes(self.victim.address, "SERVING")

    def kinds(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        return [
            ("SIGKILL a server, restart it", self.sigkill),
            ("pg_ctl stop -m immediate, start", self.postgres_immediate),
            ("clients leave after sending, retry", self.clients_leave),
            ("SIGTERM a server, restart it", self.sigterm),
            ("pg_terminate_backend every connection", self.terminate_backends),
            ("server started while PostgreSQL is down", self.started_without_database),
        ]

    async def inject_until(self, deadline: float) -> None:
        kinds = self.kinds()
        while time.monotonic() < deadline:
            await asyncio.sleep(FAULT_EVERY)
            name, inject = kinds[sum(self.injected.values()) % len(kinds)]
            await inject()
            self.injected[name] += 1


@pytest.mark.timeout(SOAK_TIMEOUT)
async def test_soak(private_cluster: Cluster, tmp_path: Path, followers: Followers) -> None:
    url = private_cluster.create_database()
    history = History()
    load = Bank(history, [f"acc-{i}" for i in range(ACCOUNTS)], random.Random(2024), settle_within=300)
    steady = Replica(url, log_path=tmp_path / "steady.log", extra=FLAGS)
    victim = Replica(url, log_path=tmp_path / "victim.log", extra=FLAGS)
    subscribers = [SubscriberLog("on the steady replica"), SubscriberLog("on the victim")]
    started = time.monotonic()
    try:
        steady.start()
        victim.start()
        async with AsyncExitStack() as stack:
            to_steady = [await stack.enter_async_context(connect(steady.address)) for _ in range(CHANNELS)]
            to_victim = [await stack.enter_async_context(connect(victim.address)) for _ in range(CHANNELS)]
            following = [
                followers.start(steady.address, subscribers[0]),
                followers.start(victim.address, subscribers[1]),
            ]
            await load.open_accounts(to_steady)
            stop = asyncio.Event()
            writers = [
                asyncio.create_task(load.writer([to_steady[i % CHANNELS], to_victim[i % CHANNELS]], stop))
                for i in range(CLIENTS)
            ]
            await asyncio.sleep(WARM_UP)
            before = steady.footprint()
            soak = Soak(private_cluster, url, steady, victim, load, to_victim)
            await soak.inject_until(time.monotonic() + SECONDS)
            await asyncio.sleep(QUIET)  # the same load, no faults: back to normal
            after = steady.footprint()
            stop.set()
            sent = sum(await asyncio.gather(*writers))
            head = log_head(url)
            for subscriber, follower in zip(subscribers, following, strict=True):
                await caught_up(subscriber, head, follower=follower, within=120)
        check_invariants(history, url, REGISTRY, subscribers=subscribers)
        report = _report(history, load, soak.injected, before, after, sent, head, time.monotonic() - started)
        print("\nSOAK REPORT\n" + json.dumps(report, indent=2))
        assert sum(soak.injected.values()) >= len(soak.kinds()), "every kind of fault at least once"
        assert after.rss_bytes <= before.rss_bytes + RSS_TOLERANCE, report
        assert after.open_fds <= before.open_fds + FD_TOLERANCE, report
    finally:
        steady.close()
        victim.close()


def _report(
    history: History,
    load: Bank,
    injected: Counter[str],
    before: Footprint,
    after: Footprint,
    sent: int,
    head: int,
    elapsed: float,
) -> dict[str, object]:
    outcomes = Counter(op.outcome for op in history.operations.values())
    return {
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "clients": CLIENTS,
        "fault_phase_seconds": SECONDS,
        "elapsed_seconds": round(elapsed),
        "commands_sent_by_writers": sent,
        "commands_acknowledged": outcomes["ok"],
        "commands_refused": outcomes["refused"],
        "commands_unsettled": outcomes["unknown"] + outcomes["pending"],
        "events_in_log": head,
        "faults_injected": dict(injected),
        "failed_attempts_by_status_and_reason": dict(load.reasons.most_common()),
        "violations": 0,
        "steady_replica_before": {"rss_mib": round(before.rss_bytes / 2**20, 1), "open_fds": before.open_fds},
        "steady_replica_after": {"rss_mib": round(after.rss_bytes / 2**20, 1), "open_fds": after.open_fds},
    }
