"""Uniqueness under concurrency, on the memory store with two replicas
(two routers, each with its own workers and cache, sharing one store)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from google.protobuf.message import Message

from domain_plugins.users import EMAIL_SCOPE, plugin
from domain_plugins.users.protos.users.v1 import users_pb2 as pb
from service.errors import NotUnique
from service.plugins.registry import Registry
from service.processing.commands import CommandBatch, CommandRequest
from service.processing.executor import CommandExecutor
from service.processing.router import Router
from service.store.base import Store
from service.store.memory import MemoryStore

REGISTRY = Registry([plugin])


def request(aggregate_id: str, message: Message) -> CommandRequest:
    spec = REGISTRY.command(message.DESCRIPTOR.full_name)
    assert spec is not None
    return CommandRequest(command_id=str(uuid.uuid4()), aggregate_id=aggregate_id, spec=spec, message=message)


@pytest.fixture
async def replicas() -> AsyncIterator[tuple[MemoryStore, list[Router]]]:
    store = MemoryStore()
    routers = [Router(CommandExecutor(Store.of(store), REGISTRY)) for _ in range(2)]
    yield store, routers
    for router in routers:
        await router.close()


async def test_fifty_concurrent_registrations_with_one_email_make_one_user(
    replicas: tuple[MemoryStore, list[Router]],
) -> None:
    store, routers = replicas
    attempts = [
        routers[i % 2].submit(request(f"user-{i}", pb.RegisterUser(email="ann@example.com", name=f"Ann {i}")))
        for i in range(50)
    ]
    results = await asyncio.gather(*attempts, return_exceptions=True)
    winners = [i for i, r in enumerate(results) if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, NotUnique) for r in results if isinstance(r, BaseException))
    assert await store.claim_owner(EMAIL_SCOPE, "ann@example.com") == f"user-{winners[0]}"
    assert [i for i in range(50) if await store.head(f"user-{i}") is not None] == winners


async def test_a_released_email_can_be_claimed_again(replicas: tuple[MemoryStore, list[Router]]) -> None:
    store, (first, second) = replicas
    await first.submit(request("user-1", pb.RegisterUser(email="ann@example.com", name="Ann")))
    with pytest.raises(NotUnique):
        await second.submit(request("user-2", pb.RegisterUser(email="ann@example.com", name="Ann")))
    await first.submit(request("user-1", pb.ChangeEmail(email="ann@new.example")))
    await second.submit(request("user-2", pb.RegisterUser(email="ann@example.com", name="Ann")))
    await first.submit(request("user-1", pb.DeactivateUser()))
    await second.submit(request("user-3", pb.RegisterUser(email="ann@new.example", name="Ann")))
    assert await store.claim_owner(EMAIL_SCOPE, "ann@example.com") == "user-2"
    assert await store.claim_owner(EMAIL_SCOPE, "ann@new.example") == "user-3"


async def test_a_batch_that_fails_leaves_no_claim(replicas: tuple[MemoryStore, list[Router]]) -> None:
    store, (router, _) = replicas
    batch = CommandBatch(
        (
            request("user-1", pb.RegisterUser(email="ann@example.com", name="Ann")),
            request("user-1", pb.ChangeEmail(email="not an address")),
        )
    )
    with pytest.raises(Exception, match="not an e-mail address"):
        await router.submit_batch(batch)
    assert await store.claim_owner(EMAIL_SCOPE, "ann@example.com") is None
    assert await store.head("user-1") is None


async def test_a_refused_registration_is_refused_again_when_retried(replicas: tuple[MemoryStore, list[Router]]) -> None:
    store, (first, second) = replicas
    await first.submit(request("user-1", pb.RegisterUser(email="ann@example.com", name="Ann")))
    refused = request("user-2", pb.RegisterUser(email="ann@example.com", name="Ann"))
    with pytest.raises(NotUnique):
        await second.submit(refused)
    await first.submit(request("user-1", pb.DeactivateUser()))
    with pytest.raises(NotUnique):
        await first.submit(refused)  # the same command id: the recorded answer
    assert await store.claim_owner(EMAIL_SCOPE, "ann@example.com") is None
