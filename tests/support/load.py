"""Load for the fault tests: bank commands from many concurrent clients,
each recorded in a ``History``, and subscribers recorded in ``SubscriberLog``s.

A client here behaves as the documented contract asks: it retries what may
succeed later (ABORTED, UNAVAILABLE, RESOURCE_EXHAUSTED, a lost answer) with
the same command id, on any replica, until the server gives a definite
answer; so every operation ends acknowledged or refused, and the invariant
checker can hold the server to what it said.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chronicle.v1 import command_service_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.client import ChronicleClient, RetryPolicy
from tests.support.grpc_client import Client, command, details_of
from tests.support.history import History, Operation, SubscriberLog

# Worth another attempt with the same command id. DEADLINE_EXCEEDED and
# CANCELLED: the answer was lost, the command may or may not have run.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    }
)
# A subscriber that never gives up while the test runs.
PATIENT = RetryPolicy(max_attempts=1_000_000, initial_backoff=0.05, max_backoff=0.5)


@dataclass
class Bank:
    """Commands on a fixed set of accounts, with a counter of what was seen."""

    history: History
    accounts: Sequence[str]
    rng: random.Random
    attempt_timeout: float = 10.0
    settle_within: float = 180.0
    errors: Counter[str] = field(default_factory=Counter)  # failed attempts by status code
    reasons: Counter[str] = field(default_factory=Counter)  # ... by code and reason

    def next_message(self) -> tuple[str, Message]:
        account = self.rng.choice(self.accounts)
        amount = self.rng.randint(1, 100)
        message = bank.Deposit(amount=amount) if self.rng.random() < 0.6 else bank.Withdraw(amount=amount)
        return account, message

    async def open_accounts(self, clients: Sequence[Client]) -> None:
        for account in self.accounts:
            await self.settle(clients, self.history.begin(account, bank.OpenAccount(owner=f"owner-{account}")))

    async def settle(self, clients: Sequence[Client], op: Operation) -> None:
        """Send ``op`` (to any of ``clients``) until it is acknowledged or
        refused; what happened to each failed attempt is counted."""
        deadline = time.monotonic() + self.settle_within
        attempt = 0
        while time.monotonic() < deadline:
            client = clients[attempt % len(clients)] if attempt else self.rng.choice(clients)
            attempt += 1
            built = command(op.aggregate_id, op.message, command_id=op.command_id)
            try:
                response = await client.commands.Submit(
                    command_service_pb2.SubmitRequest(command=built), timeout=self.attempt_timeout
                )
            except grpc.aio.AioRpcError as error:
                details = details_of(error)
                self.errors[details.code.name] += 1
                self.reasons[f"{details.code.name} {details.reason}".strip()] += 1
                if details.code in RETRYABLE:
                    self.history.unknown(op, error)
                    await asyncio.sleep(min(0.5, 0.01 * 2 ** min(attempt, 6)) * self.rng.random())
                    continue
                self.history.refused(op, details.reason)
                return
            self.history.ok(op, response)
            return
        raise AssertionError(f"command {op.command_id} not settled within {self.settle_within}s: {op}")

    @contextlib.asynccontextmanager
    async def writing(self, clients: Sequence[Client], writers: int) -> AsyncIterator[None]:
        """``writers`` concurrent writers for the body of the block: stopped
        at its end, each after its command in flight has settled."""
        stop = asyncio.Event()
        tasks = [asyncio.create_task(self.writer(clients, stop)) for _ in range(writers)]
        try:
            yield
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        stop.set()
        await asyncio.gather(*tasks)

    async def writer(self, clients: Sequence[Client], stop: asyncio.Event) -> int:
        """Commands one after the other until ``stop``; return how many."""
        sent = 0
        while not stop.is_set():
            account, message = self.next_message()
            await self.settle(clients, self.history.begin(account, message))
            sent += 1
        return sent


async def follow_log(address: str, log: SubscriberLog) -> None:
    """Subscribe to the whole log through the Python client (which resumes
    after the last event on any retryable error) and record every event,
    until cancelled."""
    async with ChronicleClient.connect(address, retry=PATIENT) as client:
        async for event in client.subscribe():
            log.record(int(event.envelope.position), str(event.envelope.event_id))


class Followers:
    """Subscribers following the log for one test; ``close`` ends them all
    (a test that fails half-way must not leave one retrying for ever)."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, address: str, log: SubscriberLog) -> asyncio.Task[None]:
        task = asyncio.create_task(follow_log(address, log), name=f"follower {log.name}")
        self._tasks.append(task)
        return task

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def caught_up(
    log: SubscriberLog, log_head: int, *, follower: asyncio.Task[None] | None = None, within: float = 60.0
) -> None:
    """Wait until ``log`` received the event at ``log_head``; fail at once
    with its error if the ``follower`` feeding it gave up."""
    deadline = time.monotonic() + within
    while log.last_position < log_head:
        if follower is not None and follower.done():
            follower.result()  # raises what ended it
            raise AssertionError(f"subscriber {log.name} ended at {log.last_position}, log at {log_head}")
        if time.monotonic() > deadline:
            raise AssertionError(f"subscriber {log.name} at {log.last_position}, log at {log_head} after {within}s")
        await asyncio.sleep(0.05)


async def acknowledged(history: History, count: int, *, within: float = 60.0) -> None:
    """Wait until ``count`` operations in all were acknowledged: the load runs."""
    deadline = time.monotonic() + within
    while len(history.acknowledged) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(history.acknowledged)} of {count} commands acknowledged after {within}s")
        await asyncio.sleep(0.02)


async def health(address: str) -> str:
    """The server's overall health as Check answers it, or the RPC error's
    code when it does not answer."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.aio.AioRpcError as error:
            return str(error.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


async def health_becomes(address: str, status: str, *, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while (now := await health(address)) != status:
        if time.monotonic() > deadline:
            raise AssertionError(f"{address} still {now}, not {status}, after {within}s")
        await asyncio.sleep(0.05)
