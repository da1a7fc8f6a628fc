"""A server process killed under load, and one started before its database:
what clients were told holds, and a subscriber misses nothing."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import grpc
import pytest

from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins.registry import Registry
from tests.support.faults import log_head
from tests.support.grpc_client import command, connect, details_of
from tests.support.history import History, SubscriberLog, check_invariants
from tests.support.load import Bank, Followers, acknowledged, caught_up, health, health_becomes
from tests.support.postgres import Cluster
from tests.support.processes import replica

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REGISTRY = Registry([bank_account.plugin])
WRITERS = 16


async def test_a_server_killed_under_load_and_restarted_loses_nothing(
    postgres_url: str, tmp_path: Path, followers: Followers
) -> None:
    history = History()
    load = Bank(history, [f"acc-{i}" for i in range(8)], random.Random(7))
    subscriber = SubscriberLog("subscriber")
    with replica(postgres_url, log_path=tmp_path / "server.log") as server:
        follower = followers.start(server.address, subscriber)
        async with connect(server.address) as client:
            await load.open_accounts([client])
            async with load.writing([client], WRITERS):
                await acknowledged(history, 100)
                in_flight = history.in_flight
                assert server.stop(signal.SIGKILL) == -signal.SIGKILL
                server.start()  # same port: the clients' channels reconnect to it
                await acknowledged(history, len(history.acknowledged) + 100)
        await caught_up(subscriber, log_head(postgres_url), follower=follower)
    # The kill came mid-load: commands were on their way, and lost their answer.
    interrupted = [op for op in in_flight if op.failed_attempts]
    print(f"{len(in_flight)} commands in flight at the kill, {len(interrupted)} of them interrupted")
    assert interrupted, "the kill should have interrupted commands in flight"
    assert all(op.outcome in ("ok", "refused") for op in interrupted), "each settled after the restart"
    check_invariants(history, postgres_url, REGISTRY, subscribers=[subscriber])


async def test_a_server_started_before_its_database_reports_not_serving_then_serves(
    private_cluster: Cluster, tmp_path: Path, followers: Followers
) -> None:
    url = private_cluster.create_database()
    private_cluster.stop("immediate")
    history = History()
    load = Bank(history, [f"acc-{i}" for i in range(4)], random.Random(8))
    subscriber = SubscriberLog("subscriber")
    flags = ["--health-interval", "0.2"]
    with replica(url, log_path=tmp_path / "server.log", extra=flags, wait=False) as server:
        await health_becomes(server.address, "NOT_SERVING")
        assert server.running
        async with connect(server.address) as client:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.submit(command("acc-0", bank.OpenAccount(owner="ann")))
            assert details_of(refused.value).code == grpc.StatusCode.UNAVAILABLE
            follower = followers.start(server.address, subscriber)

            private_cluster.start()
            await health_becomes(server.address, "SERVING")
            await load.open_accounts([client])
            async with load.writing([client], 4):
                await acknowledged(history, 40)
        await caught_up(subscriber, log_head(url), follower=follower)
        assert await health(server.address) == "SERVING"
    check_invariants(history, url, REGISTRY, subscribers=[subscriber])
