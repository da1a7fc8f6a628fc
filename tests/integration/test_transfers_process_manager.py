"""The bank's transfers process manager (the ``bank.transfers`` reaction) on a
real server process: 200 concurrent transfers among 20 accounts, some of
them closed, with the server killed (SIGKILL) while the reaction is mid-run
and started again on the same database. Money is conserved, every transfer
ends once, and every refused credit is refunded exactly once, on PostgreSQL
and on SQLite."""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import time
import uuid
from collections import Counter
from pathlib import Path

import grpc
import psycopg
import pytest

from chronicle.v1 import reaction_service_pb2 as reaction_pb
from chronicle.v1 import reaction_service_pb2_grpc as reaction_grpc
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.bank_account.transfers import TRANSFER
from service.client import ChronicleClient, RetryPolicy
from service.client.results import Event
from tests.support.processes import Replica

pytestmark = [pytest.mark.slow]

ACCOUNTS = [f"acc-{i:02}" for i in range(20)]
CLOSED = set(ACCOUNTS[15:])  # opened, then closed (empty): credits to them are refused
OPENING_BALANCE = 1_000
TRANSFERS = 200
# Clients ride out the restart: a retry carries the same command id.
PATIENT = RetryPolicy(max_attempts=200, initial_backoff=0.05, max_backoff=0.25)
OVER = {bank.TRANSFER_STATUS_COMPLETED, bank.TRANSFER_STATUS_FAILED, bank.TRANSFER_STATUS_REFUNDED}


