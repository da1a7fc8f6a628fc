"""The clients' keepalive pings (service/client/channels.py): a connection
that died silently ends its calls, and a routing client moves a member it
can no longer reach out of its way.

- a server accepts a client's pings on an idle stream as often as
  ``--min-client-ping-seconds``: an idle subscription stays on its one
  connection (gRPC's default policy answers such pings with GOAWAY
  ``too_many_pings``, and the subscription would be reopened on another);
- an idle subscription whose connection falls silent ends UNAVAILABLE once
  a ping goes unanswered, rather than waiting for ever;
- a routing client whose member is alive to the database (it keeps its
  partitions) but no longer reachable from the client sends that member's
  commands to another member: a unary command on its silent connection, a
  command on a new connection that never gets through (its deadline passes:
  DEADLINE_EXCEEDED marks the member down too), and a command stream's lane;
- a member that keeps failing is tried again after a second, then two, then
  four, up to thirty; a member that answered starts again at a second.

The pings and their timeouts are a few tenths of a second here; the bounds
on the waits only make a broken build fail rather than hang."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.client import ChronicleClient, Command, RetryPolicy, Unavailable
from service.client.channels import keepalive_options
from service.client.routing import DOWN_SECONDS, MOST_DOWN_SECONDS, Routes
from service.store.memory import MemoryStore
from tests.support.cluster import replica, settled
from tests.support.grpc_client import command, running_server
from tests.support.silent_proxy import SilentProxy
from tests.support.waiting import eventually

PING = 0.3  # the test clients' keepalive and its timeout
FAST = RetryPolicy(initial_backoff=0.02, max_backoff=0.2, max_attempts=20)
ONCE = RetryPolicy(max_attempts=1)


def pinging(address: str, **options: object) -> ChronicleClient:
    return ChronicleClient.connect(address, keepalive=PING, keepalive_timeout=PING, **options)  # type: ignore[arg-type]


async def test_an_idle_subscription_keeps_its_connection_while_the_client_pings() -> None:
    async with (
        running_server(MemoryStore(), min_client_ping_seconds=0.1) as (app, client),
        SilentProxy(app.port).running() as proxy,
        pinging(f"127.0.0.1:{proxy.port}", retry=FAST) as subscriber,
    ):
        events = subscriber.subscribe().__aiter__()
        first = asyncio.ensure_future(anext(events))
        await eventually(lambda: app.gate is not None and app.gate.subscriptions == 1, what="subscribed")
        # Ten pings' worth of nothing sent either way: gRPC's default policy
        # sends GOAWAY after the third such ping.
        await asyncio.sleep(10 * PING)
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        async with asyncio.timeout(10):
            event = await first
        assert event.aggregate_id == "acc-1"
        assert proxy.connections == 1  # never reopened


async def test_an_idle_subscription_on_a_connection_that_fell_silent_ends_unavailable() -> None:
    async with (
        running_server(MemoryStore(), min_client_ping_seconds=0.1) as (app, _),
        SilentProxy(app.port).running() as proxy,
        pinging(f"127.0.0.1:{proxy.port}", retry=ONCE) as subscriber,
    ):
        events = subscriber.subscribe().__aiter__()
        first = asyncio.ensure_future(anext(events))
        await eventually(lambda: app.gate is not None and app.gate.subscriptions == 1, what="subscribed")
        proxy.silence()
        async with asyncio.timeout(10):  # without pings: for ever
            with pytest.raises(Unavailable):
                await first


async def test_without_pings_a_silent_connection_holds_its_subscription() -> None:
    """What the pings are for: the same subscription with ``keepalive=None``
    is still waiting after many times the pings' timeout."""
    async with (
        running_server(MemoryStore()) as (app, _),
        SilentProxy(app.port).running() as proxy,
        ChronicleClient.connect(f"127.0.0.1:{proxy.port}", retry=ONCE, keepalive=None) as subscriber,
    ):
        events = subscriber.subscribe().__aiter__()
        first = asyncio.ensure_future(anext(events))
        await eventually(lambda: app.gate is not None and app.gate.subscriptions == 1, what="subscribed")
        proxy.silence()
        await asyncio.sleep(10 * PING)
        assert not first.done()
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first


def test_bad_keepalives_are_refused_before_any_call() -> None:
    assert keepalive_options(None) == []
    for keepalive, timeout in ((0, 1), (-1, 1), (1, 0)):
        with pytest.raises(ValueError, match="keepalive"):
            ChronicleClient.connect("127.0.0.1:1", keepalive=keepalive, keepalive_timeout=timeout)


@contextlib.asynccontextmanager
async def unreachable_member(postgres_url: str) -> AsyncIterator[tuple[Application, Application, SilentProxy]]:
    """Two replicas on ``postgres_url``; the second advertises an address
    behind a proxy that can fall silent, so it can be cut off from routing
    clients while it stays alive to the database (and keeps its partitions)."""
    async with (
        SilentProxy().running() as proxy,
        replica(postgres_url, min_client_ping_seconds=0.1) as (reachable, _),
        replica(postgres_url, min_client_ping_seconds=0.1, advertise_address=f"127.0.0.1:{proxy.port}") as (
            cut_off,
            _,
        ),
    ):
        proxy.target_port = cut_off.port
        await settled([reachable, cut_off])
        yield reachable, cut_off, proxy


