"""Two real ``chronicle serve`` processes on one SQLite file (a rolling
update that starts the new server before the old one stops): they share
the work by the leases kept in the file (docs/deployment.md, "Two servers
on one SQLite file"). A group's segments are shared between a consumer of
each process, so each event reaches one of them; one process runs the
projection and both say which; killed (SIGKILL), it hands the projection
and its consumer's segments to the survivor once its leases expire. And
what the leases cost a server alone: heartbeats on a timer, none per
command."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path

import pytest

from chronicle.v1 import projection_service_pb2 as projection_pb
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.client import ChronicleClient
from service.store.leasing import Lease, LeaseMember, LeaseView
from service.store.sqlite import SqliteStore
from tests.support.groups import GroupLedger, consume_into
from tests.support.grpc_client import Client, connect, running_server
from tests.support.processes import ServerProcess, server_process
from tests.support.waiting import eventually

LEASE_SECONDS = 1.5  # a heartbeat every 0.5 s: the survivor takes over within seconds
PROJECTION = "bank.balances_by_owner"
SEGMENTS = 8
ACCOUNTS = 20


async def _projection(client: Client, name: str) -> projection_pb.GetProjectionResponse:
    response: projection_pb.GetProjectionResponse = await client.projections.GetProjection(
        projection_pb.GetProjectionRequest(name=name), timeout=10
    )
    return response


async def _deposits(client: ChronicleClient, accounts: Sequence[str], rounds: int) -> None:
    for _ in range(rounds):
        await asyncio.gather(*(client.submit(account, bank.Deposit(amount=1)) for account in accounts))


@pytest.mark.slow
async def test_two_servers_on_one_sqlite_file_share_a_group_and_a_projection_and_hand_over_when_one_is_killed(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/shared.db"
    flags = ["--lease-seconds", str(LEASE_SECONDS), "--poll-seconds", "0.1", "--anonymous-admin"]
    with ExitStack() as processes:
        servers: list[ServerProcess] = [processes.enter_context(server_process(url, extra=flags)) for _ in range(2)]
        async with AsyncExitStack() as clients:
            on = [await clients.enter_async_context(ChronicleClient.connect(s.address)) for s in servers]
            raw = [await clients.enter_async_context(connect(s.address)) for s in servers]
            await on[0].groups.create("ledger", aggregate_types=["Account"], segments=SEGMENTS, ack_timeout=30)
            ledger = GroupLedger()
            consumers = [
                asyncio.ensure_future(consume_into(client, "ledger", ledger.consumer(f"on-{n}"), ledger))
                for n, client in enumerate(on)
            ]
            try:

                async def shared() -> bool:
                    group = await on[1].groups.get("ledger")
                    return sorted(len(c.segments) for c in group.consumers) == [SEGMENTS // 2] * 2

                # One group across the two processes: each sees both consumers,
                # each holding half the segments (each process on its own would
                # give all of them to its own consumer).
                await eventually(shared, within=30, what="the two processes' consumers sharing the segments")

                accounts = [f"acc-{n}" for n in range(ACCOUNTS)]
                await asyncio.gather(*(on[n % 2].submit(a, bank.OpenAccount(owner=a)) for n, a in enumerate(accounts)))
                await _deposits(on[0], accounts[: ACCOUNTS // 2], 5)
                await _deposits(on[1], accounts[ACCOUNTS // 2 :], 5)
                total = ACCOUNTS * 6

                await eventually(lambda: len(ledger.acked()) == total, within=30, what="every event acknowledged")
                received = [[e.event_id for e in ledger.consumer(f"on-{n}").received] for n in range(2)]
                assert all(received), "both consumers took part"
                assert not set(received[0]) & set(received[1]), "an event delivered to a consumer of each process"
                assert sum(len(r) for r in received) == total  # and none twice to one consumer either

                async def all_committed() -> bool:  # sessions commit their acks in rounds
                    return (await on[0].groups.get("ledger")).acknowledged == total

                await eventually(all_committed, within=30, what="the group's acknowledged count at every event")

                # One process runs the projection; both name it (the other
                # once its view of the leases has caught up).
                async def one_runner() -> bool:
                    statuses = [await _projection(client, PROJECTION) for client in raw]
                    running = [n for n, s in enumerate(statuses) if s.running]
                    named = {s.runner for s in statuses}
                    return len(running) == 1 and named == {servers[running[0]].address}

                await eventually(one_runner, within=30, what="one process running the projection, named by both")
                statuses = [await _projection(client, PROJECTION) for client in raw]
                runner = next(n for n, s in enumerate(statuses) if s.running)
                assert [s.runner for s in statuses] == [servers[runner].address] * 2
                survivor = 1 - runner

                # The runner dies without leaving: nothing gives its leases up.
                assert servers[runner].stop(signal.SIGKILL) == -signal.SIGKILL
                consumers[runner].cancel()
                await asyncio.gather(consumers[runner], return_exceptions=True)

                async def taken_over() -> bool:
                    status = await _projection(raw[survivor], PROJECTION)
                    return status.running and status.runner == servers[survivor].address

                await eventually(taken_over, within=30, what="the survivor running the projection")

                # The survivor does the dead one's work: its read model follows
                # new events, and its consumer takes every segment.
                await _deposits(on[survivor], accounts, 1)
                total += ACCOUNTS

                async def caught_up() -> bool:
                    status = await _projection(raw[survivor], PROJECTION)
                    return status.position == status.log_head == total

                await eventually(caught_up, within=30, what="the survivor's projection catching up")

                async def all_segments() -> bool:
                    group = await on[survivor].groups.get("ledger")
                    return [len(c.segments) for c in group.consumers] == [SEGMENTS] and group.acknowledged == total

                await eventually(all_segments, within=30, what="the survivor's consumer holding every segment")
                assert len(ledger.acked()) == total
            finally:
                for task in consumers:
                    task.cancel()
                await asyncio.gather(*consumers, return_exceptions=True)


class CountedLeases(SqliteStore):
    """A SQLite store counting its lease operations (each one write transaction)."""

    lease_writes = 0

    async def renew_leases(self, group: str, member: LeaseMember, names: Sequence[str], ttl: float) -> LeaseView:
        self.lease_writes += 1
        return await super().renew_leases(group, member, names, ttl)

    async def change_leases(
        self, group: str, member_id: str, *, release: Sequence[str], acquire: Sequence[str], ttl: float
    ) -> list[Lease]:
        self.lease_writes += 1
        return await super().change_leases(group, member_id, release=release, acquire=acquire, ttl=ttl)


def _member_expiries(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return {str(group): int(expiry) for group, expiry in conn.execute(_EXPIRIES)}
    finally:
        conn.close()


_EXPIRIES = "SELECT lease_group, expires_at_us FROM lease_members"


async def test_a_server_alone_renews_its_leases_in_the_file_on_a_timer_and_writes_none_per_command(
    tmp_path: Path,
) -> None:
    path = tmp_path / "alone.db"
    store = CountedLeases(path)
    async with running_server(store, database_url=f"sqlite:///{path}") as (app, _):
        # Idle, the heartbeats move the member's expiry in the file on.
        first = _member_expiries(path)
        assert set(first) == {"partitions/64", "projections"}

        async def renewed() -> bool:
            later = _member_expiries(path)
            return all(later[group] > expiry for group, expiry in first.items())

        await eventually(renewed, within=10, what="the idle server's heartbeats renewing its membership")
        # A burst of commands: the lease writes follow the timer (at most a
        # renewal and a change per group per interval), not the commands.
        async with ChronicleClient.connect(app.address) as client:
            accounts = [f"acc-{n}" for n in range(10)]
            await asyncio.gather(*(client.submit(a, bank.OpenAccount(owner=a)) for a in accounts))
            before, started = store.lease_writes, time.monotonic()
            await _deposits(client, accounts, 30)
            elapsed = time.monotonic() - started
        commands = len(accounts) * 30
        timer_bound = len(first) * 2 * (elapsed / app.leases.interval + 2)
        assert store.lease_writes - before <= timer_bound < commands
