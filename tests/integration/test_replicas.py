"""Several server processes on one PostgreSQL: together they behave like one
serial server, and a killed one loses nothing that was acknowledged."""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import Iterator
from contextlib import ExitStack

import grpc
import pytest

from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins.registry import Registry
from tests.support.grpc_client import Client, command, connect, details_of
from tests.support.history import History, Operation, check_invariants
from tests.support.processes import ServerProcess, server_process

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REGISTRY = Registry([bank_account.plugin])
RETRYABLE = {grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}


@pytest.fixture
def replicas(postgres_url: str) -> Iterator[list[ServerProcess]]:
    with ExitStack() as stack:
        yield [stack.enter_context(server_process(postgres_url)) for _ in range(3)]


async def submit_until_settled(clients: list[Client], history: History, op: Operation, rng: random.Random) -> None:
    """Send ``op`` to any replica; on a retryable error, send it again (same
    command id, maybe another replica) until it is accepted or refused."""
    for _ in range(50):
        client = rng.choice(clients)
        try:
            response = await client.submit(command(op.aggregate_id, op.message, command_id=op.command_id))
        except grpc.aio.AioRpcError as error:
            details = details_of(error)
            if details.code in RETRYABLE or details.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                history.unknown(op, error)
                await asyncio.sleep(0.01)
                continue
            history.refused(op, details.reason)
            return
        history.ok(op, response)
        return
    raise AssertionError(f"command {op.command_id} never settled")


def _signed_amount(message: object) -> int:
    if isinstance(message, bank.Deposit):
        return int(message.amount)
    if isinstance(message, bank.Withdraw):
        return -int(message.amount)
    return 0


async def test_three_replicas_on_shared_aggregates_act_like_one_serial_server(
    replicas: list[ServerProcess], postgres_url: str
) -> None:
    rng = random.Random(11)
    history = History()
    accounts = [f"acc-{i}" for i in range(8)]
    async with connect(replicas[0].address) as a, connect(replicas[1].address) as b, connect(replicas[2].address) as c:
        clients = [a, b, c]
        for account in accounts:
            await submit_until_settled(clients, history, history.begin(account, bank.OpenAccount(owner="ann")), rng)
        ops = []
        for _ in range(400):
            account = rng.choice(accounts)
            amount = rng.randint(1, 100)
            message = bank.Deposit(amount=amount) if rng.random() < 0.6 else bank.Withdraw(amount=amount)
            ops.append(history.begin(account, message))
        gate = asyncio.Semaphore(48)

        async def run(op: Operation) -> None:
            async with gate:
                await submit_until_settled(clients, history, op, rng)

        await asyncio.gather(*(run(op) for op in ops))

    states = check_invariants(history, postgres_url, REGISTRY)
    assert set(states) == set(accounts)
    for account in accounts:
        accepted = [op for op in history.acknowledged if op.aggregate_id == account]
        # A serial server would have produced the same balance: the sum of the
        # accepted deposits minus the accepted withdrawals, never below zero.
        balance = sum(_signed_amount(op.message) for op in accepted)
        assert states[account].balance == balance  # type: ignore[attr-defined]
        assert balance >= 0
    refused = [op for op in history.operations.values() if op.outcome == "refused"]
    assert {op.reason for op in refused} <= {"INSUFFICIENT_FUNDS"}


async def test_a_killed_replica_loses_nothing_acknowledged_and_retries_are_not_duplicated(
    postgres_url: str,
) -> None:
    rng = random.Random(5)
    history = History()
    with server_process(postgres_url) as victim, server_process(postgres_url) as survivor:
        async with connect(victim.address) as to_victim, connect(survivor.address) as to_survivor:
            for i in range(4):
                await submit_until_settled(
                    [to_survivor], history, history.begin(f"acc-{i}", bank.OpenAccount(owner="o")), rng
                )
            stop = asyncio.Event()

            async def writer(worker: int) -> None:
                while not stop.is_set():
                    op = history.begin(f"acc-{worker % 4}", bank.Deposit(amount=rng.randint(1, 9)))
                    try:
                        history.ok(
                            op, await to_victim.submit(command(op.aggregate_id, op.message, command_id=op.command_id))
                        )
                    except grpc.aio.AioRpcError as error:
                        history.unknown(op, error)
                        # the victim is gone: the same command id goes to the survivor
                        await submit_until_settled([to_survivor], history, op, rng)

            writers = [asyncio.create_task(writer(i)) for i in range(12)]
            await asyncio.sleep(1.0)
            victim.stop(signal.SIGKILL)
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*writers)

    retried = [op for op in history.acknowledged if op.reason]  # saw an error first, then settled
    assert retried, "the kill should have interrupted some commands in flight"
    states = check_invariants(history, postgres_url, REGISTRY)
    for i in range(4):
        deposits = [
            op for op in history.acknowledged if op.aggregate_id == f"acc-{i}" and isinstance(op.message, bank.Deposit)
        ]
        assert states[f"acc-{i}"].balance == sum(op.message.amount for op in deposits)  # type: ignore[attr-defined]
