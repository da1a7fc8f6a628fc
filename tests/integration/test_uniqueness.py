"""Unique e-mail addresses (the users plugin) under racing clients: two
replicas in one process on every store (with and without encryption at
rest, which stores the addresses as keyed hashes), then two server
processes on one PostgreSQL database (and on one SQLite file)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import event_service_pb2
from domain_plugins.users import EMAIL_SCOPE
from domain_plugins.users.protos.users.v1 import users_pb2 as pb
from service.store.base import StoreAdapter
from service.store.encryption import new_master_key
from tests.support.contents import EVENT_TABLES, at_rest
from tests.support.grpc_client import Client, command, connect, details_of, running_server
from tests.support.processes import server_process
from tests.support.security import write

EMAIL = "ann@example.com"


@pytest.fixture
async def two_replicas(store: StoreAdapter) -> AsyncIterator[list[Client]]:
    """Two servers, each with its own workers and caches, on one store."""
    async with AsyncExitStack() as stack:
        yield [(await stack.enter_async_context(running_server(store, anonymous_admin=True)))[1] for _ in range(2)]


@pytest.fixture
async def two_encrypting_replicas(store: StoreAdapter, tmp_path: Path) -> AsyncIterator[list[Client]]:
    """Two servers on one store with encryption at rest, each with its own
    keyring (and so its own cache of the claims' data key)."""
    keys = write(tmp_path / "master.keys", f"k1:{new_master_key()}\n")
    async with AsyncExitStack() as stack:
        yield [
            (await stack.enter_async_context(running_server(store, master_key_file=keys, anonymous_admin=True)))[1]
            for _ in range(2)
        ]


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


async def test_a_released_email_can_be_registered_again(two_replicas: list[Client], store: StoreAdapter) -> None:
    first, second = two_replicas
    await first.submit(command("user-1", pb.RegisterUser(email=EMAIL, name="Ann")))
    await first.submit(command("user-1", pb.DeactivateUser()))
    response = await second.submit(command("user-2", pb.RegisterUser(email=EMAIL, name="Ann")))
    assert response.version == 1
    assert await store.claim_owner(EMAIL_SCOPE, EMAIL) == "user-2"


async def test_a_refused_command_leaves_no_claim(two_replicas: list[Client], store: StoreAdapter) -> None:
    first, _ = two_replicas
    await first.submit(command("user-1", pb.RegisterUser(email=EMAIL, name="Ann")))
    before = await at_rest(store)
    with pytest.raises(grpc.aio.AioRpcError):
        await first.submit(command("user-1", pb.RegisterUser(email="other@example.com", name="Ann")))
    with pytest.raises(grpc.aio.AioRpcError):
        await first.submit(command("user-2", pb.RegisterUser(email="third@example.com", name="")))
    changes = (await at_rest(store)).changes_since(before)
    assert not {"claims", *EVENT_TABLES} & set(changes), changes  # the refusals' records at most
    assert await store.claim_owner(EMAIL_SCOPE, "other@example.com") is None
    assert await store.claim_owner(EMAIL_SCOPE, "third@example.com") is None


async def test_with_encryption_at_rest_fifty_registrations_over_two_replicas_make_one_user(
    two_encrypting_replicas: list[Client], store: StoreAdapter
) -> None:
    winners = await register_fifty(two_encrypting_replicas)
    assert len(winners) == 1
    assert await users(two_encrypting_replicas[0]) == winners
    assert await store.claim_owner(EMAIL_SCOPE, EMAIL) is None  # stored hidden, not as sent


async def test_a_forgotten_users_email_can_be_registered_again(two_encrypting_replicas: list[Client]) -> None:
    first, second = two_encrypting_replicas
    await first.submit(command("user-1", pb.RegisterUser(email=EMAIL, name="Ann")))
    await first.submit(command("user-1", pb.ChangeEmail(email="ann@new.example")))
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await second.submit(command("user-2", pb.RegisterUser(email="ann@new.example", name="Ann")))
    assert details_of(taken.value).reason == "NOT_UNIQUE"
    await second.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id="user-1"))
    response = await second.submit(command("user-2", pb.RegisterUser(email="ann@new.example", name="Ann")))
    assert response.version == 1
    await first.submit(command("user-3", pb.RegisterUser(email=EMAIL, name="Ann")))  # released before


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
@pytest.mark.postgres
async def test_with_encryption_fifty_registrations_over_two_server_processes_on_postgres_make_one_user(
    postgres_url: str,
) -> None:
    # Each process makes the scope's data key on its first claim: they race
    # for it, and both must hash with the one that won.
    env = {"CHRONICLE_MASTER_KEYS": f"k1:{new_master_key()}"}
    with ExitStack() as stack:
        servers = [stack.enter_context(server_process(postgres_url, env=env)) for _ in range(2)]
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
