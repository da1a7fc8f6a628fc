"""The mixed soak: everything at once on two replicas sharing one PostgreSQL,
for a minute (``CHRONICLE_MIXED_SECONDS``), with one replica killed and
started again on the way:

- users registering and changing their e-mail address (uniqueness claims
  taken and released), bank deposits, through plain clients of either
  replica, and deposits over command streams (SubmitStreamPages, 16 in
  flight, resumed when their replica goes);
- an administrator deleting and forgetting those users meanwhile;
- a subscription group whose consumers ack, nack (parking events), replay
  the parked ones, and whose group is deleted and made again every few
  seconds under them;
- the bank read model rebuilt now and then; a subscriber following the log.

Afterwards: no server logged an error (no deadlock, no task exception left
unheard, no traceback), no client heard INTERNAL or UNKNOWN, every refusal
had one of the reasons this mix can cause, the subscriber saw positions in
order up to the head, each account holds at least its acknowledged deposits
and at most those plus the ones whose outcome its client could not know,
and the read model agrees with the accounts.

It found a group session's checkpoint round whose error nobody heard
(tests/unit/test_group_sessions.py); with a deletion's old lock order it
fails on the deadlock in PostgreSQL's log (tests/integration/
test_lock_order.py). Run it with ``make soak``."""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import psycopg
import pytest

from chronicle.v1 import admin_service_pb2 as admin_pb
from chronicle.v1 import admin_service_pb2_grpc as admin_grpc
from chronicle.v1 import projection_service_pb2 as projection_pb
from chronicle.v1 import projection_service_pb2_grpc as projection_grpc
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.users.protos.users.v1 import users_pb2 as users
from service.client.client import ChronicleClient
from service.client.commands import Command
from service.client.errors import RemoteError, remote_error
from service.store.encryption import new_master_key
from tests.support.postgres import Cluster
from tests.support.processes import Replica

pytestmark = [pytest.mark.soak, pytest.mark.postgres]

SECONDS = float(os.environ.get("CHRONICLE_MIXED_SECONDS", "60"))
USERS, NAMES_EACH, ACCOUNTS, OWNERS = 12, 5, 6, 3
# Accounts acct-ACCOUNTS … whose deposits go over command streams (pages).
STREAMED = 2
PROJECTION = "bank.balances_by_owner"
# What this mix may be refused with: its own doing, not the server's faults.
EXPECTED = {
    "AGGREGATE_DELETED",
    "AGGREGATE_FORGOTTEN",
    "AGGREGATE_NOT_FOUND",
    "USER_ALREADY_REGISTERED",
    "NOT_UNIQUE",
    "GROUP_NOT_FOUND",
    "GROUP_EXISTS",
    "NOT_ENCRYPTED",
    "UNAVAILABLE",  # a client of the replica while it is down
}
SERVER_FAULT = re.compile(r" (ERROR|CRITICAL) |Traceback|deadlock")


