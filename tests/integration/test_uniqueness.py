"""Unique e-mail addresses (the users plugin) under racing clients: two
replicas in one process on every store, then two server processes on one
PostgreSQL database (and on one SQLite file)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import event_service_pb2
from domain_plugins.users import EMAIL_SCOPE
from domain_plugins.users.protos.users.v1 import users_pb2 as pb
from service.store.base import EventStore
from tests.support.grpc_client import Client, command, connect, details_of, running_server
from tests.support.processes import server_process

EMAIL = "ann@example.com"


@pytest.fixture
async def two_replicas(store: EventStore) -> AsyncIterator[list[Client]]:
    """Two servers, each with its own workers and caches, on one store."""
    async with AsyncExitStack() as stack:
        yield [(await stack.enter_async_context(running_server(store)))[1] for _ in range(2)]


async def register_fifty(clients: list[Client]) -> list[int]:
    """Fifty users register with one address at once, spread over the
    clients; the indexes of those accepted. Every refusal must be NOT_UNIQUE."""

    async def register(i: int) -> bool:
        client = clients[i % len(clients)]
        try:
            await client.submit(command(f"user-{i}", pb.RegisterUser(email=EMAIL, name=f"Ann {i}")))
        except grpc.aio.AioRpcError as error:
            details = details_of(error)
            assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_UNIQUE")
            assert details.metadata["scope"] == EMAIL_SCOPE
            return False
        return True

    accepted = await asyncio.gather(*(register(i) for i in range(50)))
    return [i for i, ok in enumerate(accepted) if ok]


async def users(client: Client) -> list[int]:
    """The indexes of the fifty users that exist."""
    found = []
    for i in range(50):
        request = event_service_pb2.ReadAggregateRequest(aggregate_id=f"user-{i}")
        if [e async for e in client.events.ReadAggregate(request)]:
            found.append(i)
    return found


async def test_fifty_concurrent_registrations_over_two_replicas_make_one_user(two_replicas: list[Client]) -> None:
    winners = await register_fifty(two_replicas)
    assert len(winners) == 1
    assert await users(two_replicas[1]) == winners


async def test_a_released_email_can_be_registered_again(two_replicas: list[Client], store: EventStore) -> None:
    first, second = two_replicas
    await first.submit(command("user-1", pb.RegisterUser(email=EMAIL, name="Ann")))
    await first.submit(command("user-1", pb.DeactivateUser()))
    response = await second.submit(command("user-2", pb.RegisterUser(email=EMAIL, name="Ann")))
    assert response.version == 1
    assert await store.claim_owner(EMAIL_SCOPE, EMAIL) == "user-2"


async def test_a_refused_command_leaves_no_claim(two_replicas: list[Client], store: EventStore) -> None:
    first, _ = two_replicas
    await first.submit(command("user-1", pb.RegisterUser(email=EMAIL, name="Ann")))
    with pytest.raises(grpc.aio.AioRpcError):
        await first.submit(command("user-1", pb.RegisterUser(email="other@example.com", name="Ann")))
    with pytest.raises(grpc.aio.AioRpcError):
        await first.submit(command("user-2", pb.RegisterUser(email="third@example.com", name="")))
    assert await store.claim_owner(EMAIL_SCOPE, "other@example.com") is None
    assert await store.claim_owner(EMAIL_SCOPE, "third@example.com") is None


@pytest.mark.slow
@pytest.mark.postgres
async def test_fifty_registrations_over_two_server_processes_on_postgres_make_one_user(postgres_url: str) -> None:
    with ExitStack() as stack:
        servers = [stack.enter_context(server_process(postgres_url)) for _ in range(2)]
        async with connect(servers[0].address) as a, connect(servers[1].address) as b:
            winners = await register_fifty([a, b])
            assert len(winners) == 1
            assert await users(a) == winners


@pytest.mark.slow
async def test_fifty_registrations_over_two_server_processes_on_one_sqlite_file_make_one_user(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/events.db"
    with server_process(url) as first, server_process(url) as second:
        async with connect(first.address) as a, connect(second.address) as b:
            winners = await register_fifty([a, b])
            assert len(winners) == 1
            assert await users(b) == winners