@pytest.fixture(params=["postgres", "sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/events.db"
    request.applymarker(pytest.mark.postgres)
    return str(request.getfixturevalue("postgres_url"))


def _checkpoint_and_head(database_url: str) -> tuple[int, int]:
    """The reaction's checkpoint and the log's last position, read from the
    database itself (the server is dead)."""
    if database_url.startswith("sqlite:///"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            checkpoint = conn.execute(
                "SELECT position FROM projection_checkpoints WHERE name = 'bank.transfers'"
            ).fetchone()
            (head,) = conn.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()
    else:
        with psycopg.connect(database_url) as conn:
            checkpoint = conn.execute(
                "SELECT position FROM chronicle.projection_checkpoints WHERE name = 'bank.transfers'"
            ).fetchone()
            row = conn.execute("SELECT last_position FROM chronicle.log_head").fetchone()
            assert row is not None
            (head,) = row
    return (int(checkpoint[0]) if checkpoint else 0), int(head)


async def _reaction(address: str) -> reaction_pb.ReactionStatus:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = reaction_grpc.ReactionServiceStub(channel)
        status: reaction_pb.ReactionStatus = await stub.GetReaction(
            reaction_pb.GetReactionRequest(name="bank.transfers"), timeout=5
        )
        return status


async def _events(client: ChronicleClient, aggregate_id: str) -> list[Event]:
    return [event async for event in client.read(aggregate_id)]


async def test_transfers_conserve_money_and_refund_each_refused_credit_once_across_a_kill(
    database_url: str, tmp_path: Path
) -> None:
    rng = random.Random(15)
    server = Replica(database_url, log_path=tmp_path / "server.log", extra=["--lease-seconds", "1"])
    try:
        server.start()
        async with ChronicleClient.connect(server.address, retry=PATIENT, origin="transfers-test") as client:
            for account in ACCOUNTS:
                await client.submit(account, bank.OpenAccount(owner=account))
                if account in CLOSED:
                    await client.submit(account, bank.CloseAccount())
                else:
                    await client.submit(account, bank.Deposit(amount=OPENING_BALANCE))
            planned = {}
            for index in range(TRANSFERS):
                source, target = rng.sample(ACCOUNTS, 2)
                planned[f"transfer-{index:03}"] = bank.TransferMoney(
                    source_account_id=source, target_account_id=target, amount=rng.randint(1, 150)
                )
            ids = {transfer_id: str(uuid.uuid4()) for transfer_id in planned}

            async def request(transfer_id: str) -> None:
                await client.submit(transfer_id, planned[transfer_id], command_id=ids[transfer_id])

            submitting = asyncio.gather(*(request(t) for t in planned))
            # Kill while the reaction is mid-run: it has sent some commands, not all.
            deadline = time.monotonic() + 60
            while (await _reaction(server.address)).accepted < 150:
                assert time.monotonic() < deadline, "the reaction never got going"
                await asyncio.sleep(0.02)
            assert server.stop(signal.SIGKILL) == -signal.SIGKILL
            checkpoint, head = _checkpoint_and_head(database_url)
            assert checkpoint < head, "the kill should come before the reaction caught up"
            server.start()  # same port: the clients' channels reconnect to it
            await submitting

            # Every transfer ends (completed, failed or refunded), the reaction caught up.
            deadline = time.monotonic() + 90
            while True:
                status = await _reaction(server.address)
                states = {t: (await client.get_aggregate(t, bank.Transfer)).state for t in planned}
                if status.position == status.log_head and all(s.status in OVER for s in states.values()):
                    break
                assert time.monotonic() < deadline, f"transfers still pending: {status}"
                await asyncio.sleep(0.2)
            assert status.parked == 0 and not status.error
            print(f"killed at checkpoint {checkpoint} of {head}; after the restart: {status}")

            balances = {a: (await client.get_aggregate(a, bank.Account)).state.balance for a in ACCOUNTS}
            moves = {a: await _events(client, a) for a in ACCOUNTS}
            histories = {t: await _events(client, t) for t in planned}
    finally:
        server.close()

    # Money is conserved: no transfer is left half way.
    assert sum(balances.values()) == OPENING_BALANCE * (len(ACCOUNTS) - len(CLOSED))
    assert all(balances[a] == 0 for a in CLOSED)
    # Each account movement of a transfer, by (transfer, account, event type).
    tagged = Counter(
        (e.envelope.metadata[TRANSFER], a, e.envelope.event_type)
        for a, events in moves.items()
        for e in events
        if TRANSFER in e.envelope.metadata
    )
    withdrawn, deposited = "bank.v1.MoneyWithdrawn", "bank.v1.MoneyDeposited"
    outcomes = Counter[int]()
    for transfer_id, command in planned.items():
        state = states[transfer_id]
        outcomes[state.status] += 1
        # One outcome, recorded once: the transfer's second and last event.
        assert len(histories[transfer_id]) == 2, transfer_id
        source, target = command.source_account_id, command.target_account_id
        debits = tagged[(transfer_id, source, withdrawn)]
        credits = tagged[(transfer_id, target, deposited)]
        refunds = tagged[(transfer_id, source, deposited)]
        if state.status == bank.TRANSFER_STATUS_COMPLETED:
            assert (debits, credits, refunds) == (1, 1, 0), transfer_id
            assert target not in CLOSED
        elif state.status == bank.TRANSFER_STATUS_REFUNDED:
            assert (debits, credits, refunds) == (1, 0, 1), transfer_id
            assert target in CLOSED and state.reason == "ACCOUNT_CLOSED"
        else:
            assert (debits, credits, refunds) == (0, 0, 0), transfer_id
            assert state.reason in {"INSUFFICIENT_FUNDS", "ACCOUNT_CLOSED"}
    # Nothing else was tagged with a transfer (no command sent twice under another id).
    assert sum(tagged.values()) == sum(
        {bank.TRANSFER_STATUS_COMPLETED: 2, bank.TRANSFER_STATUS_REFUNDED: 2}.get(s.status, 0) for s in states.values()
    )
    # The run exercised every path.
    print({bank.TransferStatus.Name(s): n for s, n in outcomes.items()})
    assert all(outcomes[s] > 0 for s in OVER), outcomes