class Mix:
    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self.clients = [ChronicleClient.connect(address) for address in addresses]
        self.channels = [grpc.aio.insecure_channel(address) for address in addresses]
        self.refusals: Counter[str] = Counter()
        self.done: Counter[str] = Counter()
        self.acknowledged: Counter[str] = Counter()
        self.unknown: Counter[str] = Counter()
        self.out_of_order: list[tuple[int, int]] = []
        self.last_seen = 0

    def client(self) -> ChronicleClient:
        return random.choice(self.clients)

    def refused(self, error: BaseException) -> None:
        if isinstance(error, grpc.aio.AioRpcError):  # a raw stub's: its reason is in the status details
            error = remote_error(error)
        self.refusals[error.reason if isinstance(error, RemoteError) else type(error).__name__] += 1

    async def attempt(self, what: str, call: Callable[[], Awaitable[object]]) -> bool:
        try:
            await call()
        except (RemoteError, grpc.aio.AioRpcError) as error:
            self.refused(error)
            return False
        self.done[what] += 1
        return True

    async def users(self, number: int, until: float) -> None:
        round_ = 0
        while time.monotonic() < until:
            user = f"user-{number}-{round_ % NAMES_EACH}"
            register = users.RegisterUser(email=f"{user}@a.example", name="x")
            await self.attempt("register", lambda u=user, m=register: self.client().submit(u, m))  # type: ignore[misc]
            for change in range(3):
                email = users.ChangeEmail(email=f"{user}-{change % 2}@{random.choice('ab')}.example")
                await self.attempt("change", lambda u=user, m=email: self.client().submit(u, m))  # type: ignore[misc]
            round_ += 1

    async def deposits(self, number: int, until: float) -> None:
        account = f"acct-{number}"
        await self.attempt(
            "open", lambda: self.clients[0].submit(account, bank.OpenAccount(owner=f"o{number % OWNERS}"))
        )
        while time.monotonic() < until:
            try:
                await self.client().submit(account, bank.Deposit(amount=1))
            except RemoteError as error:
                self.refused(error)
                self.unknown[account] += 1  # it may have been written before the failure
            else:
                self.acknowledged[account] += 1

    async def streamed_deposits(self, number: int, until: float) -> None:
        """Deposits over ``submit_stream`` (SubmitStreamPages), 16 in
        flight, stream after stream: a stream that breaks past its retries
        (its replica killed) leaves its unanswered deposits unknown."""
        account = f"acct-{number}"
        await self.attempt(
            "open", lambda: self.clients[0].submit(account, bank.OpenAccount(owner=f"o{number % OWNERS}"))
        )
        sent = 0

        async def deposits(answered: asyncio.Queue[None]) -> AsyncIterator[Command]:
            nonlocal sent
            for _ in range(16):
                sent += 1
                yield Command(account, bank.Deposit(amount=1))
            while time.monotonic() < until:
                await answered.get()
                sent += 1
                yield Command(account, bank.Deposit(amount=1))

        while time.monotonic() < until:
            sent, results, answered = 0, 0, asyncio.Queue[None]()
            try:
                async for result in self.client().submit_stream(deposits(answered)):
                    results += 1
                    answered.put_nowait(None)
                    if result.error is None:
                        self.acknowledged[account] += 1
                        self.done["streamed"] += 1
                    else:
                        self.refused(result.error)
                        self.unknown[account] += 1
            except RemoteError as error:
                self.refused(error)
                self.unknown[account] += sent - results  # sent, maybe run, never answered

    async def administrator(self, until: float) -> None:
        stubs = [admin_grpc.AdminServiceStub(channel) for channel in self.channels]
        while time.monotonic() < until:
            user = f"user-{random.randrange(USERS)}-{random.randrange(NAMES_EACH)}"
            stub = random.choice(stubs)
            if random.random() < 0.5:
                request = admin_pb.DeleteAggregateRequest(aggregate_id=user, reason="soak")
                await self.attempt("delete", lambda s=stub, r=request: s.DeleteAggregate(r, timeout=20))  # type: ignore[misc]
            else:
                forget = admin_pb.ForgetAggregateRequest(aggregate_id=user)
                await self.attempt("forget", lambda s=stub, r=forget: s.ForgetAggregate(r, timeout=20))  # type: ignore[misc]
            await asyncio.sleep(0.05)

    async def group(self, until: float) -> None:
        name = "soak"

        async def consume(client: ChronicleClient, consumer: str) -> None:
            try:
                async with client.consume(name, consumer=consumer) as stream:
                    async for delivery in stream:
                        if random.random() < 0.1:
                            await delivery.nack("soak")
                        else:
                            await delivery.ack()
                        self.done["delivered"] += 1
            except RemoteError as error:
                self.refused(error)

        groups = self.clients[0].groups
        while time.monotonic() < until:
            await self.attempt("create group", lambda: groups.create(name, max_delivery_attempts=2, segments=4))
            consumers = [asyncio.ensure_future(consume(client, f"c{i}")) for i, client in enumerate(self.clients * 2)]
            await asyncio.sleep(3)
            await self.attempt("replay", lambda: groups.replay(name))
            await asyncio.sleep(2)
            await self.attempt("delete group", lambda: groups.delete(name))
            for consumer in consumers:
                consumer.cancel()
            await asyncio.gather(*consumers, return_exceptions=True)

    async def rebuilds(self, until: float) -> None:
        stubs = [projection_grpc.ProjectionServiceStub(channel) for channel in self.channels]
        while time.monotonic() < until:
            await asyncio.sleep(7)
            stub = random.choice(stubs)
            await self.attempt(
                "rebuild",
                lambda s=stub: s.RebuildProjection(  # type: ignore[misc]
                    projection_pb.RebuildProjectionRequest(name=PROJECTION), timeout=20
                ),
            )

    async def follow(self) -> None:
        client = ChronicleClient.connect(self.addresses[0])
        try:
            async for event in client.subscribe():
                if event.position <= self.last_seen:
                    self.out_of_order.append((self.last_seen, event.position))
                self.last_seen = event.position
        finally:
            await client.close()

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        for channel in self.channels:
            await channel.close()


