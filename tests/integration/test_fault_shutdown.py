"""SIGTERM under load: the server stops in order. Health turns NOT_SERVING
first (seen both by a watcher and by a load balancer polling Check), then
new calls are refused with UNAVAILABLE, while the commands already in flight
finish within the grace period; nothing is lost, the subscriber resumes on
the restarted server and misses nothing."""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chronicle.v1 import command_service_pb2
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins.registry import Registry
from tests.support.faults import appends_blocked, log_head, wait_for_waiters, wait_until_executing
from tests.support.grpc_client import Client, command, connect, details_of
from tests.support.history import History, SubscriberLog, check_invariants
from tests.support.load import Bank, Followers, caught_up
from tests.support.processes import replica

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REGISTRY = Registry([bank_account.plugin])
IN_FLIGHT = 6
NAME = health_pb2.HealthCheckResponse.ServingStatus.Name


async def watch_until_not_serving(client: Client, seen: list[str]) -> None:
    call = health_pb2_grpc.HealthStub(client.channel).Watch(health_pb2.HealthCheckRequest())
    try:
        async for update in call:
            if update.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                seen.append("NOT_SERVING")
                return
    finally:
        # Ended here, not whenever the call is collected: an open Watch is an
        # RPC the server's stop waits for, up to its grace.
        call.cancel()


async def poll_until_gone(address: str) -> list[str]:
    """What a load balancer polling Check on a connection of its own sees,
    until the server no longer answers."""
    polled: list[str] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            except grpc.aio.AioRpcError as error:
                return [*polled, error.code().name]
            polled.append(NAME(answer.status))
            await asyncio.sleep(0.01)


async def probe_until_refused(client: Client, history: History, seen: list[str]) -> None:
    """New calls, one after the other, until one is refused. Those the
    server still takes (while draining) wait behind the blocked appends and
    are recorded as unknown: they are in flight too. A call that reaches the
    server just as it stops is CANCELLED by gRPC rather than refused: retried
    (same command id) after the restart, like any unknown outcome."""
    while True:
        probe = history.begin("acc-0", bank.Deposit(amount=1))
        request = command_service_pb2.SubmitRequest(
            command=command("acc-0", probe.message, command_id=probe.command_id)
        )
        try:
            await client.commands.Submit(request, timeout=0.5)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNAVAILABLE:
                seen.append("UNAVAILABLE")
                history.refused(probe, details_of(error).reason)
                return
            assert error.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED), error  # noqa: PT017
            history.unknown(probe, error)
        else:
            raise AssertionError("a new call completed while appends were blocked")


async def test_sigterm_turns_health_off_first_refuses_new_calls_and_finishes_those_in_flight(
    postgres_url: str, tmp_path: Path, followers: Followers
) -> None:
    history = History()
    load = Bank(history, [f"acc-{i}" for i in range(IN_FLIGHT)], random.Random(3))
    subscriber = SubscriberLog("subscriber")
    seen: list[str] = []  # what the client saw, in the order it saw it
    flags = ["--shutdown-drain", "1", "--shutdown-grace", "30"]
    with replica(postgres_url, log_path=tmp_path / "server.log", extra=flags, metrics=True) as server:
        follower = followers.start(server.address, subscriber)
        async with connect(server.address) as client:
            await load.open_accounts([client])
            watcher = asyncio.create_task(watch_until_not_serving(client, seen))
            poller = asyncio.create_task(poll_until_gone(server.address))
            ops = [history.begin(account, bank.Deposit(amount=5)) for account in load.accounts]
            with appends_blocked(postgres_url):
                in_flight = [
                    asyncio.ensure_future(client.submit(command(op.aggregate_id, op.message, command_id=op.command_id)))
                    for op in ops
                ]
                await asyncio.to_thread(wait_for_waiters, postgres_url)
                await asyncio.to_thread(wait_until_executing, server, IN_FLIGHT)
                server.process.send_signal(signal.SIGTERM)
                await probe_until_refused(client, history, seen)
                await asyncio.wait_for(watcher, 20)
                assert not any(task.done() for task in in_flight)
            # The block is lifted: what was in flight completes within the grace period.
            for op, task in zip(ops, in_flight, strict=True):
                history.ok(op, await asyncio.wait_for(task, 30))
            seen.append("in-flight done")
        assert server.process.wait(30) == 0
        polled = await poller
        assert seen == ["NOT_SERVING", "UNAVAILABLE", "in-flight done"]
        # SERVING, then NOT_SERVING for a while, and only then no answer (a
        # Check that arrives as the server stops is cancelled instead).
        assert polled[-1] in ("UNAVAILABLE", "CANCELLED") and "NOT_SERVING" in polled, polled
        assert polled.index("SERVING") < polled.index("NOT_SERVING")

        server.start()  # the subscriber resumes on the restarted server
        async with connect(server.address) as client:
            for probe in [op for op in history.operations.values() if op.outcome == "unknown"]:
                await load.settle([client], probe)
        await caught_up(subscriber, log_head(postgres_url), follower=follower)
    check_invariants(history, postgres_url, REGISTRY, subscribers=[subscriber])
