"""PostgreSQL failing under a running server: stopped hard and started again,
or the server's connections terminated in the middle of their transactions.
Clients retry what they were told to retry; afterwards the history holds."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins.registry import Registry
from tests.support.faults import appends_blocked, log_head, terminate_backends, wait_for_waiters
from tests.support.grpc_client import connect
from tests.support.history import History, SubscriberLog, check_invariants
from tests.support.load import Bank, Followers, acknowledged, caught_up, health_becomes
from tests.support.postgres import Cluster
from tests.support.processes import replica

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REGISTRY = Registry([bank_account.plugin])
WRITERS = 16
FAST_HEALTH = ["--health-interval", "0.2"]


async def test_postgres_stopped_immediately_under_load_and_started_again_loses_nothing(
    private_cluster: Cluster, tmp_path: Path, followers: Followers
) -> None:
    url = private_cluster.create_database()
    history = History()
    load = Bank(history, [f"acc-{i}" for i in range(8)], random.Random(9))
    subscriber = SubscriberLog("subscriber")
    with replica(url, log_path=tmp_path / "server.log", extra=FAST_HEALTH) as server:
        follower = followers.start(server.address, subscriber)
        async with connect(server.address) as client:
            await load.open_accounts([client])
            async with load.writing([client], WRITERS):
                await acknowledged(history, 100)
                await asyncio.to_thread(private_cluster.stop, "immediate")
                await health_becomes(server.address, "NOT_SERVING")
                await asyncio.to_thread(private_cluster.start)
                await health_becomes(server.address, "SERVING")
                await acknowledged(history, len(history.acknowledged) + 100)
        await caught_up(subscriber, log_head(url), follower=follower)
    assert load.errors["UNAVAILABLE"] > 0, "the outage should have failed some attempts"
    check_invariants(history, url, REGISTRY, subscribers=[subscriber])


async def test_connections_terminated_mid_transaction_lose_nothing_and_commit_nothing_twice(
    postgres_url: str, tmp_path: Path, followers: Followers
) -> None:
    history = History()
    load = Bank(history, [f"acc-{i}" for i in range(8)], random.Random(10))
    subscriber = SubscriberLog("subscriber")
    with replica(postgres_url, log_path=tmp_path / "server.log", extra=FAST_HEALTH) as server:
        follower = followers.start(server.address, subscriber)
        async with connect(server.address) as client:
            await load.open_accounts([client])
            # Appends stopped inside their transactions (command records
            # written, waiting for a position), then their connections killed.
            ops = [history.begin(account, bank.Deposit(amount=3)) for account in load.accounts]
            with appends_blocked(postgres_url):
                blocked = [asyncio.create_task(load.settle([client], op)) for op in ops]
                await asyncio.to_thread(wait_for_waiters, postgres_url)
                assert await asyncio.to_thread(terminate_backends, postgres_url, only_waiting=True) >= 1
            await asyncio.gather(*blocked)  # retried with the same command ids
            interrupted = [op for op in ops if op.reason == "UNAVAILABLE"]
            assert interrupted, "the killed transactions' commands should have been told UNAVAILABLE"
            assert all(op.outcome == "ok" for op in ops)
            # And every connection of the server at once, under load. An idle
            # connection that is terminated is simply replaced; the fault must
            # hit appends in flight, so it is repeated (a few times at most)
            # until it has.
            async with load.writing([client], WRITERS):
                await acknowledged(history, 100)
                unavailable = load.errors["UNAVAILABLE"]
                for _ in range(20):
                    assert await asyncio.to_thread(terminate_backends, postgres_url) > 0
                    await acknowledged(history, len(history.acknowledged) + 50)
                    if load.errors["UNAVAILABLE"] > unavailable:
                        break
                await acknowledged(history, len(history.acknowledged) + 100)
            # It hit the load: commands on the terminated connections failed (and were retried).
            print(f"terminating every connection failed {load.errors['UNAVAILABLE'] - unavailable} attempts")
            assert load.errors["UNAVAILABLE"] > unavailable, "the terminated connections should have failed commands"
            await health_becomes(server.address, "SERVING")
        await caught_up(subscriber, log_head(postgres_url), follower=follower)
    check_invariants(history, postgres_url, REGISTRY, subscribers=[subscriber])