async def _crash_and_restart(replica: Replica, after: float) -> None:
    await asyncio.sleep(after)
    replica.process.kill()
    replica.process.wait(10)
    await asyncio.sleep(2)
    await asyncio.to_thread(replica.start)


def _log_head(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT last_position FROM chronicle.log_head").fetchone()
    return int(row[0]) if row else 0


@pytest.mark.timeout(int(SECONDS) + 600)
async def test_everything_at_once_leaves_no_error_and_every_invariant(private_cluster: Cluster, tmp_path: Path) -> None:
    url = private_cluster.create_database()
    keys = tmp_path / "master.keys"
    keys.write_text(f"k1:{new_master_key()}\n")
    keys.chmod(0o600)
    flags = ["--master-key-file", str(keys), "--anonymous-admin"]
    replicas = [Replica(url, log_path=tmp_path / f"replica-{i}.log", extra=flags) for i in range(2)]
    mix: Mix | None = None
    try:
        for replica in replicas:
            replica.start()
        mix = Mix([replica.address for replica in replicas])
        until = time.monotonic() + SECONDS
        follower = asyncio.ensure_future(mix.follow())
        await asyncio.gather(
            *(mix.users(n, until) for n in range(USERS)),
            *(mix.deposits(n, until) for n in range(ACCOUNTS)),
            *(mix.streamed_deposits(n, until) for n in range(ACCOUNTS, ACCOUNTS + STREAMED)),
            mix.administrator(until),
            mix.group(until),
            mix.rebuilds(until),
            _crash_and_restart(replicas[1], SECONDS / 3),
        )
        head = await asyncio.to_thread(_log_head, url)
        deadline = time.monotonic() + 30
        while mix.last_seen < head and time.monotonic() < deadline:  # noqa: ASYNC110 - the follower sets no event
            await asyncio.sleep(0.1)
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)

        balances: dict[str, int] = {}
        for number in range(ACCOUNTS + STREAMED):
            account = f"acct-{number}"
            state = await mix.clients[0].get_aggregate(account, bank.Account)
            balances[account] = int(state.state.balance)
        owners = await _owner_balances(mix, head)
    finally:
        if mix is not None:
            await mix.close()
        for replica in replicas:
            replica.close()

    print(f"\nmixed soak: {dict(mix.done)}; refusals {dict(mix.refusals)}; log head {head}")
    faults = [
        line
        for replica in replicas
        for line in replica.log_path.read_text(errors="replace").splitlines()
        if SERVER_FAULT.search(line)
    ]
    assert faults == [], "\n".join(faults[:40])
    # A deadlock reaches a client as UNAVAILABLE, which a replica's crash
    # causes too: PostgreSQL's own log tells them apart.
    assert private_cluster.datadir is not None
    database_log = private_cluster.datadir / "server.log"
    assert "deadlock detected" not in database_log.read_text(errors="replace")
    assert set(mix.refusals) <= EXPECTED, mix.refusals
    assert (
        min(mix.done[w] for w in ("register", "change", "delete", "forget", "delivered", "rebuild", "streamed")) > 0
    ), mix.done
    assert mix.out_of_order == [] and mix.last_seen == head
    for account, balance in balances.items():
        assert mix.acknowledged[account] <= balance <= mix.acknowledged[account] + mix.unknown[account], account
    for owner in range(OWNERS):
        expected = sum(b for a, b in balances.items() if int(a.split("-")[1]) % OWNERS == owner)
        assert owners[f"o{owner}"] == expected, owner


async def _owner_balances(mix: Mix, head: int) -> dict[str, int]:
    """Each owner's total as the read model has it, once it reached the head."""
    stub = projection_grpc.ProjectionServiceStub(mix.channels[0])
    found: dict[str, int] = {}
    for owner in range(OWNERS):
        request = projection_pb.GetDocumentRequest(projection=PROJECTION, key=f"owner:o{owner}", min_position=head)
        response = await stub.GetDocument(request, timeout=60)
        document = bank.OwnerBalance()
        assert response.document.Unpack(document)
        found[f"o{owner}"] = document.balance
    return found