def owned_by(app: Application, count: int) -> list[str]:
    return [a for a in (f"acc-{n}" for n in range(10_000)) if app.ownership.owns(a)][:count]


async def wait_for_members(routes: Routes, count: int) -> None:
    await routes.wait_for_topology(lambda topology: len(topology.members) == count and all(topology.partition_owners))


@pytest.mark.postgres
async def test_a_member_the_client_cannot_reach_any_more_loses_its_commands_to_another(postgres_url: str) -> None:
    async with unreachable_member(postgres_url) as (reachable, cut_off, proxy):
        behind = f"127.0.0.1:{proxy.port}"
        async with pinging(reachable.address, routing=True, retry=FAST, attempt_timeout=30.0) as client:
            assert client.routes is not None
            routes = client.routes
            async with asyncio.timeout(10):
                await wait_for_members(routes, 2)
            first, second = owned_by(cut_off, 2)
            assert routes.owner_of(first) == behind
            await client.submit(first, bank.OpenAccount(owner="ann"))  # through the proxy, to its owner
            assert proxy.connections == 1
            proxy.silence()
            async with asyncio.timeout(20):  # without pings and deadlines: for ever
                # On the connection that went silent: the ping finds it dead.
                done = await client.submit(first, bank.Deposit(amount=5))
                assert done.version == 2
                assert routes.is_down(behind)
                # The partitions stay with the member cut off (it is alive to the database).
                assert cut_off.ownership.owns(second)
                assert routes.owner_of(second) == behind
                opened = await client.submit(second, bank.OpenAccount(owner="bob"))  # to the other member
                assert opened.version == 1
            assert routes.failovers >= 1
            state = await reachable_client_state(reachable, first)
            assert state == 2  # each command ran once


async def reachable_client_state(app: Application, aggregate_id: str) -> int:
    async with ChronicleClient.connect(app.address) as plain:
        return (await plain.get_aggregate(aggregate_id, bank.Account)).version


@pytest.mark.postgres
async def test_a_command_whose_member_never_answers_a_new_connection_goes_elsewhere(postgres_url: str) -> None:
    """The proxy is silent before the client's first connection to the
    member: the connection is never made, the command's deadline passes
    (DEADLINE_EXCEEDED: the client's own), and that marks the member down."""
    async with unreachable_member(postgres_url) as (reachable, cut_off, proxy):
        behind = f"127.0.0.1:{proxy.port}"
        proxy.silence()
        async with pinging(reachable.address, routing=True, retry=FAST, attempt_timeout=1.0) as client:
            assert client.routes is not None
            async with asyncio.timeout(10):
                await wait_for_members(client.routes, 2)
            (aggregate_id,) = owned_by(cut_off, 1)
            async with asyncio.timeout(20):
                done = await client.submit(aggregate_id, bank.OpenAccount(owner="ann"))
            assert done.version == 1
            assert client.routes.is_down(behind)
            assert proxy.connections >= 1  # it was tried first


@pytest.mark.postgres
async def test_a_command_streams_lane_to_a_member_cut_off_moves_and_loses_nothing(postgres_url: str) -> None:
    async with (
        unreachable_member(postgres_url) as (reachable, cut_off, proxy),
        pinging(reachable.address, routing=True, retry=FAST) as client,
    ):
        assert client.routes is not None
        async with asyncio.timeout(10):
            await wait_for_members(client.routes, 2)
        accounts = owned_by(cut_off, 4)
        queue: asyncio.Queue[Command | None] = asyncio.Queue()

        async def commands() -> AsyncIterator[Command]:
            while (command := await queue.get()) is not None:
                yield command

        for account in accounts:
            queue.put_nowait(Command(account, bank.OpenAccount(owner="ann")))
        results = client.submit_stream(commands())
        async with asyncio.timeout(30):
            opened = [await anext(results) for _ in accounts]
            assert [r.error for r in opened] == [None] * len(accounts)
            assert proxy.connections == 1  # the lane was on the member cut off
            proxy.silence()
            for account in accounts:
                queue.put_nowait(Command(account, bank.Deposit(amount=7)))
            deposited = [await anext(results) for _ in accounts]
            queue.put_nowait(None)
            assert [r.error for r in deposited] == [None] * len(accounts)
            assert [r.result().version for r in deposited] == [2] * len(accounts)
        await results.aclose()
        assert client.routes.failovers >= 1
        for account in accounts:
            assert await reachable_client_state(reachable, account) == 2


async def test_a_member_that_keeps_failing_is_left_alone_longer_each_time() -> None:
    now = [1000.0]
    async with running_server(MemoryStore()) as (app, client):
        routes = Routes(client.channel, open_channel=grpc.aio.insecure_channel, clock=lambda: now[0])
        try:
            await routes.first_topology()
            expected = [DOWN_SECONDS * 2**n for n in range(6)] + [MOST_DOWN_SECONDS, MOST_DOWN_SECONDS]
            assert expected[:6] == [1, 2, 4, 8, 16, 32]
            expected[5] = MOST_DOWN_SECONDS
            for down in expected:
                routes.unreachable(app.address)
                now[0] += down - 0.01
                assert routes.is_down(app.address)
                now[0] += 0.01
                assert not routes.is_down(app.address)
            routes.answered(app.address)
            routes.unreachable(app.address)
            now[0] += DOWN_SECONDS
            assert not routes.is_down(app.address)  # back to a second
        finally:
            await routes.close()
